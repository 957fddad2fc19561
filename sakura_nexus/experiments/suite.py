"""``sakura-nexus evaluate --suite``: the learned controller beside the kinematic one, same episodes.

Every condition runs the same held-out layouts and start/goal pairs for each controller (paired),
through the same safety layer, and reports success, collisions, timeouts, time to goal, minimum
clearance and the prediction tracking error of both dynamics models on the executed paths.

Held-out range (never used to train or tune; docs/control.md, "Evaluation suite"): layouts
``HELD_OUT_SEED`` .. ``HELD_OUT_SEED + episodes - 1`` (7000..7049 at 50 episodes). Development and
tuning used layouts 6000..6099; the range head was taught on layouts 0..399; adaptation driving runs
in layouts 500..599.

Conditions:

* ``nominal``: complete map, nominal robot.
* ``unmapped``: 1-2 boxes placed on the map's route (the geodesic the map-based planner would
  follow), left off the published map.
* ``moving``: a box-sized mover paces across the route (0.35 m/s), timed to cross near when the robot
  gets there; never on the map.
* ``map_free``: no map at all.
* ``shift_wheel`` / ``shift_payload`` / ``shift_friction`` / ``shift_friction_low``: a right wheel at 70 %
  of its commanded speed (systematic curvature); 14 kg payload with 0.2 N m derated motors; floor
  friction 0.15 (the issue's value: at the safety layer's limits, 0.5 m/s x 1.2 rad/s = 0.6 m/s^2 of
  centripetal and 1 m/s^2 of linear acceleration, it never slips, so it barely troubles the kinematic
  model) and 0.05 (below those accelerations: the wheels slip when accelerating and turning). The learned
  controller runs once as shipped (``learned_mpc``) and once after ``adapt_s`` sim-seconds of ordinary
  driving with online learning on that robot (``learned_mpc_adapted``).
* ``unmapped`` also runs the ablation ``learned_no_obstacle_head`` (the camera's range head off).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import time
from collections import Counter

import numpy as np

from sakura_nexus.geometry import wrap_angle
from sakura_nexus.sim.layout import ROBOT_RADIUS

__all__ = ["CONDITIONS", "HELD_OUT_SEED", "run_suite", "suite_main"]

HELD_OUT_SEED = 7000
ADAPT_SEED = 500
CONDITIONS = ("nominal", "unmapped", "moving", "map_free", "shift_wheel", "shift_payload", "shift_friction",
              "shift_friction_low")
FLOOR_FRICTION = {"shift_friction": 0.15, "shift_friction_low": 0.05}
MOVER_SPEED = 0.35      # m/s


def _robot_for(condition: str):
    from sakura_nexus.sim.layout import RobotSpec

    rb = RobotSpec()
    if condition == "shift_wheel":
        return dataclasses.replace(rb, wheel_scale=(1.0, 0.7))
    if condition == "shift_payload":
        return dataclasses.replace(rb, mass=rb.mass + 14.0, wheel_torque=0.2)
    return rb


def _cell_config(condition: str, seed: int, extra=(), mover=None):
    from sakura_nexus.sim import CellConfig

    kw = {"floor_friction": FLOOR_FRICTION[condition]} if condition in FLOOR_FRICTION else {}
    return CellConfig(seed=seed, robot=_robot_for(condition), extra_obstacles=tuple(extra), mover=mover, **kw)


def _route_points(obstacles, size, start, goal, step: float = 0.05) -> np.ndarray:
    """The map planner's route: descend the geodesic cost-to-go from start to goal."""
    import torch

    from sakura_nexus.control.costmap import CostToGo

    ctg = CostToGo(obstacles, size, goal, radius=ROBOT_RADIUS + 0.1)
    p = np.array(start[:2], dtype=float)
    pts = [p.copy()]
    for _ in range(int(4 * size / step)):
        if math.hypot(goal[0] - p[0], goal[1] - p[1]) < 0.2:
            break
        _, heading, _ = ctg.sample_all(torch.tensor([[p[0], p[1]]], dtype=torch.float32))
        a = float(heading[0])
        p = p + step * np.array([math.cos(a), math.sin(a)])
        pts.append(p.copy())
    pts.append(np.array(goal[:2], float))
    return np.asarray(pts)


