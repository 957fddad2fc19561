"""Motion policy core (ROS-free): safety layer, latent-space MPPI planner, go-to-goal baseline,
closed-loop episode runner. See docs/control.md."""

# The CLI module ``sakura_nexus.control.evaluate`` shares its name with the function ``evaluate``:
# import the module first so that the function below is what the package attribute stays bound to.
from . import evaluate as _evaluate_cli  # noqa: F401
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
