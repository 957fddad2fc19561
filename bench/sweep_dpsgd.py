"""Exploration of the fleet experiment's record-level DP-SGD setting (fedbuff_dpsgd only), on VALIDATION.

Collects (or loads from the experiment's own npz cache) the fleet data once, then runs only
``_Runner.fedbuff(dpsgd=True)`` for each configuration ``TRAINABLE:CLIP:LR`` given on the command line
(the rest of ``ExperimentConfig`` is the experiment's default, so the noise multiplier is again the
smallest keeping epsilon <= 8 at delta = 1e-5 over the full horizon). It prints, per configuration,
the validation error of the selected round (the selection criterion), the round and epsilon. The test
figure is written to the JSON lines file for the record but not printed: choose on validation only.

    OMP_NUM_THREADS=1 python bench/sweep_dpsgd.py --cache out/fleet_sweep \\
        dynamics_out_scale:0.2:1e-2 dynamics_out_scale_tied:0.1:3e-2 [--log out/fleet_sweep/sweep.jsonl]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np


def parse_config(s: str) -> tuple[str, float, float, float | None]:
    """TRAINABLE:CLIP:LR[:Z]; Z (a fixed noise multiplier, epsilon whatever it gives) only for capacity
    checks: a configuration is a candidate only without it (epsilon <= 8 from the accountant)."""
    trainable, clip, lr, *z = s.split(":")
    return trainable, float(clip), float(lr), (float(z[0]) if z else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="TRAINABLE:CLIP:LR[:Z]")
    p.add_argument("--cache", default="out/fleet_sweep", help="data cache directory (the experiment's npz)")
    p.add_argument("--log", help="JSON lines file (default CACHE/sweep.jsonl)")
    a = p.parse_args(argv)

    import torch

    from sakura_nexus.experiments.fleet import PRIMARY, ExperimentConfig, _Runner, build_data
    from sakura_nexus.models.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    ckpt = load_checkpoint()
    base_cfg = ExperimentConfig()
    t0 = time.time()
    data = build_data(base_cfg, ckpt.encoder, ckpt.manifest.get("encoder", {}).get("sha256", ""), a.cache)
    print(f"data: {'cached' if data['cached'] else 'collected'} in {time.time() - t0:.1f} s", flush=True)
    log = a.log or os.path.join(a.cache, "sweep.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    for s in a.configs:
        trainable, clip, lr, z = parse_config(s)
        cfg = dataclasses.replace(base_cfg, dpsgd_trainable=trainable, dpsgd_clip=clip, dpsgd_lr=lr, dpsgd_noise=z)
        torch.manual_seed(cfg.seed)
        runner = _Runner(cfg, ckpt.world_model, data)
        t = time.time()
        r = runner.fedbuff(dpsgd=True)
        wall = time.time() - t
        val = r["selected_val"][PRIMARY]
        n_coef = trained_coordinates(cfg, ckpt.world_model)
        row = {"trainable": trainable, "coordinates": n_coef, "clip": clip, "lr": lr,
               "val_selected": val, "selected_round": r["selected_round"],
               "val_last": r["val_curve"][PRIMARY][-1], "epsilon": r["record_epsilon"],
               "noise_multiplier": r["dpsgd_noise_multiplier"],
               "grad_norm_median_last": r["dpsgd_grad_norm_median_last"], "mia_auc": r["mia_auc"],
               "test_selected_not_for_selection": r["final"][PRIMARY], "wall_s": round(wall, 1)}
        with open(log, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{trainable:32s} n={n_coef:4d} C={clip:<6g} lr={lr:<7g} val={val:.5f} "
              f"(round {r['selected_round']}, last {row['val_last']:.5f}) eps={r['record_epsilon']:.3f} "
              f"z={r['dpsgd_noise_multiplier']:.3f} |g|med={np.median(row['grad_norm_median_last']):.3g} "
              f"{wall:.0f} s", flush=True)
    return 0


def trained_coordinates(cfg, model) -> int:
    """How many coordinates DP-SGD trains for ``cfg.dpsgd_trainable`` (subspace coefficients or weights)."""
    import copy

    from sakura_nexus.models.online import OnlineLearner

    L = OnlineLearner(copy.deepcopy(model), trainable=cfg.dpsgd_trainable, dp_noise_multiplier=1.0,
                      dp_clip_norm=cfg.dpsgd_clip)
    if L._coef is not None:
        return int(L._coef.numel())
    return int(sum(p.numel() if m is None else int(m.sum()) for p, m in zip(L._params, L._masks, strict=True)))


if __name__ == "__main__":
    sys.exit(main())
