"""The two MPPI controllers the evaluation compares, ROS-free.

* :class:`KinematicMPC` (``kinematic_mpc``): what a Nav2 user would write: the same
  :class:`~sakura_nexus.control.planner.MPPIPlanner`, critics and safety layer, a plain unicycle with the
  acceleration limits (:class:`~sakura_nexus.control.kinematic.UnicycleModel`), the static map's
  cost-to-go. It sees nothing the map does not show.
* :class:`LearnedMPC` (``learned_mpc``): physics prior + what the robot learned:
  camera -> :class:`~sakura_nexus.models.obstacles.RangeHead` (free range across the field of
  view, with ensemble uncertainty) -> :class:`~sakura_nexus.models.obstacles.ObstacleMemory` (seen
  obstacles in odom, kept while out of view, cleared when seen through), and a
  :class:`~sakura_nexus.control.kinematic.ResidualUnicycle` whose velocity response adapts online to the
  robot's own odometry. The planner's collision and clearance critics see the remembered obstacles
  at once; the route (cost-to-go over the map, or over what was seen when there is no map) is
  rebuilt with them every ``route_period`` seconds, so a blocked aisle is driven round, not into.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .episode import Controller, ControlOutput, Observation, _to_tensor
from .kinematic import ResidualUnicycle, UnicycleConfig, UnicycleModel
from .planner import MPPIConfig, MPPIPlanner

__all__ = ["KinematicMPC", "LearnedMPC"]


class _RouteMixin:
    """Cost-to-go over an occupancy grid: the static map (``cell_map = (obstacles, size)``), optionally
    with seen obstacles marked; without a map, a free grid around start and goal."""

    map_clearance: float

    def _grid(self, goal, pose):
        from sakura_nexus.sim.layout import MAP_RESOLUTION, occupancy_grid

        if self.cell_map is not None:
            data, w, h, origin = occupancy_grid(self.cell_map[0], self.cell_map[1])
            return np.asarray(data, dtype=np.int16).reshape(h, w), MAP_RESOLUTION, origin
        # map-free: unknown space is free; a 3 m margin around start and goal (outside counts occupied)
        lo = np.minimum(goal[:2], pose[:2]) - 3.0
        hi = np.maximum(goal[:2], pose[:2]) + 3.0
        n = np.ceil((hi - lo) / MAP_RESOLUTION).astype(int)
        return np.zeros((n[1], n[0]), dtype=np.int16), MAP_RESOLUTION, (float(lo[0]), float(lo[1]))

    def _route(self, goal, pose, memory=None):
        from .costmap import CostToGo

        grid, res, origin = self._grid(np.asarray(goal, float), np.asarray(pose, float))
        if memory is not None:
            grid = memory.mark(grid, res, origin)
        h, w = grid.shape
        return CostToGo.from_occupancy(grid.ravel(), w, h, res, origin, goal, radius=self.map_clearance)


class KinematicMPC(_RouteMixin, Controller):
    """``kinematic_mpc``: MPPI + unicycle + static map (see module docstring)."""

    name = "kinematic_mpc"

    def __init__(self, config: MPPIConfig | None = None, cell_map=None, model: UnicycleConfig | None = None,
                 map_clearance: float = 0.362):
        self.model = UnicycleModel(model)
        self.planner = MPPIPlanner(self.model, config)
        self.cell_map, self.map_clearance = cell_map, map_clearance

    def reset(self, goal) -> None:
        self.planner.reset()
        self.planner.set_cost_to_go(self._route(goal, goal) if self.cell_map is not None else None)

    def act(self, obs: Observation) -> ControlOutput:
        z = self.model.encode_state(obs.pose, obs.velocity)
        res = self.planner.plan(z, obs.goal, prev_action=obs.last_command, position=obs.pose[:2])
        return ControlOutput(res.action[0], res.action[1], res.info["sigma0"], res.info["risk0"],
                             {"plan_ms": res.info["plan_ms"], "plan": res})


class LearnedMPC(_RouteMixin, Controller):
    """``learned_mpc``: see module docstring. ``range_head`` None = the obstacle head switched off (the
    ablation); ``learn`` False freezes the residual (the shipped model as it is)."""

    name = "learned_mpc"
    needs_image = True

    def __init__(self, range_head, config: MPPIConfig | None = None, cell_map=None,
                 model: UnicycleConfig | None = None, residual: ResidualUnicycle | None = None,
                 learn: bool = True, map_clearance: float = 0.362, route_period: float = 1.0,
                 memory_kw: dict | None = None):
        from sakura_nexus.models.obstacles import ObstacleMemory

        self.range_head = range_head
        cfg = range_head.range_config if range_head is not None else None
        self.memory = ObstacleMemory(cfg, **(memory_kw or {}))
        self.model = residual if residual is not None else ResidualUnicycle(model)
        self.model.obstacles = self.memory if range_head is not None else None
        self.planner = MPPIPlanner(self.model, config)
        self.cell_map, self.map_clearance, self.learn = cell_map, map_clearance, learn
        self.route_period = float(route_period)
        self._goal = None
        self._last = None           # (time, velocity) of the previous step, for the residual
        self._route_t = -math.inf
        self._route_version = -1

    def reset(self, goal) -> None:
        self.planner.reset()
        self.memory.reset()
        self._goal, self._last = tuple(goal), None
        self._route_t, self._route_version = -math.inf, -1
        self.planner.set_cost_to_go(None)
        self._known = None
        if self.cell_map is not None:
            # clearance to the static map's obstacles: seen points within 0.12 m of them are the map
            from sakura_nexus.sim.layout import MAP_RESOLUTION, occupancy_grid

            from .costmap import CostToGo

            data, w, h, origin = occupancy_grid(self.cell_map[0], self.cell_map[1])
            static = CostToGo.from_occupancy(data, w, h, MAP_RESOLUTION, origin, goal, radius=self.map_clearance)

            def known(pts, field=static):
                import torch

                _, _, clearance = field.sample_all(torch.as_tensor(pts, dtype=torch.float32))
                return (clearance < 0.12).numpy()
            self._known = known

    def act(self, obs: Observation) -> ControlOutput:
        t0 = time.perf_counter()
        if self.learn and self._last is not None and 0 < obs.time - self._last[0] < 0.5:
            self.model.observe(self._last[1], obs.last_command, obs.velocity)
        self._last = (obs.time, obs.velocity)
        sigma = 0.0
        if self.range_head is not None:
            ranges, sigma = self.range_head.predict(_to_tensor(obs.image))
            self.memory.update(obs.pose, ranges, obs.time, sigma, known=self._known)
        perceive_ms = (time.perf_counter() - t0) * 1e3
        if (self.cell_map is not None or self.range_head is not None) and (
                obs.time - self._route_t >= self.route_period and self.memory.version != self._route_version
                or self._route_t == -math.inf):
            self.planner.set_cost_to_go(self._route(self._goal, obs.pose,
                                                    self.memory if self.range_head is not None else None))
            self._route_t, self._route_version = obs.time, self.memory.version
        z = self.model.encode_state(obs.pose, obs.velocity)
        res = self.planner.plan(z, obs.goal, prev_action=obs.last_command, position=obs.pose[:2])
        return ControlOutput(res.action[0], res.action[1], max(res.info["sigma0"], sigma), res.info["risk0"],
                             {"plan_ms": res.info["plan_ms"] + perceive_ms, "plan": res, "perceive_ms": perceive_ms})
