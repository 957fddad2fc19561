"""Planner benchmark: MPPI plan time on one core, and closed-loop success vs planning budget.

1. Plan time (torch 1 thread, inference mode), p50/p99 over ``--plans`` calls on a warm planner, for
   each samples x horizon x members budget, with
   * the stand-in dynamics of the real size (latent 32, MLP hidden 128, ensemble 5), and
   * the real ``sakura_nexus.models.WorldModel`` (the shipped checkpoint if there is one, else an
     untrained one of the default config: same compute).
   ``members`` = ensemble members the sample rollouts use (the world model's fast path; 5 = all).
2. Success rate vs budget: closed-loop episodes in the kinematic stand-in cell with the perfect
   stand-in model (planner quality separated from model quality), map-free and with the map's
   cost-to-go, for several samples x iterations x horizon budgets.

Writes out/bench/planner.json and planner.png (override the directory with SAKURA_BENCH_OUT).

    python bench/bench_planner.py [--plans 300] [--episodes 20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common

from sakura_nexus.control import MPPIConfig, MPPIPlanner, StateMPCController, evaluate
from sakura_nexus.testing.standin import KinematicCell, StandInWorldModel

TARGET_P99_MS = 10.0


def real_world_model():
    try:
        from sakura_nexus.models import WorldModel, load_checkpoint
    except ImportError as e:  # pragma: no cover - models package missing
        return None, f"sakura_nexus.models not importable: {e}"
    try:
        return load_checkpoint().world_model.eval(), "shipped checkpoint (models/)"
    except (FileNotFoundError, OSError, ValueError) as e:
        return WorldModel().eval(), f"untrained WorldModel() (no checkpoint: {type(e).__name__})"


def time_plans(dyn, cfg: MPPIConfig, n: int, z: torch.Tensor, cost_to_go=None) -> dict:
    planner = MPPIPlanner(dyn, cfg)
    planner.set_cost_to_go(cost_to_go)
    goal = (1.5, 1.0, 0.5)
    for _ in range(10):
        planner.plan(z, goal)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        planner.plan(z, goal)
        ts.append(time.perf_counter() - t0)
    s = common.summary_ms(ts)
    return {k: round(s[k], 3) for k in ("p50_ms", "p99_ms", "mean_ms")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plans", type=int, default=300)
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--max-time", type=float, default=40.0)
    ap.add_argument("--quick", action="store_true", help="few plans / episodes (smoke run)")
    a = ap.parse_args(argv)
    if a.quick:
        a.plans, a.episodes = 40, 3
    torch.set_num_threads(1)
    load0 = os.getloadavg()

    # ---- 1. plan time ---------------------------------------------------------------------------------
    standin = StandInWorldModel(latent=32, hidden=128, ensemble=5)
    wm, wm_src = real_world_model()
    z = standin.encode_state((0.0, 0.0, 0.0), (0.2, 0.0))
    budgets = [(64, 15), (128, 15), (256, 15), (128, 30)]
    timing = []
    with torch.inference_mode():
        for name, dyn in (("standin_h128_e5", standin), ("world_model", wm)):
            if dyn is None:
                continue
            for samples, horizon in budgets:
                for members in (1, 2, 5):
                    cfg = MPPIConfig(samples=samples, horizon=horizon, members=members)
                    r = time_plans(dyn, cfg, a.plans, z)
                    row = {"dynamics": name, "samples": samples, "horizon": horizon, "members": members, **r}
                    timing.append(row)
                    print(f"{name:16s} S={samples:3d} H={horizon:2d} m={members}  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:6.2f} ms", flush=True)

    # the node's default configuration with a map: cost-to-go + clearance from an occupancy grid
    if wm is not None:
        from sakura_nexus.control.costmap import CostToGo
        from sakura_nexus.sim.layout import MAP_RESOLUTION, CellConfig, generate_layout, occupancy_grid

        data, w, h, origin = occupancy_grid(generate_layout(CellConfig(seed=0)).obstacles, 6.0)
        ctg = CostToGo.from_occupancy(data, w, h, MAP_RESOLUTION, origin, (1.5, 1.0))
        with torch.inference_mode():
            for samples, horizon in ((128, 15), (256, 15)):
                cfg = MPPIConfig(samples=samples, horizon=horizon, members=1)
                r = time_plans(wm, cfg, a.plans, z, cost_to_go=ctg)
                timing.append({"dynamics": "world_model+map", "samples": samples, "horizon": horizon, "members": 1,
                               **r})
                print(f"{'world_model+map':16s} S={samples:3d} H={horizon:2d} m=1  p50 {r['p50_ms']:6.2f} ms  "
                      f"p99 {r['p99_ms']:6.2f} ms", flush=True)

    # the two controllers of the evaluation suite at the node defaults (128 x 15, with the map):
    # kinematic_mpc (unicycle) and learned_mpc (unicycle + residual + a seen-obstacle memory of
    # 120 points, 20 of them moving), and the range head's inference on one 64x64 frame
    if wm is not None:
        from sakura_nexus.control.kinematic import ResidualUnicycle, UnicycleModel
        from sakura_nexus.models.obstacles import ObstacleMemory, load_range_head
        from sakura_nexus.paths import models_dir

        mem = ObstacleMemory()
        rng = np.random.default_rng(0)
        pts = rng.uniform(-2.0, 2.0, (120, 2))
        mem.points, mem.stamps = pts, np.zeros(120)
        mem.moving = np.arange(120) < 20
        mem._pts_t = torch.as_tensor(pts, dtype=torch.float32)
        mem._grow_t = torch.as_tensor(np.where(mem.moving, 0.2, 0.0), dtype=torch.float32)
        zk = torch.tensor([0.0, 0.0, 0.0, 0.2, 0.0])
        with torch.inference_mode():
            for name, dyn in (("kinematic_mpc", UnicycleModel()), ("learned_mpc", ResidualUnicycle(obstacles=mem))):
                cfg = MPPIConfig(samples=128, horizon=15, members=1)
                r = time_plans(dyn, cfg, a.plans, zk, cost_to_go=ctg)
                timing.append({"dynamics": name + "+map", "samples": 128, "horizon": 15, "members": 1, **r})
                print(f"{name + '+map':16s} S=128 H=15       p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms",
                      flush=True)
            try:
                head = load_range_head(models_dir() / "range_head.bin")
                img = torch.rand(1, 3, 64, 64)
                for _ in range(10):
                    head.predict(img)
                ts = []
                for _ in range(a.plans):
                    t0 = time.perf_counter()
                    head.predict(img)
                    ts.append(time.perf_counter() - t0)
                r = {k: round(v, 3) for k, v in common.summary_ms(ts).items() if k in ("p50_ms", "p99_ms", "mean_ms")}
                timing.append({"dynamics": "range_head_predict", "samples": 1, "horizon": 0, "members": 5, **r})
                print(f"{'range head':16s} 64x64            p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms",
                      flush=True)
            except (OSError, ValueError) as e:
                print(f"range head: not timed ({e})")

    # ---- 2. success vs budget (stand-in cell, perfect model) ---------------------------------------------
    grid = [(32, 1, 15), (64, 1, 15), (128, 1, 15), (256, 1, 15), (64, 2, 15), (128, 2, 15),
            (64, 1, 30), (128, 1, 30)]
    if a.quick:
        grid = [(32, 1, 15), (128, 1, 15)]
    success = []
    for use_map in (True, False):
        for samples, iters, horizon in grid:
            cfg = MPPIConfig(samples=samples, iterations=iters, horizon=horizon, members=1,
                             w_memory=0.0 if use_map else 0.5)

            def factory(cell, cfg=cfg, use_map=use_map):
                model = StandInWorldModel(cell.layout, size=cell.size[0])
                cmap = (cell.layout, cell.size[0]) if use_map else None
                return StateMPCController(model, cfg, cell_map=cmap)

            t0 = time.time()
            r = evaluate(a.episodes, seed=0, controller_factory=factory,
                         cell_factory=lambda s: KinematicCell(seed=s), max_time=a.max_time)
            pm = [e["plan_ms_p50"] for e in r["episodes"] if e["plan_ms_p50"] is not None]
            row = {"map": use_map, "samples": samples, "iterations": iters, "horizon": horizon,
                   "success_rate": r["all"]["success_rate"], "collisions": r["all"]["collisions"],
                   "timeouts": r["all"]["timeouts"], "time_mean_success": r["all"]["time_mean_success"],
                   "plan_ms_p50": float(np.median(pm)) if pm else None, "wall_s": round(time.time() - t0, 1)}
            success.append(row)
            print(f"map={use_map!s:5} S={samples:3d} it={iters} H={horizon:2d}  "
                  f"success {row['success_rate']:.2f}  "
                  f"collisions {row['collisions']}  timeouts {row['timeouts']}", flush=True)
    gtg = evaluate(a.episodes, seed=0, controller_factory=None, cell_factory=lambda s: KinematicCell(seed=s),
                   max_time=a.max_time)

    default = next((t for t in timing if t["dynamics"] == "world_model" and t["samples"] == 128
                    and t["horizon"] == 15 and t["members"] == 1), None)
    data = {
        "target_p99_ms": TARGET_P99_MS,
        "world_model_source": wm_src,
        "threads": torch.get_num_threads(),
        "loadavg_start": load0, "loadavg_end": os.getloadavg(),
        "note": "2-core machine shared with other jobs: compare p50s; p99 is sensitive to the load average",
        "default_budget": {"samples": 128, "horizon": 15, "members": 1, **(default or {})},
        "plan_time": timing,
        "success_vs_budget": success,
        "go_to_goal": {k: gtg["all"][k] for k in ("success_rate", "collisions", "timeouts")},
        "episodes_per_point": a.episodes,
    }
    common.write("planner", data)
    plot(data, common.out_dir() / "planner.png")
    return 0


def plot(data: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for dyn, mk in (("standin_h128_e5", "o"), ("world_model", "s")):
        for m, c in ((1, "C0"), (2, "C1"), (5, "C3")):
            rows = [t for t in data["plan_time"] if t["dynamics"] == dyn and t["members"] == m]
            if rows:
                x = [t["samples"] * t["horizon"] for t in rows]
                ax1.scatter(x, [t["p99_ms"] for t in rows], marker=mk, c=c, label=f"{dyn} m={m}", s=22)
    ax1.axhline(data["target_p99_ms"], ls=":", c="k")
    ax1.set_xlabel("samples x horizon")
    ax1.set_ylabel("plan time p99 [ms], 1 thread")
    ax1.set_yscale("log")
    ax1.legend(fontsize=6)
    for use_map, c in ((True, "C2"), (False, "C4")):
        rows = [r for r in data["success_vs_budget"] if r["map"] == use_map]
        lab = [f"{r['samples']}x{r['iterations']}\nH{r['horizon']}" for r in rows]
        ax2.plot(range(len(rows)), [r["success_rate"] for r in rows], "o-", c=c,
                 label="cost-to-go map" if use_map else "map-free (+memory)")
        ax2.set_xticks(range(len(rows)), lab, fontsize=6)
    ax2.axhline(data["go_to_goal"]["success_rate"], ls="--", c="k", label="go-to-goal")
    ax2.set_ylim(0, 1.02)
    ax2.set_ylabel("success rate (stand-in cell, perfect model)")
    ax2.set_xlabel("samples x iterations, horizon")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
