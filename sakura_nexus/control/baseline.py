"""Go-to-goal baseline: proportional heading/distance control that ignores the world model."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sakura_nexus.geometry import wrap_angles

__all__ = ["GoToGoal", "GoToGoalConfig"]


@dataclass
class GoToGoalConfig:
    k_v: float = 0.8                 # 1/s: v = k_v * distance (saturated), scaled by cos(heading error)
    k_w: float = 2.0                 # 1/s: w = k_w * heading error
    max_v: float = 0.5
    max_w: float = 1.2
    turn_in_place: float = 0.8       # rad: heading errors above this rotate in place (v = 0)
    goal_tolerance: float = 0.25     # m: inside, only the final yaw is corrected (if requested)
    goal_yaw_tolerance: float = 3.2  # rad: >= pi ignores the goal yaw


class GoToGoal:
    """``command(pose, goal) -> (v, w)``: drive straight at the goal, then (optionally) align yaw."""

    def __init__(self, config: GoToGoalConfig | None = None):
        self.config = config or GoToGoalConfig()

    def set_config(self, config: GoToGoalConfig) -> None:
        self.config = config

    def command(self, pose, goal) -> tuple[float, float]:
        c = self.config
        x, y, yaw = (float(v) for v in pose[:3])
        dx, dy = float(goal[0]) - x, float(goal[1]) - y
        dist = math.hypot(dx, dy)
        if not all(math.isfinite(v) for v in (x, y, yaw, dist)):
            return 0.0, 0.0
        if dist <= c.goal_tolerance:
            gyaw = float(goal[2]) if len(goal) > 2 else math.nan
            if c.goal_yaw_tolerance >= math.pi or not math.isfinite(gyaw):
                return 0.0, 0.0
            err = wrap_angles(gyaw - yaw)
            if abs(err) <= 0.5 * c.goal_yaw_tolerance:
                return 0.0, 0.0
            return 0.0, max(-c.max_w, min(c.max_w, c.k_w * err))
        err = wrap_angles(math.atan2(dy, dx) - yaw)
        w = max(-c.max_w, min(c.max_w, c.k_w * err))
        v = 0.0 if abs(err) > c.turn_in_place else min(c.max_v, c.k_v * dist) * math.cos(err)
        return max(0.0, v), w