def _reachable(obstacles, size, start, goal) -> bool:
    from sakura_nexus.control.costmap import CostToGo

    ctg = CostToGo(obstacles, size, goal, radius=ROBOT_RADIUS + 0.02, band=0.0, blocked_cost=1e4)
    return ctg(start[0], start[1]) < 100.0


def make_task(condition: str, seed: int, episode: int):
    """(cell config, start, goal, blocked, extra obstacles, mover plan) for one episode: the start/goal
    pair is the same for every condition of a layout (paired across conditions too)."""
    from sakura_nexus.control.episode import sample_task
    from sakura_nexus.sim import FactoryCell
    from sakura_nexus.sim.layout import Obstacle, free_distance

    base = FactoryCell(_cell_config("nominal", seed), camera_width=16, camera_height=16)
    rng = np.random.default_rng(np.random.SeedSequence([seed, episode, 13]))
    # a tight layout may have no 2.5 m pair with 0.4 m clearance: shorter, then closer to things
    for min_distance, clearance in ((2.5, 0.4), (2.0, 0.4), (2.0, 0.25), (1.5, 0.15)):
        try:
            start, goal, blocked = sample_task(base, rng, min_distance, clearance=clearance)
            break
        except RuntimeError:
            if clearance == 0.15:
                raise
    obstacles, size = list(base.layout), base.size[0]
    base.close()
    extra, mover = [], None
    if condition in ("unmapped", "moving"):
        route = _route_points(obstacles, size, start, goal)
        seg = np.hypot(*np.diff(route, axis=0).T)
        s = np.concatenate([[0.0], np.cumsum(seg)])
        def at(f):
            k = int(np.searchsorted(s, f * s[-1]))
            k = min(max(k, 1), len(route) - 1)
            return route[k], route[k] - route[k - 1]
        if condition == "unmapped":
            want = 1 + int(rng.random() < 0.5)
            for f in rng.permutation([0.35, 0.5, 0.65])[:3]:
                if len(extra) == want:
                    break
                p, t = at(float(f))
                n = np.array([-t[1], t[0]]) / (np.hypot(*t) + 1e-9)
                c = p + n * rng.uniform(-0.1, 0.1)
                sx, sy = rng.uniform(0.35, 0.6, 2)
                ob = Obstacle(float(c[0]), float(c[1]), float(sx), float(sy), float(rng.uniform(-math.pi, math.pi)),
                              "box", float(rng.uniform(0.5, 0.9)))
                if min(math.hypot(c[0] - start[0], c[1] - start[1]), math.hypot(c[0] - goal[0], c[1] - goal[1])) < 0.9:
                    continue
                if abs(c[0]) + 0.4 > size / 2 or abs(c[1]) + 0.4 > size / 2:
                    continue
                if free_distance(c[0], c[1], obstacles + extra, size) < 0.35:
                    continue
                if not _reachable(obstacles + extra + [ob], size, start, goal):
                    continue
                extra.append(ob)
        else:
            p, t = at(0.5)
            n = np.array([-t[1], t[0]]) / (np.hypot(*t) + 1e-9)
            arrive = s[-1] * 0.5 / 0.35                     # when a robot at ~0.35 m/s gets there
            mover = {"centre": p.tolist(), "normal": n.tolist(), "amplitude": 1.6, "arrive": float(arrive),
                     "phase": float(rng.uniform(-1.0, 1.0))}
    return start, goal, blocked, extra, mover


def _mover_xy(plan: dict, t: float):
    """Pacing across the route: a triangle wave of ``amplitude`` along the route normal, crossing the
    route at ``arrive + phase`` seconds."""
    a, v = plan["amplitude"], MOVER_SPEED
    period = 4 * a / v
    u = ((t - plan["arrive"] - plan["phase"]) / period + 0.25) % 1.0       # 0.25 -> at the centre, moving
    off = a * (4 * u - 1) if u < 0.5 else a * (3 - 4 * u)                   # -a..a..-a
    c, n = plan["centre"], plan["normal"]
    return c[0] + n[0] * off, c[1] + n[1] * off


