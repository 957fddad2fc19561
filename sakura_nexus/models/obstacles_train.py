"""Teach :class:`~sakura_nexus.models.obstacles.RangeHead` in the MuJoCo cell.

Frames from random free poses (clearance down to touching distance, so near misses are in the data)
in layouts ``seeds`` (0..399 by default), labelled with the cell's true free ranges. The evaluation
suite's held-out layouts (docs/control.md, "Evaluation suite") never appear here.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .obstacles import RangeConfig, RangeHead, true_ranges

__all__ = ["collect_range_data", "fit_range_head"]


def _driving_poses(cell, rng, n: int) -> list:
    """``n`` poses along a kinematic-MPC drive to a random goal in ``cell`` (the poses a robot really
    sees from: near walls, at grazing angles, turning), with the static map."""
    from sakura_nexus.control.episode import run_episode, sample_task
    from sakura_nexus.control.learned import KinematicMPC
    from sakura_nexus.control.planner import MPPIConfig

    try:
        start, goal, _ = sample_task(cell, rng, 2.0)
    except RuntimeError:
        return []
    ctrl = KinematicMPC(MPPIConfig(members=1, seed=int(rng.integers(1 << 30))), (cell.layout, cell.size[0]))
    path = run_episode(cell, ctrl, start, goal, max_time=20.0).path
    if len(path) < 2:
        return []
    return [tuple(p) for p in path[rng.choice(len(path), min(n, len(path)), replace=False)]]


def collect_range_data(seeds, per_layout: int = 50, cfg: RangeConfig | None = None, seed: int = 0,
                       progress: bool = True, driving_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 64, 64, 3) uint8, ranges (N, bins) float32) from ``per_layout`` poses per layout:
    ``driving_fraction`` of them along a drive, the rest uniformly random free poses."""
    from sakura_nexus.sim import CellConfig, FactoryCell

    cfg = cfg or RangeConfig()
    rng = np.random.default_rng(seed)
    imgs, rs = [], []
    cell = None
    it = list(seeds)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="range data", unit="layout", mininterval=2)
    for s in it:
        if cell is None:
            cell = FactoryCell(CellConfig(seed=int(s)), camera_width=64, camera_height=64)
        else:
            cell.reset(seed=int(s))
        poses = _driving_poses(cell, rng, int(per_layout * driving_fraction)) if driving_fraction > 0 else []
        while len(poses) < per_layout:
            try:
                poses.append(cell.sample_free_pose(rng, float(rng.choice([0.0, 0.05, 0.2, 0.5]))))
            except RuntimeError:                     # a tight layout: no pose that far from everything
                poses.append(cell.sample_free_pose(rng, 0.0))
        for x, y, yaw in poses:
            cell.set_pose(x, y, yaw)
            imgs.append(cell.render(64, 64).copy())
            rs.append(true_ranges(cell.layout, cell.size[0], (x, y, yaw), cfg))
    if cell is not None:
        cell.close()
    return np.asarray(imgs, dtype=np.uint8), np.asarray(rs, dtype=np.float32)


def _batch(images: np.ndarray, idx) -> torch.Tensor:
    return torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float() / 255.0


