"""ROS-free closed loop: controllers, ``run_episode`` and ``evaluate``.

A controller sees an :class:`Observation` (odometry pose/velocity, sim time, goal and, if it asks for
one, the rendered camera image) and returns a :class:`ControlOutput` (v, w plus the uncertainty and
collision risk the safety layer gates on). Every command goes through :class:`SafetyLayer` before
it reaches the cell, exactly as in policy_node.

Controllers here:
* :class:`GoToGoalController`: the baseline (no model).
* :class:`LatentMPCController`: the real pipeline, camera (64x64) -> encoder -> ``WorldModel.encode``
  -> :class:`MPPIPlanner`. Works with any encoder callable and any dynamics with the contract API.
* :class:`StateMPCController`: the same planner on a latent built from the true state by
  ``dynamics.encode_state`` (for the stand-in world model; no camera).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from sakura_nexus.geometry import segment_blocked
from sakura_nexus.sim.layout import ROBOT_RADIUS

from .baseline import GoToGoal, GoToGoalConfig
from .planner import MPPIConfig, MPPIPlanner
from .safety import SafetyLayer, SafetyLimits, goal_reached

__all__ = ["ControlOutput", "Controller", "EpisodeResult", "GoToGoalController", "LatentMPCController",
           "Observation", "StateMPCController", "control_step", "evaluate", "run_episode", "sample_task"]


@dataclass
class Observation:
    pose: tuple                        # (x, y, yaw) odom
    velocity: tuple                    # (v, w) body
    time: float                        # s
    goal: tuple                        # (x, y, yaw)
    image: np.ndarray | None = None    # HxWx3 uint8 RGB, only if the controller has needs_image
    last_command: tuple = (0.0, 0.0)   # (v, w) the safety layer sent last (what the robot executes)


@dataclass
class ControlOutput:
    v: float
    w: float
    uncertainty: float = 0.0
    collision_risk: float = 0.0
    info: dict = field(default_factory=dict)


class Controller:
    """Interface (duck-typed): ``needs_image``, ``reset(goal)``, ``act(obs) -> ControlOutput``."""

    needs_image = False
    image_size = (64, 64)

    def reset(self, goal) -> None:  # pragma: no cover - interface
        pass

    def act(self, obs: Observation) -> ControlOutput:  # pragma: no cover - interface
        raise NotImplementedError


class GoToGoalController(Controller):
    def __init__(self, config: GoToGoalConfig | None = None):
        self.ctrl = GoToGoal(config)

    def reset(self, goal) -> None:
        pass

    def act(self, obs: Observation) -> ControlOutput:
        v, w = self.ctrl.command(obs.pose, obs.goal)
        return ControlOutput(v, w)


class _MPCBase(Controller):
    """``cell_map``: optional ``(obstacles, size)`` of a known map; the goal term then uses the geodesic
    cost-to-go (:class:`~sakura_nexus.control.costmap.CostToGo`) instead of the straight line."""

    def __init__(self, dynamics, config: MPPIConfig | None = None, cell_map=None,
                 map_clearance: float = ROBOT_RADIUS + 0.1):
        self.planner = MPPIPlanner(dynamics, config)
        self.dynamics = dynamics
        self.cell_map = cell_map
        # passages narrower than 2 * map_clearance are closed on the map: the route must not lead
        # through gaps the collision term will refuse (robot disc radius + the model's margin)
        self.map_clearance = map_clearance

    def reset(self, goal) -> None:
        self.planner.reset()
        if self.cell_map is not None:
            from sakura_nexus.sim.layout import MAP_RESOLUTION, occupancy_grid

            from .costmap import CostToGo

            # the same path as policy_node: the map as an OccupancyGrid (what sim_node publishes)
            data, width, height, origin = occupancy_grid(self.cell_map[0], self.cell_map[1])
            self.planner.set_cost_to_go(CostToGo.from_occupancy(data, width, height, MAP_RESOLUTION, origin, goal,
                                                                radius=self.map_clearance))

    def _plan(self, z, obs: Observation) -> ControlOutput:
        res = self.planner.plan(z, obs.goal, prev_action=obs.last_command, position=obs.pose[:2])
        return ControlOutput(res.action[0], res.action[1], res.info["sigma0"], res.info["risk0"],
                             {"plan_ms": res.info["plan_ms"], "plan": res})


class StateMPCController(_MPCBase):
    """MPPI on ``dynamics.encode_state(pose, velocity)`` (stand-in world model)."""

    def act(self, obs: Observation) -> ControlOutput:
        return self._plan(self.dynamics.encode_state(obs.pose, obs.velocity), obs)


class LatentMPCController(_MPCBase):
    """The real pipeline: camera image -> encoder -> world_model.encode(embedding, proprio) -> MPPI.

    ``encoder``: callable (1, 3, H, W) float [0, 1] -> (1, E); ``world_model``: contract API
    (encode, rollout, pose, collision). ``preprocess``: uint8 HxWx3 -> (1, 3, H, W) float tensor."""

    needs_image = True

    def __init__(self, encoder, world_model, config: MPPIConfig | None = None,
                 preprocess: Callable | None = None, image_size=(64, 64), cell_map=None,
                 map_clearance: float = ROBOT_RADIUS + 0.1):
        super().__init__(world_model, config, cell_map, map_clearance)
        self.encoder, self.image_size = encoder, tuple(image_size)
        self.preprocess = preprocess or _to_tensor

    def act(self, obs: Observation) -> ControlOutput:
        import torch

        with torch.inference_mode():
            t0 = time.perf_counter()
            emb = self.encoder(self.preprocess(obs.image))
            x, y, yaw = obs.pose
            proprio = torch.tensor([[x, y, math.cos(yaw), math.sin(yaw), obs.velocity[0], obs.velocity[1]]],
                                   dtype=emb.dtype)
            z = self.dynamics.encode(emb, proprio)[0]
            enc_ms = (time.perf_counter() - t0) * 1e3
        out = self._plan(z, obs)
        out.info["encode_ms"] = enc_ms
        return out


def _to_tensor(image: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


# ---- episodes ------------------------------------------------------------------------------------------
@dataclass
class EpisodeResult:
    reached: bool
    collided: bool
    time: float                                  # sim seconds until reached / collision / timeout
    path: np.ndarray                             # (N, 3) poses, start included
    steps: int = 0
    reasons: dict = field(default_factory=dict)  # safety-layer reason counts
    plan_ms: list = field(default_factory=list)  # controller compute per step (if reported)
    min_clearance: float = math.nan              # not filled by run_episode (needs geometry)

    @property
    def success(self) -> bool:
        return self.reached and not self.collided


def control_step(cell, controller, safety: SafetyLayer, goal, t: float, cmd, plan_ms: list,
                 reasons: Counter) -> tuple[float, float]:
    """One control step: observe (render only for controllers with ``needs_image``), act, filter through
    the safety layer (input fresh: computed now). Appends the controller's plan time to ``plan_ms`` and
    the safety reasons to ``reasons``; returns the safe command ``(v, w)``."""
    img = None
    if getattr(controller, "needs_image", False):
        w, h = getattr(controller, "image_size", (64, 64))
        img = cell.render(w, h)
    out = controller.act(Observation(tuple(cell.pose), tuple(cell.velocity), t, tuple(goal), img, cmd))
    if "plan_ms" in out.info:
        plan_ms.append(out.info["plan_ms"])
    now = cell.time
    safe = safety.filter(out.v, out.w, now, now, out.uncertainty, out.collision_risk, False)
    reasons.update(safe.reasons)
    return safe.v, safe.w


def run_episode(cell, controller, start, goal, max_time: float = 60.0, dt: float = 0.1,
                limits: SafetyLimits | None = None, stop_on_collision: bool = True,
                safety: SafetyLayer | None = None) -> EpisodeResult:
    """Drive ``controller`` through the safety layer in ``cell`` from ``start`` to ``goal``.

    Each step: observe (render only for controllers with ``needs_image``), reached-check (goal
    tolerance of ``limits``), controller, SafetyLayer.filter (input fresh: it was computed now),
    ``cell.step(v, w, dt)``. Ends when the goal is reached, at the first contact
    (``stop_on_collision``) or after ``max_time`` sim seconds."""
    limits = limits or SafetyLimits(control_period=dt)
    safety = safety or SafetyLayer(limits)
    safety.reset()
    cell.set_pose(*start)
    if hasattr(cell, "set_goal"):
        cell.set_goal(*goal)
    controller.reset(goal)
    t_start = cell.time
    path = [tuple(cell.pose)]
    reasons: Counter = Counter()
    plan_ms: list = []
    reached = collided = False
    steps = 0
    cmd = (0.0, 0.0)
    while cell.time - t_start < max_time - 1e-9:
        pose = cell.pose
        if goal_reached(pose, goal, limits):
            reached = True
            break
        cmd = control_step(cell, controller, safety, goal, cell.time, cmd, plan_ms, reasons)
        res = cell.step(cmd[0], cmd[1], dt)
        steps += 1
        path.append(tuple(res.pose))
        if res.collided:
            collided = True
            if stop_on_collision:
                break
    else:
        reached = goal_reached(cell.pose, goal, limits)
    return EpisodeResult(reached, collided, cell.time - t_start, np.asarray(path), steps, dict(reasons),
                         plan_ms)


def sample_task(cell, rng: np.random.Generator, min_distance: float = 2.5, prefer_blocked: bool = True,
                clearance: float = 0.4, tries: int = 200, radius: float = ROBOT_RADIUS):
    """(start, goal, blocked): free start/goal at least ``min_distance`` apart; if ``prefer_blocked``,
    the straight segment between them is blocked by an obstacle whenever such a pair is found."""
    size = cell.size[0]
    fallback = None
    for _ in range(tries):
        s = cell.sample_free_pose(rng, clearance)
        g = cell.sample_free_pose(rng, clearance)
        if math.hypot(g[0] - s[0], g[1] - s[1]) < min_distance:
            continue
        blocked = segment_blocked(s, g, cell.layout, size, radius)
        if blocked or not prefer_blocked:
            return s, g, blocked
        fallback = fallback or (s, g, blocked)
    if fallback is None:
        raise RuntimeError("no start/goal pair found")
    return fallback


def evaluate(n_episodes: int, seed: int, controller_factory: Callable | None, cell_factory: Callable,
             max_time: float = 60.0, limits: SafetyLimits | None = None,
             min_distance: float = 2.5, dt: float = 0.1, new_layout_each: bool = True,
             progress: Callable | None = None) -> dict:
    """Success rate / collisions / times over ``n_episodes`` randomised start-goal pairs.

    ``cell_factory(seed) -> cell`` (a ``sakura_nexus.sim.FactoryCell``, or the tests' kinematic stand-in
    ``sakura_nexus.testing.standin.KinematicCell``), ``controller_factory(cell) -> controller`` (None:
    go-to-goal). Layout ``seed + i`` per episode (``new_layout_each``); tasks
    prefer start/goal pairs whose straight line is blocked by an obstacle."""
    controller_factory = controller_factory or (lambda cell: GoToGoalController())
    limits = limits or SafetyLimits(control_period=dt)
    cell = None
    episodes = []
    for i in range(n_episodes):
        s = seed + i
        if cell is None:
            cell = cell_factory(s)
        elif new_layout_each:
            cell.reset(seed=s)
        rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, i, 9]))
        start, goal, blocked = sample_task(cell, rng, min_distance)
        ctrl = controller_factory(cell)
        t0 = time.perf_counter()
        r = run_episode(cell, ctrl, start, goal, max_time=max_time, dt=dt, limits=limits)
        rec = {"episode": i, "layout_seed": s, "start": list(start), "goal": list(goal), "blocked": blocked,
               "reached": r.reached, "collided": r.collided, "success": r.success, "time": r.time,
               "steps": r.steps, "wall_s": time.perf_counter() - t0, "reasons": r.reasons,
               "plan_ms_p50": float(np.percentile(r.plan_ms, 50)) if r.plan_ms else None,
               "plan_ms_p99": float(np.percentile(r.plan_ms, 99)) if r.plan_ms else None,
               "path": r.path[:: max(1, len(r.path) // 200)].round(3).tolist()}
        episodes.append(rec)
        if progress:
            progress(rec)
    return summarise(episodes) | {"limits": asdict(limits), "episodes": episodes}


def summarise(episodes: list) -> dict:
    def stats(eps):
        n = len(eps)
        if not n:
            return {"n": 0}
        ok = [e for e in eps if e["success"]]
        return {"n": n, "success_rate": len(ok) / n, "collisions": sum(e["collided"] for e in eps),
                "collision_rate": sum(e["collided"] for e in eps) / n,
                "timeouts": sum(not e["reached"] and not e["collided"] for e in eps),
                "time_mean_success": float(np.mean([e["time"] for e in ok])) if ok else None,
                "time_median_success": float(np.median([e["time"] for e in ok])) if ok else None}

    return {"all": stats(episodes), "blocked": stats([e for e in episodes if e["blocked"]]),
            "unblocked": stats([e for e in episodes if not e["blocked"]])}