def run_suite_episode(cell, controller, start, goal, mover=None, max_time: float = 60.0, dt: float = 0.1,
                      limits=None) -> dict:
    """One episode (same loop as :func:`~sakura_nexus.control.episode.run_episode`, plus the mover, the
    clearance bookkeeping and the executed trajectory for the tracking error)."""
    from sakura_nexus.control.episode import control_step
    from sakura_nexus.control.safety import SafetyLayer, SafetyLimits, goal_reached
    from sakura_nexus.sim.layout import free_distance

    limits = limits or SafetyLimits(control_period=dt)
    safety = SafetyLayer(limits)
    safety.reset()
    cell.set_pose(*start)
    cell.set_goal(*goal)
    if mover is not None:
        cell.set_mover(*_mover_xy(mover, 0.0))
    controller.reset(goal)
    t0 = cell.time
    poses, vels, cmds, plan_ms = [tuple(cell.pose)], [tuple(cell.velocity)], [], []
    min_clear = math.inf
    reasons: Counter = Counter()
    contact = None
    reached = collided = moving_collision = False
    cmd = (0.0, 0.0)
    obstacles, size = list(cell.layout), cell.size[0]
    while cell.time - t0 < max_time - 1e-9:
        pose = cell.pose
        if goal_reached(pose, goal, limits):
            reached = True
            break
        cmd = control_step(cell, controller, safety, goal, cell.time - t0, cmd, plan_ms, reasons)
        if mover is not None:
            cell.set_mover(*_mover_xy(mover, cell.time - t0 + dt))
        res = cell.step(cmd[0], cmd[1], dt)
        poses.append(tuple(res.pose))
        vels.append(tuple(cell.velocity))
        cmds.append(cmd)
        obs_now = obstacles + ([cell.mover] if mover is not None else [])
        min_clear = min(min_clear, free_distance(res.pose[0], res.pose[1], obs_now, size) - ROBOT_RADIUS)
        if res.collided:
            collided = True
            moving_collision = abs(poses[-2][0] - res.pose[0]) + abs(poses[-2][1] - res.pose[1]) > 0.005
            near = min(obs_now, key=lambda o: free_distance(res.pose[0], res.pose[1], [o], size))
            bearing = math.atan2(near.y - res.pose[1], near.x - res.pose[0]) - res.pose[2]
            what = "mover" if mover is not None and near is obs_now[-1] else near.kind
            contact = {"v": cmd[0], "w": cmd[1], "with": what,
                       "bearing_deg": round(math.degrees(wrap_angle(bearing)))}
            break
    else:
        reached = goal_reached(cell.pose, goal, limits)
    return {"reached": bool(reached), "collided": bool(collided), "robot_moving_at_contact": bool(moving_collision),
            "success": bool(reached and not collided), "time": float(cell.time - t0), "steps": len(cmds),
            "min_clearance": float(min_clear), "safety_reasons": dict(reasons), "contact": contact,
            "plan_ms_p50": float(np.median(plan_ms)) if plan_ms else None,
            "plan_ms_p99": float(np.percentile(plan_ms, 99)) if plan_ms else None,
            "poses": np.asarray(poses).round(4).tolist(), "velocities": np.asarray(vels).round(4).tolist(),
            "commands": np.asarray(cmds).round(4).tolist()}


def tracking_error(model, episodes: list, horizon: int = 15, stride: int = 5) -> float | None:
    """Mean position error [m] at ``horizon`` steps of ``model``'s open-loop prediction under the
    commands that were really executed, over every ``stride``-th step of the episodes' paths."""
    from sakura_nexus.control.kinematic import rollout_poses

    errs = []
    for e in episodes:
        p, v, c = np.asarray(e["poses"]), np.asarray(e["velocities"]), np.asarray(e["commands"])
        for t in range(0, len(c) - horizon + 1, stride):
            pred = rollout_poses(model, p[t], v[t], c[t:t + horizon])
            errs.append(float(np.hypot(*(pred[-1, :2] - p[t + horizon, :2]))))
    return float(np.mean(errs)) if errs else None


# ---- controllers ---------------------------------------------------------------------------------------
class _Setup:
    """Shared, loaded once per worker: range head, MPPI config, safety limits."""

    def __init__(self, range_head_path: str | None = None):
        import torch

        from sakura_nexus.control.planner import MPPIConfig
        from sakura_nexus.control.safety import SafetyLimits
        from sakura_nexus.models.obstacles import load_range_head

        torch.set_num_threads(1)
        from sakura_nexus.paths import models_dir

        self.range_head = load_range_head(range_head_path or models_dir() / "range_head.bin")
        self.mppi = MPPIConfig(members=1)
        self.limits = SafetyLimits(control_period=0.1)

    def controller(self, kind: str, cell_map, residual=None):
        from sakura_nexus.control.kinematic import UnicycleConfig
        from sakura_nexus.control.learned import KinematicMPC, LearnedMPC

        ucfg = UnicycleConfig.from_limits(self.limits)
        if kind == "kinematic_mpc":
            return KinematicMPC(self.mppi, cell_map, ucfg)
        head = None if kind == "learned_no_obstacle_head" else self.range_head
        return LearnedMPC(head, self.mppi, cell_map, ucfg, residual=residual, learn=False)


