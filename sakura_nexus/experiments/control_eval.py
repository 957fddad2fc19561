"""``sakura-nexus evaluate``: closed-loop MPC vs go-to-goal in the sim, ROS-free.

Runs :func:`evaluate` over ``--episodes`` randomised start/goal pairs (straight line blocked by an
obstacle wherever possible, a new layout per episode) for each controller and writes
``out/eval/control.json`` + ``control.png``:

* ``go_to_goal``  the proportional baseline (no model),
* ``mpc``         camera -> encoder -> WorldModel -> MPPI, map-free (straight-line goal term),
* ``mpc_map``     the same, with the geodesic cost-to-go of the known cell map as goal term.
* ``kinematic_mpc`` / ``learned_mpc``: MPPI on the unicycle (the Nav2-style baseline) / on the unicycle
  prior + learned residual + what the camera's range head saw, both with the map
  (``--suite`` compares them condition by condition: docs/evaluation.md).

``--standin`` swaps in the kinematic cell and the perfect-model stand-in (no MuJoCo, no checkpoint).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import pathlib
import time

import numpy as np

from sakura_nexus.control.episode import GoToGoalController, LatentMPCController, StateMPCController, evaluate
from sakura_nexus.control.planner import MPPIConfig
from sakura_nexus.control.safety import SafetyLimits

CONTROLLERS = ("go_to_goal", "mpc", "mpc_map", "kinematic_mpc", "learned_mpc")


def _real_setup(checkpoint: str | None, map_clearance: float | None):
    import torch

    from sakura_nexus.models import inference_encoder, load_checkpoint
    from sakura_nexus.sim import CellConfig, FactoryCell

    ck = load_checkpoint(checkpoint)
    if ck.encoder is None:
        raise SystemExit("checkpoint has no encoder.bin: the camera pipeline needs one")
    enc = inference_encoder(ck.encoder)
    wm = ck.world_model.eval()
    for p in wm.parameters():
        p.requires_grad_(False)
    torch.set_num_threads(1)

    def cell_factory(seed: int):
        return FactoryCell(CellConfig(seed=seed), camera_width=64, camera_height=64)

    def mpc_factory(cfg: MPPIConfig, use_map: bool):
        def make(cell):
            cmap = (cell.layout, cell.size[0]) if use_map else None
            kw = {} if map_clearance is None else {"map_clearance": map_clearance}
            return LatentMPCController(enc, wm, cfg, cell_map=cmap, **kw)
        return make

    info = {"checkpoint": str(checkpoint or "models/"),
            "manifest_world_model": ck.manifest.get("world_model", {}),
            "manifest_git": ck.manifest.get("git_revision")}
    return cell_factory, mpc_factory, info


def _prior_factory(name: str, cfg: MPPIConfig, limits: SafetyLimits):
    """kinematic_mpc / learned_mpc with the cell map (the evaluation suite compares them per condition)."""
    from sakura_nexus.control.kinematic import UnicycleConfig
    from sakura_nexus.control.learned import KinematicMPC, LearnedMPC

    ucfg = UnicycleConfig.from_limits(limits)
    head = None
    if name == "learned_mpc":
        from sakura_nexus.models.obstacles import load_range_head
        from sakura_nexus.paths import models_dir

        head = load_range_head(models_dir() / "range_head.bin")

    def make(cell):
        cmap = (getattr(cell, "map_obstacles", cell.layout), cell.size[0])
        if name == "kinematic_mpc":
            return KinematicMPC(cfg, cmap, ucfg)
        return LearnedMPC(head, cfg, cmap, ucfg)
    return make


def _standin_setup():
    from sakura_nexus.testing.standin import KinematicCell, StandInWorldModel

    def mpc_factory(cfg: MPPIConfig, use_map: bool):
        def make(cell):
            wm = StandInWorldModel(cell.layout, size=cell.size[0])
            return StateMPCController(wm, cfg, cell_map=(cell.layout, cell.size[0]) if use_map else None)
        return make

    return (lambda s: KinematicCell(seed=s)), mpc_factory, {"checkpoint": "stand-in (perfect model)"}


def _auroc(score: np.ndarray, label: np.ndarray) -> float:
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return math.nan
    ranks = np.argsort(np.argsort(np.concatenate([pos, neg]))) + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def model_diagnostics(checkpoint: str | None = None, n: int = 300, seed: int = 1000, horizon: int = 10,
                      speed: float = 0.4) -> dict:
    """What the planner needs from the collision head, measured on unseen layouts.

    For ``n`` random free poses: render, encode with body speed v in {0, 0.25, 0.5} (same image, same
    pose) and read ``collision(z)``; roll the model ``horizon`` steps at constant (speed, 0) from
    v = speed and compare the max predicted risk with the truth "the robot disc hits something on
    that straight path" (map geometry). Reports the velocity dependence of the risk at an
    identical pose (a shortcut if large), risk at standstill with >= 0.5 m clearance (should be ~0),
    and the AUROC / recall at 0.5 of the rollout risk for contact ahead (what the planner uses)."""
    import torch

    from sakura_nexus.control.episode import _to_tensor
    from sakura_nexus.geometry import sdf_np
    from sakura_nexus.models import inference_encoder, load_checkpoint
    from sakura_nexus.sim import CellConfig, FactoryCell
    from sakura_nexus.sim.layout import ROBOT_RADIUS

    ck = load_checkpoint(checkpoint)
    enc, wm = inference_encoder(ck.encoder), ck.world_model.eval()
    rng = np.random.default_rng(seed)
    rows = []
    cell = None
    with torch.inference_mode():
        for k in range(n):
            if k % 30 == 0:
                cell = FactoryCell(CellConfig(seed=seed + k // 30))
            x, y, yaw = cell.sample_free_pose(rng, 0.0)
            cell.set_pose(x, y, yaw)
            emb = enc(_to_tensor(cell.render(64, 64)))
            c, s_ = math.cos(yaw), math.sin(yaw)
            prop = torch.tensor([[x, y, c, s_, 0.0, 0.0]]).repeat(3, 1)
            prop[:, 4] = torch.tensor([0.0, 0.25, 0.5])
            risk_v = wm.collision(wm.encode(emb.expand(3, -1), prop)).numpy()
            z = wm.encode(emb, torch.tensor([[x, y, c, s_, speed, 0.0]]))
            zs, _ = wm.rollout(z, torch.tensor([[speed, 0.0]]).expand(1, horizon, 2).contiguous())
            r_roll = float(wm.collision(zs).max())
            t = np.linspace(0.0, speed * horizon * wm.config.model_dt, 20)
            hit = bool((sdf_np(x + t * c, y + t * s_, cell.layout, cell.size[0]) < ROBOT_RADIUS).any())
            clear = float(sdf_np(x, y, cell.layout, cell.size[0])) - ROBOT_RADIUS
            rows.append((clear, hit, *risk_v, r_roll))
    a = np.array(rows, dtype=float)
    clear, hit, r0, r25, r50, rr = a[:, 0], a[:, 1] > 0.5, a[:, 2], a[:, 3], a[:, 4], a[:, 5]
    return {
        "n": n, "layouts": f"{seed}..{seed + (n - 1) // 30}", "contact_ahead_rate": float(hit.mean()),
        "risk_at_identical_pose_by_speed": {"v=0": float(r0.mean()), "v=0.25": float(r25.mean()),
                                            "v=0.5": float(r50.mean())},
        "risk_standstill_clearance_ge_0.5m": float(r0[clear >= 0.5].mean()) if (clear >= 0.5).any() else None,
        "rollout_risk_auroc_contact_ahead": _auroc(rr, hit),
        "rollout_risk_recall_at_0.5": float((rr[hit] >= 0.5).mean()) if hit.any() else None,
        "rollout_risk_false_alarm_at_0.5": float((rr[~hit] >= 0.5).mean()) if (~hit).any() else None,
        "encoded_risk_v0_auroc_contact_ahead": _auroc(r0, hit),
    }


def parse_overrides(items: list[str]) -> dict:
    """``["horizon=30", "w_memory=0.5", "members=none"]`` -> typed MPPIConfig overrides."""
    defaults = MPPIConfig(members=1)
    out = {}
    for item in items:
        key, _, val = item.partition("=")
        if not hasattr(defaults, key):
            raise SystemExit(f"unknown MPPIConfig field {key!r}")
        kind = type(getattr(defaults, key))
        if val.lower() == "none":
            out[key] = None
        elif kind is bool:
            out[key] = val.lower() in ("1", "true", "yes")
        else:
            out[key] = int(val) if kind is int else float(val)
    return out


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.2))
    x = np.arange(len(names))
    succ = [results[n]["all"]["success_rate"] for n in names]
    coll = [results[n]["all"]["collision_rate"] for n in names]
    ax.bar(x - 0.18, succ, 0.36, label="success")
    ax.bar(x + 0.18, coll, 0.36, label="collision")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.axhline(0.9, ls=":", c="k", lw=0.8)
    ax.set_title(f"{results[names[0]]['all']['n']} episodes, straight line blocked where possible")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_main(argv: list[str] | None = None) -> int:
    import sys

    if "--suite" in (sys.argv[1:] if argv is None else argv):
        from sakura_nexus.experiments.suite import suite_main
        return suite_main(argv)
    p = argparse.ArgumentParser(prog="sakura-nexus evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000,
                   help="first layout seed (training layouts are low seeds)")
    p.add_argument("--controllers", default=",".join(CONTROLLERS))
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the shipped models/)")
    p.add_argument("--standin", action="store_true", help="kinematic cell + perfect stand-in model")
    p.add_argument("--max-time", type=float, default=60.0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="MPPIConfig override, repeatable (e.g. --set horizon=30 --set w_memory=0.5)")
    p.add_argument("--map-clearance", type=float, default=None, help="cost-to-go inflation radius [m]")
    p.add_argument("--out", default=os.environ.get("SAKURA_EVAL_OUT", "out/eval/control.json"))
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--diagnose", action="store_true", help="only the collision-head diagnostics (JSON)")
    a = p.parse_args(argv)
    if a.diagnose:
        print(json.dumps(model_diagnostics(a.checkpoint), indent=1))
        return 0
    cell_factory, mpc_factory, info = (_standin_setup() if a.standin
                                         else _real_setup(a.checkpoint, a.map_clearance))
    cfg = dataclasses.replace(MPPIConfig(members=1), **parse_overrides(a.set))
    limits = SafetyLimits(control_period=0.1)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, t_all = {}, time.time()
    for name in a.controllers.split(","):
        if name not in CONTROLLERS:
            raise SystemExit(f"unknown controller {name!r}; choose from {CONTROLLERS}")
        if name == "go_to_goal":
            fac = lambda cell: GoToGoalController()  # noqa: E731
        elif name in ("kinematic_mpc", "learned_mpc"):
            fac = _prior_factory(name, cfg, limits)
        else:
            fac = mpc_factory(cfg, name == "mpc_map")
        t0 = time.time()

        def progress(e, name=name):
            if a.verbose:
                print(f"  {name} ep {e['episode']:3d} blocked={e['blocked']!s:5} success={e['success']!s:5} "
                      f"collided={e['collided']!s:5} t={e['time']:5.1f}s", flush=True)

        r = evaluate(a.episodes, a.seed, fac, cell_factory, max_time=a.max_time, limits=limits,
                     progress=progress)
        r["wall_s"] = round(time.time() - t0, 1)
        pm = [e["plan_ms_p50"] for e in r["episodes"] if e["plan_ms_p50"] is not None]
        r["plan_ms_p50_median"] = float(np.median(pm)) if pm else None
        results[name] = r
        s = r["all"]
        print(f"{name:11s} success {s['success_rate']:.2f}  collisions {s['collisions']}/{s['n']}  "
              f"timeouts {s['timeouts']}  "
              f"blocked-only success {r['blocked'].get('success_rate', math.nan):.2f}  "
              f"({r['wall_s']} s)", flush=True)
    doc = {"info": info, "mppi_config": dataclasses.asdict(cfg), "episodes": a.episodes, "seed": a.seed,
           "standin": a.standin, "wall_s": round(time.time() - t_all, 1), "results": results}
    out.write_text(json.dumps(doc, indent=1))
    plot(results, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(evaluate_main())
