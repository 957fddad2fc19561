"""Motion policy core (ROS-free): safety layer, latent-space MPPI planner, go-to-goal baseline,
closed-loop episode runner. See docs/control.md."""

from .baseline import GoToGoal, GoToGoalConfig
from .episode import (
    Controller,
    ControlOutput,
    EpisodeResult,
    GoToGoalController,
    LatentMPCController,
    Observation,
    StateMPCController,
    evaluate,
    run_episode,
    sample_task,
)
from .planner import MPPIConfig, MPPIPlanner, PlanResult
from .safety import SafeCommand, SafetyLayer, SafetyLimits, goal_reached, speed_scale

__all__ = [
    "ControlOutput", "Controller", "EpisodeResult", "GoToGoal", "GoToGoalConfig", "GoToGoalController",
    "LatentMPCController", "MPPIConfig", "MPPIPlanner", "Observation", "PlanResult", "SafeCommand",
    "SafetyLayer", "SafetyLimits", "StateMPCController", "evaluate", "goal_reached", "run_episode",
    "sample_task", "speed_scale",
]