def adapt(setup: _Setup, condition: str, seconds: float, seed: int = ADAPT_SEED):
    """Ordinary driving (random goals, map on, learning on) for ``seconds`` sim-seconds with the
    robot of ``condition`` in layouts ``seed``..: returns the adapted residual model."""
    from sakura_nexus.control.episode import run_episode, sample_task
    from sakura_nexus.control.kinematic import ResidualUnicycle, UnicycleConfig
    from sakura_nexus.control.learned import LearnedMPC
    from sakura_nexus.sim import FactoryCell

    residual = ResidualUnicycle(UnicycleConfig.from_limits(setup.limits))
    driven, k = 0.0, 0
    cell = None
    while driven < seconds:
        cfg = _cell_config(condition, seed + k)
        if cell is None:
            cell = FactoryCell(cfg, camera_width=64, camera_height=64)
        else:
            cell.cfg = cfg
            cell.reset(seed=seed + k)
        try:
            start, goal, _ = sample_task(cell, np.random.default_rng(seed + k), 2.0, prefer_blocked=False)
        except RuntimeError:                         # a layout too tight for a 2 m task: the next one
            k += 1
            continue
        ctrl = LearnedMPC(setup.range_head, setup.mppi, (cell.map_obstacles, cell.size[0]),
                          residual=residual, learn=True)
        r = run_episode(cell, ctrl, start, goal, max_time=min(60.0, seconds - driven), limits=setup.limits)
        driven += r.time
        k += 1
    cell.close()
    return residual, {"sim_s": round(driven, 1), "episodes": k, "weights": residual.weights.round(4).tolist()}


def _run_job(job: dict) -> dict:
    """One (condition, controller) over all episodes; run in a worker process."""
    import torch

    from sakura_nexus.control.kinematic import ResidualUnicycle, UnicycleConfig, UnicycleModel
    from sakura_nexus.sim import FactoryCell
    from sakura_nexus.sim.layout import Obstacle

    setup = _Setup(job.get("range_head"))
    cond, kind = job["condition"], job["controller"]
    residual, adapt_info = None, None
    if kind == "learned_mpc_adapted":
        residual, adapt_info = adapt(setup, cond, job["adapt_s"])
    eps, cell = [], None
    t_wall = time.time()
    for i in range(job["episodes"]):
        seed = job["seed"] + i
        start, goal, blocked, extra, mover = make_task(cond, seed, i)
        mover_ob = Obstacle(0.0, 0.0, 0.4, 0.4, 0.0, "box", 1.0) if mover else None
        cfg = _cell_config(cond, seed, extra, mover_ob)
        if cell is not None:
            cell.close()
        cell = FactoryCell(cfg, camera_width=64, camera_height=64)
        cmap = None if cond == "map_free" else (cell.map_obstacles, cell.size[0])
        ctrl = setup.controller(kind.replace("_adapted", ""), cmap, residual=residual)
        r = run_suite_episode(cell, ctrl, start, goal, mover, job["max_time"], limits=setup.limits)
        r.update(episode=i, layout_seed=seed, start=list(start), goal=list(goal), blocked=bool(blocked),
                 unmapped=[dataclasses.asdict(o) for o in extra])
        eps.append(r)
        if job.get("queue") is not None:
            job["queue"].put(1)
    if cell is not None:
        cell.close()
    ucfg = UnicycleConfig.from_limits(setup.limits)
    kin = UnicycleModel(ucfg)
    learned = residual if residual is not None else ResidualUnicycle(ucfg)
    torch.set_num_threads(1)
    out = {"condition": cond, "controller": kind, "episodes": eps, "wall_s": round(time.time() - t_wall, 1),
           "tracking_error_m": {"kinematic": tracking_error(kin, eps), "learned": tracking_error(learned, eps)},
           "adaptation": adapt_info}
    out["summary"] = summarise(eps)
    return out


