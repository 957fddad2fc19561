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

__all__ = ["KinematicMPC", "LearnedMPC", "SeenObstacles"]


def _route_grid(cell_map, goal, pose):
    """(grid int16 rows=y, resolution, origin): the static map as an occupancy grid, or without a map
    a free grid with a 3 m margin around pose and goal (outside the grid counts as occupied)."""
    from sakura_nexus.sim.layout import MAP_RESOLUTION, occupancy_grid

    if cell_map is not None:
        data, w, h, origin = occupancy_grid(cell_map[0], cell_map[1])
        return np.asarray(data, dtype=np.int16).reshape(h, w), MAP_RESOLUTION, origin
    lo = np.minimum(np.asarray(goal[:2], float), np.asarray(pose[:2], float)) - 3.0
    hi = np.maximum(np.asarray(goal[:2], float), np.asarray(pose[:2], float)) + 3.0
    n = np.ceil((hi - lo) / MAP_RESOLUTION).astype(int)
    return np.zeros((n[1], n[0]), dtype=np.int16), MAP_RESOLUTION, (float(lo[0]), float(lo[1]))


def _cost_to_go(grid, resolution: float, origin, goal, radius: float):
    """The cost-to-go to ``goal`` over an int16 occupancy ``grid`` (rows = y), obstacles inflated by
    ``radius``: the one place both controllers and the seen-obstacle route build it."""
    from .costmap import CostToGo

    h, w = grid.shape
    return CostToGo.from_occupancy(grid.ravel(), w, h, resolution, origin, goal[:2], radius=radius)


class SeenObstacles:
    """What the camera saw, for the planner: the :class:`ObstacleMemory` (the dynamics' ``obstacles``:
    clearance critic and contact probability at once) and the route over the static grid with the
    remembered points marked (rebuilt at most every ``route_period`` s, and only when the memory
    changed: with nothing unmapped in view, no rebuild and no extra CPU). Points within
    ``known_clearance`` of the static map's obstacles are left to the map critic. ROS-free: the
    ROS-free controller and policy_node share it."""

    def __init__(self, range_config=None, memory_s: float = 20.0, map_clearance: float = 0.362,
                 route_period: float = 1.0, known_clearance: float = 0.25):
        from sakura_nexus.models.obstacles import ObstacleMemory

        self.memory = ObstacleMemory(range_config, memory_s=memory_s)
        self.map_clearance, self.route_period = float(map_clearance), float(route_period)
        self.known_clearance = float(known_clearance)
        self._static = None        # (grid, resolution, origin, field or None)
        self._routed = (-math.inf, -1)

    def reset(self) -> None:
        self.memory.reset()
        self._routed = (-math.inf, -1)

    def set_static(self, grid, resolution: float, origin, goal, field=None) -> None:
        """The static occupancy grid (int16 rows = y; or None: map-free) for ``goal``; ``field``: its
        cost-to-go if the caller already built it."""
        if grid is not None and field is None:
            field = _cost_to_go(grid, resolution, origin, goal, self.map_clearance)
        self._static = None if grid is None else (np.asarray(grid, np.int16), float(resolution),
                                                  (float(origin[0]), float(origin[1])), field)
        self._routed = (-math.inf, -1)

    def _known(self, pts: np.ndarray) -> np.ndarray:
        import torch

        _, _, clearance = self._static[3].sample_all(torch.as_tensor(pts, dtype=torch.float32))
        return (clearance < self.known_clearance).numpy()

    def observe(self, pose, ranges, t: float, uncertainty: float = 0.0) -> None:
        self.memory.update(pose, ranges, t, uncertainty, known=self._known if self._static is not None else None)

    def route_due(self, t: float) -> bool:
        last_t, last_v = self._routed
        return self.memory.version != last_v and (t - last_t >= self.route_period or last_t == -math.inf)

    def route(self, goal, pose, t: float):
        """The cost-to-go to ``goal`` over the static grid (or a free grid) with the seen points."""
        if self._static is not None:
            grid, res, origin, _ = self._static
        else:
            grid, res, origin = _route_grid(None, goal, pose)
        marked = self.memory.mark(grid, res, origin)
        self._routed = (t, self.memory.version)
        return _cost_to_go(marked, res, origin, goal, self.map_clearance)