def fit_range_head(images: np.ndarray, ranges: np.ndarray, cfg: RangeConfig | None = None, epochs: int = 24,
                   batch: int = 128, lr: float = 3e-3, seed: int = 0, val_fraction: float = 0.1,
                   progress: bool = True) -> tuple[RangeHead, dict]:
    """Train on log-range (Huber); each head sees its own bootstrap weights on the batch. Returns the
    head and validation metrics (absolute range error, near-obstacle recall, false alarms)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = cfg or RangeConfig()
    n = len(images)
    perm = rng.permutation(n)
    nv = max(1, int(n * val_fraction))
    vi, ti = perm[:nv], perm[nv:]
    y_all = torch.log(torch.as_tensor(ranges).clamp(cfg.min_range, cfg.max_range))
    head = RangeHead(cfg)
    m = head.members
    boot = torch.as_tensor(rng.poisson(1.0, (n, m)), dtype=torch.float32)     # online bootstrap weights
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    per_epoch = max(1, len(ti) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch)
    t0 = time.time()
    it = range(epochs * per_epoch)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="range head", unit="step", mininterval=2)
    for k in it:
        if k % per_epoch == 0:
            order = rng.permutation(ti)
        j = order[(k % per_epoch) * batch:(k % per_epoch + 1) * batch]
        x = _batch(images, j)
        if rng.random() < 0.5:                                                 # mirror: ranges mirror too
            x, y = x.flip(-1), y_all[j].flip(-1)
        else:
            y = y_all[j]
        pred = head(x)                                                         # (M, B, bins)
        loss_el = torch.nn.functional.huber_loss(pred, y[None].expand_as(pred), delta=0.3, reduction="none")
        w = boot[j].T[:, :, None]                                              # (M, B, 1)
        loss = (loss_el * w).sum() / (w.sum() * cfg.bins + 1e-6)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    head.eval()
    preds, stds = [], []
    with torch.inference_mode():
        for a in range(0, nv, 512):
            out = head(_batch(images, vi[a:a + 512]))
            preds.append(torch.exp(out.mean(0)).clamp(cfg.min_range, cfg.max_range).numpy())
            stds.append(out.std(0).mean(1).numpy())
    pred_r, std = np.concatenate(preds), np.concatenate(stds)
    true_r = ranges[vi]
    err = np.abs(pred_r - true_r)
    near = true_r < 1.0
    # uncertainty scale: familiar scenes (validation) at p95 -> 0.3, below the safety layer's
    # uncertainty_slow (0.5)
    head.sigma_scale.fill_(0.3 / max(float(np.percentile(std, 95)), 1e-6))
    metrics = {"n_train": int(len(ti)), "n_val": int(nv), "epochs": epochs, "train_s": round(time.time() - t0, 1),
               "abs_err_median_m": float(np.median(err)), "abs_err_p90_m": float(np.percentile(err, 90)),
               "abs_err_median_m_true_lt_1m": float(np.median(err[near])) if near.any() else None,
               "detect_lt_1m_recall": float((pred_r[near] < 1.2).mean()) if near.any() else None,
               "false_near_rate": float((pred_r[true_r > 2.0] < 1.0).mean()) if (true_r > 2.0).any() else None,
               "sigma_scale": float(head.sigma_scale), "val_std_p95_raw": float(np.percentile(std, 95))}
    return head, metrics


def main(argv=None) -> int:
    import argparse
    import json
    import os

    from .obstacles import save_range_head

    p = argparse.ArgumentParser(prog="sakura-nexus train-range-head",
                                description="teach the camera's free-range head in the MuJoCo cell")
    p.add_argument("--layouts", type=int, default=400, help="training layouts 0..N-1")
    p.add_argument("--per-layout", type=int, default=50)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--cache", default="out/range_data.npz", help="frames cache (reused if present)")
    p.add_argument("--out", default="models/range_head.bin")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    if os.path.exists(a.cache):
        d = np.load(a.cache)
        imgs, rs = d["images"], d["ranges"]
    else:
        imgs, rs = collect_range_data(range(a.layouts), a.per_layout)
        os.makedirs(os.path.dirname(a.cache) or ".", exist_ok=True)
        np.savez(a.cache, images=imgs, ranges=rs)
    head, metrics = fit_range_head(imgs, rs, epochs=a.epochs)
    metrics["layouts"] = f"0..{a.layouts - 1}"
    sha = save_range_head(head, a.out, metrics)
    record_in_manifest(a.out, sha, head, metrics)
    print(json.dumps(metrics | {"sha256": sha, "file": a.out}, indent=1))
    return 0


def record_in_manifest(path, sha256: str, head: RangeHead, metrics: dict) -> None:
    """Add the head (file, sha256, config, metrics, revision) to the ``manifest.json`` beside it, if
    there is one: the nodes then verify the file against it like the other model files."""
    import json
    import pathlib

    from sakura_nexus.models.serialization import atomic_write

    from .training import git_revision

    path = pathlib.Path(path)
    man = path.parent / "manifest.json"
    if not man.is_file():
        return
    doc = json.loads(man.read_text())
    doc["range_head"] = {"file": path.name, "sha256": sha256, "bytes": path.stat().st_size,
                         "config": head.config(), "metrics": metrics, "produced_by": "sakura-nexus train-range-head",
                         "git_revision": git_revision(), "torch_version": torch.__version__}
    atomic_write(man, (json.dumps(doc, indent=2) + "\n").encode())


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