def summarise(eps: list) -> dict:
    n = len(eps)
    ok = [e for e in eps if e["success"]]
    return {"n": n, "success_rate": len(ok) / n if n else None,
            "collisions": sum(e["collided"] for e in eps),
            "collision_rate": sum(e["collided"] for e in eps) / n if n else None,
            "collisions_robot_moving": sum(e["robot_moving_at_contact"] for e in eps),
            "timeouts": sum(not e["reached"] and not e["collided"] for e in eps),
            "time_mean_success": float(np.mean([e["time"] for e in ok])) if ok else None,
            "min_clearance_median": float(np.median([e["min_clearance"] for e in eps])) if n else None,
            "min_clearance_min": float(np.min([e["min_clearance"] for e in eps])) if n else None,
            "plan_ms_p50": float(np.median([e["plan_ms_p50"] for e in eps if e["plan_ms_p50"] is not None]))
            if n else None}


def familiarity(range_head, seed: int = HELD_OUT_SEED, layouts: int = 20, per_layout: int = 10) -> dict:
    """The range head's uncertainty and error on held-out layouts as trained (lighting 0.7-1.3) and
    on scenes unlike its training data (lighting x0.25 and x2.5), with the share of frames at which the
    safety layer's ``uncertainty_slow`` (0.5) would slow the robot down."""
    from sakura_nexus.control.episode import _to_tensor
    from sakura_nexus.models.obstacles import true_ranges
    from sakura_nexus.sim import CellConfig, FactoryCell

    out = {}
    for name, light in (("familiar", None), ("dark_x0.25", 0.25), ("bright_x2.5", 2.5)):
        rng = np.random.default_rng(seed)
        unc, err = [], []
        for k in range(layouts):
            cell = FactoryCell(CellConfig(seed=seed + k, light=light), camera_width=64, camera_height=64)
            for _ in range(per_layout):
                pose = cell.sample_free_pose(rng, 0.05)
                cell.set_pose(*pose)
                r, u = range_head.predict(_to_tensor(cell.render(64, 64)))
                t = true_ranges(cell.layout, cell.size[0], pose, range_head.range_config)
                unc.append(u)
                err.append(float(np.median(np.abs(r - t)[t < 1.5])) if (t < 1.5).any() else np.nan)
            cell.close()
        out[name] = {"uncertainty_median": float(np.median(unc)), "uncertainty_p90": float(np.percentile(unc, 90)),
                     "share_above_slow_0.5": float(np.mean(np.asarray(unc) > 0.5)),
                     "near_range_abs_err_median_m": float(np.nanmedian(err))}
    return out


def jobs_for(conditions, episodes: int, seed: int, max_time: float, adapt_s: float) -> list[dict]:
    jobs = []
    for c in conditions:
        kinds = ["kinematic_mpc", "learned_mpc"]
        if c == "unmapped":
            kinds.append("learned_no_obstacle_head")
        if c.startswith("shift_"):
            kinds.append("learned_mpc_adapted")
        for k in kinds:
            jobs.append({"condition": c, "controller": k, "episodes": episodes, "seed": seed, "max_time": max_time,
                         "adapt_s": adapt_s})
    return jobs


def run_suite(conditions=CONDITIONS, episodes: int = 50, seed: int = HELD_OUT_SEED, max_time: float = 60.0,
              adapt_s: float = 300.0, workers: int = 2, progress: bool = True, on_result=None) -> dict:
    import multiprocessing as mp

    jobs = jobs_for(conditions, episodes, seed, max_time, adapt_s)
    total = sum(j["episodes"] for j in jobs)
    ctx = mp.get_context("spawn")
    results = []
    with ctx.Manager() as mgr:
        q = mgr.Queue()
        for j in jobs:
            j["queue"] = q
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="suite", unit="episode")
        with ctx.Pool(max(1, workers), maxtasksperchild=1) as pool:
            pending = [pool.apply_async(_run_job, (j,)) for j in jobs]
            while True:
                try:
                    q.get(timeout=1.0)
                    if bar:
                        bar.update(1)
                except Exception:  # noqa: BLE001 - queue.Empty through the manager proxy
                    pass
                for p in [p for p in pending if p.ready()]:
                    pending.remove(p)
                    results.append(p.get())
                    if on_result is not None:
                        on_result(results)
                if not pending:
                    break
        if bar:
            bar.close()
    return _document(results, seed, episodes, max_time, adapt_s)