class KinematicMPC(Controller):
    """``kinematic_mpc``: MPPI + unicycle + static map (see module docstring)."""

    name = "kinematic_mpc"

    def __init__(self, config: MPPIConfig | None = None, cell_map=None, model: UnicycleConfig | None = None,
                 map_clearance: float = 0.362):
        self.model = UnicycleModel(model)
        self.planner = MPPIPlanner(self.model, config)
        self.cell_map, self.map_clearance = cell_map, map_clearance

    def reset(self, goal) -> None:
        self.planner.reset()
        field = None
        if self.cell_map is not None:
            field = _cost_to_go(*_route_grid(self.cell_map, goal, goal), goal, self.map_clearance)
        self.planner.set_cost_to_go(field)

    def act(self, obs: Observation) -> ControlOutput:
        z = self.model.encode_state(obs.pose, obs.velocity)
        res = self.planner.plan(z, obs.goal, prev_action=obs.last_command, position=obs.pose[:2])
        return ControlOutput(res.action[0], res.action[1], res.info["sigma0"], res.info["risk0"],
                             {"plan_ms": res.info["plan_ms"], "plan": res})


class LearnedMPC(Controller):
    """``learned_mpc``: see module docstring. ``range_head`` None = the obstacle head switched off (the
    ablation); ``learn`` False freezes the residual (the shipped model as it is)."""

    name = "learned_mpc"
    needs_image = True

    def __init__(self, range_head, config: MPPIConfig | None = None, cell_map=None,
                 model: UnicycleConfig | None = None, residual: ResidualUnicycle | None = None,
                 learn: bool = True, map_clearance: float = 0.362, route_period: float = 1.0,
                 memory_s: float = 20.0):
        self.range_head = range_head
        cfg = range_head.range_config if range_head is not None else None
        self.seen = SeenObstacles(cfg, memory_s, map_clearance, route_period)
        self.model = residual if residual is not None else ResidualUnicycle(model)
        self.model.obstacles = self.seen.memory if range_head is not None else None
        self.planner = MPPIPlanner(self.model, config)
        self.cell_map, self.learn = cell_map, learn   # the map inflation is self.seen.map_clearance
        self._goal = None
        self._last = None           # (time, velocity) of the previous step, for the residual

    def reset(self, goal) -> None:
        self.planner.reset()
        self.seen.reset()
        self._goal, self._last = tuple(goal), None
        field = None
        if self.cell_map is not None:
            grid, res, origin = _route_grid(self.cell_map, goal, goal)
            field = _cost_to_go(grid, res, origin, goal, self.seen.map_clearance)
            self.seen.set_static(grid, res, origin, goal, field)
        else:
            self.seen.set_static(None, 0.0, (0.0, 0.0), goal)
        self.planner.set_cost_to_go(field)

    def act(self, obs: Observation) -> ControlOutput:
        t0 = time.perf_counter()
        if self.learn and self._last is not None and 0 < obs.time - self._last[0] < 0.5:
            self.model.observe(self._last[1], obs.last_command, obs.velocity)
        self._last = (obs.time, obs.velocity)
        sigma = 0.0
        if self.range_head is not None:
            ranges, sigma = self.range_head.predict(_to_tensor(obs.image))
            self.seen.observe(obs.pose, ranges, obs.time, sigma)
            if self.seen.route_due(obs.time):
                self.planner.set_cost_to_go(self.seen.route(self._goal, obs.pose, obs.time))
        perceive_ms = (time.perf_counter() - t0) * 1e3
        z = self.model.encode_state(obs.pose, obs.velocity)
        res = self.planner.plan(z, obs.goal, prev_action=obs.last_command, position=obs.pose[:2])
        return ControlOutput(res.action[0], res.action[1], max(res.info["sigma0"], sigma), res.info["risk0"],
                             {"plan_ms": res.info["plan_ms"] + perceive_ms, "plan": res, "perceive_ms": perceive_ms})
