"""``sakura-nexus evaluate``: closed-loop MPC vs go-to-goal in the sim, ROS-free.

Runs :func:`evaluate` over ``--episodes`` randomised start/goal pairs (straight line blocked by an
obstacle wherever possible, a new layout per episode) for each controller and writes
``out/eval/control.json`` + ``control.png``:

* ``go_to_goal``  the proportional baseline (no model),
* ``mpc``         camera -> encoder -> WorldModel -> MPPI, map-free (straight-line goal term),
* ``mpc_map``     the same, with the geodesic cost-to-go of the known cell map as goal term.

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

from .episode import GoToGoalController, LatentMPCController, StateMPCController, evaluate
from .planner import MPPIConfig
from .safety import SafetyLimits

CONTROLLERS = ("go_to_goal", "mpc", "mpc_map")


def _real_setup(checkpoint: str | None):
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
            return LatentMPCController(enc, wm, cfg, cell_map=cmap)
        return make

    info = {"checkpoint": str(checkpoint or "models/"),
            "manifest_world_model": ck.manifest.get("world_model", {}),
            "manifest_git": ck.manifest.get("git_revision")}
    return cell_factory, mpc_factory, info


def _standin_setup():
    from .standin import KinematicCell, StandInWorldModel

    def mpc_factory(cfg: MPPIConfig, use_map: bool):
        def make(cell):
            wm = StandInWorldModel(cell.layout, size=cell.size[0])
            return StateMPCController(wm, cfg, cell_map=(cell.layout, cell.size[0]) if use_map else None)
        return make

    return (lambda s: KinematicCell(seed=s)), mpc_factory, {"checkpoint": "stand-in (perfect model)"}


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
    p = argparse.ArgumentParser(prog="sakura-nexus evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000,
                   help="first layout seed (training layouts are low seeds)")
    p.add_argument("--controllers", default=",".join(CONTROLLERS))
    p.add_argument("--checkpoint", default=None, help="checkpoint dir (default: the shipped models/)")
    p.add_argument("--standin", action="store_true", help="kinematic cell + perfect stand-in model")
    p.add_argument("--max-time", type=float, default=60.0)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--horizon", type=int, default=None)
    p.add_argument("--members", type=int, default=None)
    p.add_argument("--w-memory", type=float, default=None)
    p.add_argument("--out", default=os.environ.get("SAKURA_EVAL_OUT", "out/eval/control.json"))
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args(argv)
    cell_factory, mpc_factory, info = _standin_setup() if a.standin else _real_setup(a.checkpoint)
    over = {k: v for k, v in (("samples", a.samples), ("horizon", a.horizon), ("members", a.members),
                              ("w_memory", a.w_memory)) if v is not None}
    cfg = dataclasses.replace(MPPIConfig(), **over)
    limits = SafetyLimits(control_period=0.1)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results, t_all = {}, time.time()
    for name in a.controllers.split(","):
        if name not in CONTROLLERS:
            raise SystemExit(f"unknown controller {name!r}; choose from {CONTROLLERS}")
        if name == "go_to_goal":
            fac = lambda cell: GoToGoalController()  # noqa: E731
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