def _document(results, seed, episodes, max_time, adapt_s) -> dict:
    table: dict = {}
    for r in sorted(results, key=lambda r: (CONDITIONS.index(r["condition"]), r["controller"])):
        table.setdefault(r["condition"], {})[r["controller"]] = r
    return {"held_out_layouts": f"{seed}..{seed + episodes - 1}", "episodes_per_condition": episodes,
            "max_time_s": max_time, "adapt_s": adapt_s, "results": table}


def markdown(doc: dict) -> str:
    rows = ["| condition | controller | success | collisions (robot moving) | timeouts | time to goal [s] | "
            "min clearance median / min [m] | tracking err. kinematic / learned model [m] | plan p50 [ms] |",
            "|---|---|---|---|---|---|---|---|---|"]
    for cond, by in doc["results"].items():
        for kind, r in by.items():
            s, te = r["summary"], r["tracking_error_m"]
            t = "-" if s["time_mean_success"] is None else f"{s['time_mean_success']:.1f}"
            rows.append(f"| {cond} | {kind} | {s['success_rate']:.2f} | "
                        f"{s['collisions']} ({s['collisions_robot_moving']}) "
                        f"| {s['timeouts']} | {t} | {s['min_clearance_median']:.2f} / {s['min_clearance_min']:.2f} | "
                        f"{te['kinematic']:.3f} / {te['learned']:.3f} | {s['plan_ms_p50']:.1f} |")
    return "\n".join(rows) + "\n"


def plot(doc: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conds = list(doc["results"])
    kinds = sorted({k for by in doc["results"].values() for k in by},
                   key=lambda k: ["kinematic_mpc", "learned_mpc", "learned_mpc_adapted",
                                  "learned_no_obstacle_head"].index(k))
    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    x = np.arange(len(conds))
    wd = 0.8 / len(kinds)
    for i, k in enumerate(kinds):
        succ = [doc["results"][c].get(k, {}).get("summary", {}).get("success_rate", np.nan) for c in conds]
        coll = [doc["results"][c].get(k, {}).get("summary", {}).get("collision_rate", np.nan) for c in conds]
        axes[0].bar(x + (i - (len(kinds) - 1) / 2) * wd, succ, wd, label=k)
        axes[1].bar(x + (i - (len(kinds) - 1) / 2) * wd, coll, wd, label=k)
    for ax, t in zip(axes, ("success rate", "collision rate"), strict=True):
        ax.set_xticks(x, conds, rotation=20, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{t}, held-out layouts {doc['held_out_layouts']}", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(kinds), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def suite_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sakura-nexus evaluate --suite", description=__doc__.splitlines()[0])
    p.add_argument("--suite", action="store_true")
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first held-out layout (do not tune on it)")
    p.add_argument("--max-time", type=float, default=60.0)
    p.add_argument("--adapt-s", type=float, default=300.0, help="sim-seconds of online learning before *_adapted")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=os.environ.get("SAKURA_SUITE_OUT", "out/eval/suite.json"))
    a = p.parse_args(argv)
    conds = [c for c in a.conditions.split(",") if c]
    for c in conds:
        if c not in CONDITIONS:
            raise SystemExit(f"unknown condition {c!r}; choose from {CONDITIONS}")
    t0 = time.time()
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def partial(results):                         # each finished job is on disk at once
        out.with_suffix(".partial.json").write_text(json.dumps(
            _document(results, a.seed, a.episodes, a.max_time, a.adapt_s)))

    doc = run_suite(conds, a.episodes, a.seed, a.max_time, a.adapt_s, a.workers, on_result=partial)
    doc["range_head_familiarity"] = familiarity(_Setup().range_head, a.seed)
    doc["wall_s"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(doc))
    md = markdown(doc)
    out.with_suffix(".md").write_text(f"Held-out layouts {doc['held_out_layouts']}, {a.episodes} episodes per "
                                      f"condition and controller, paired.\n\n" + md)
    plot(doc, out.with_suffix(".png"))
    print(md)
    print(f"wrote {out}, {out.with_suffix('.md')}, {out.with_suffix('.png')} ({doc['wall_s']} s)")
    return 0
