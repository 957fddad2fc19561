"""Offline training: collect sim data, train encoder + world model, evaluate, write the checkpoint.

``sakura-nexus train`` -> :func:`train_main`. Two stages:

A. joint: CNN encoder + world model on short image sequences (``joint_seq`` steps): teacher-forced
   one-step + open-loop multi-step latent prediction against stop-gradient targets, collision BCE,
   a 16x16 image reconstruction from the learned latent and VICReg variance/covariance terms
   (the last two keep the stop-gradient objective from collapsing);
B. dynamics: the CNN is frozen, every frame is embedded once, and the world model continues on
   longer sequences (``wm_seq`` steps of open-loop rollout) at MLP cost only.

Deterministic for a given config and thread count (``threads``, default 1): same checkpoint bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import ENCODER_FILE, MANIFEST_FILE, WORLD_MODEL_FILE, Checkpoint
from .data import Trajectories, collect
from .encoder import ENCODER_ID, ConvEncoder, encoder_to_bytes, images_to_tensor
from .evaluation import embed_frames, evaluate, uncertainty_on_off_distribution
from .losses import error_scale, learned_part, sequence_losses, variance_covariance
from .serialization import atomic_write, sha256_hex
from .world_model import POSE_DIMS, WORLD_MODEL_ID, WorldModel, WorldModelConfig, world_model_to_bytes

RECON_SIZE = 16
_FIELDS = ("images", "proprio", "actions", "collided", "layout_seeds", "friction")


@dataclass
class TrainConfig:
    seed: int = 0
    data_seed: int = 0
    train_layouts: tuple = tuple(range(10))
    test_layouts: tuple = (100, 101, 102)
    episodes_per_layout: int = 12
    test_episodes_per_layout: int = 4
    steps_per_episode: int = 100
    workers: int = 2  # data-collection processes (results do not depend on it)
    threads: int = 1  # torch threads for training (results do depend on it)
    joint_iters: int = 500
    joint_batch: int = 24
    joint_seq: int = 5
    wm_iters: int = 2500
    wm_batch: int = 64
    wm_seq: int = 10
    lr: float = 1e-3
    wm_lr: float = 1e-3
    weight_decay: float = 1e-5
    grad_clip: float = 10.0
    w_collision: float = 3.0
    w_recon: float = 5.0
    w_var: float = 1.0
    w_cov: float = 0.04
    error_scale_floor: float = 0.003
    learned_error_scale: float = 1.0  # fixed error normaliser of the learned block; 0 = adaptive spread
    pred_grad_to_encoder: float = 1.0  # scale of the dynamics-loss gradient reaching the encoders
    var_target: float = 0.5  # VICReg std hinge of the learned block
    cache_dir: str = ""  # reuse collected data sets across runs (keyed by the data settings)
    eval_horizon: int = 10
    adaptation_minutes: float = 5.0  # online-adaptation experiment after training (0 = skip)
    adaptation_friction: float = 0.2
    world_model: dict = field(default_factory=dict)  # WorldModelConfig overrides
    out_dir: str = "out/train"
    models_dir: str = ""  # "" = the repository's models/
    progress: bool = True

    @staticmethod
    def quick(**overrides) -> TrainConfig:
        """A tiny configuration for tests and CI smoke runs (~30 s)."""
        base = dict(train_layouts=(0, 1), test_layouts=(100,), episodes_per_layout=2,
                    test_episodes_per_layout=1, steps_per_episode=30, workers=1, joint_iters=15,
                    joint_batch=8, joint_seq=4, wm_iters=40, wm_batch=16, wm_seq=8, eval_horizon=5,
                    adaptation_minutes=0.0)
        return TrainConfig(**{**base, **overrides})


class ReconDecoder(nn.Module):
    """Training-only decoder: learned latent -> 16x16 RGB thumbnail (grounds the latent in pixels)."""

    def __init__(self, d_in: int, size: int = RECON_SIZE):
        super().__init__()
        self.size = size
        self.net = nn.Sequential(nn.Linear(d_in, 256), nn.ReLU(), nn.Linear(256, 3 * size * size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def thumbnails(images: np.ndarray, size: int = RECON_SIZE) -> np.ndarray:
    """uint8 (..., H, W, 3) -> float32 (..., 3*size*size) in [0, 1] (box-filter downsample)."""
    lead, f = images.shape[:-3], images.shape[-3] // size
    flat = images.reshape(-1, size, f, size, f, 3)
    out = np.empty((flat.shape[0], 3 * size * size), np.float32)
    for i in range(0, len(flat), 2048):
        small = flat[i:i + 2048].mean((2, 4), dtype=np.float32) / 255.0  # (n, size, size, 3)
        out[i:i + 2048] = small.transpose(0, 3, 1, 2).reshape(-1, 3 * size * size)
    return out.reshape(*lead, -1)


def git_revision(root: pathlib.Path | None = None) -> str:
    root = root or pathlib.Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def default_models_dir() -> pathlib.Path:
    from sakura_nexus.paths import source_root

    root = source_root()
    return (root if root is not None else pathlib.Path.cwd()) / "models"


class _Sampler:
    """Random (episode, start) windows of ``seq`` transitions."""

    def __init__(self, data: Trajectories, rng: np.random.Generator):
        self.data, self.rng = data, rng
        self.n, self.steps = data.actions.shape[:2]

    def __call__(self, batch: int, seq: int) -> tuple[np.ndarray, np.ndarray]:
        ep = self.rng.integers(0, self.n, batch)
        start = self.rng.integers(0, self.steps - seq + 1, batch)
        return ep[:, None], start[:, None] + np.arange(seq + 1)[None]


class _Trainer:
    """``init``: a Checkpoint to fine-tune (its encoder, world model and error scale) instead of
    fresh weights; the reconstruction decoder is training-only and always starts fresh."""

    def __init__(self, cfg: TrainConfig, data: Trajectories, init: Checkpoint | None = None):
        self.cfg, self.data = cfg, data
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.encoder = init.encoder if init is not None else ConvEncoder()
        self.model = init.world_model if init is not None else WorldModel(WorldModelConfig(**cfg.world_model))
        self.decoder = ReconDecoder(self.model.config.latent_dim - POSE_DIMS)
        self.sampler = _Sampler(data, self.rng)
        self.thumbs = torch.from_numpy(thumbnails(data.images))
        self.proprio = torch.from_numpy(data.proprio)
        self.actions = torch.from_numpy(data.actions)
        self.collided = torch.from_numpy(data.collided.astype(np.float32))
        self.history: list[dict] = []
        self._scale_init = init is not None
        for prm in [*self.encoder.parameters(), *self.model.parameters()]:
            prm.requires_grad_(True)

    def _update_error_scale(self, z: torch.Tensor) -> None:
        d = error_scale(z, self.cfg.error_scale_floor)
        if self.cfg.learned_error_scale:
            d[POSE_DIMS:] = self.cfg.learned_error_scale
        if not self._scale_init:
            self.model.error_scale.copy_(d)
            self._scale_init = True
        else:
            self.model.error_scale.mul_(0.99).add_(0.01 * d)

    def _losses(self, z: torch.Tensor, ep: np.ndarray, ts: np.ndarray) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        self._update_error_scale(z)
        acts, col = self.actions[ep, ts[:, :-1]], self.collided[ep, ts[:, :-1]]
        k = self.model.config.ensemble
        boot = torch.poisson(torch.ones(k, z.shape[0]), generator=self.gen)
        beta = cfg.pred_grad_to_encoder
        z_dyn = z if beta == 1.0 else z * beta + z.detach() * (1.0 - beta)
        parts = sequence_losses(self.model, z_dyn, acts, col, boot + 1e-3)
        learned = learned_part(z)
        parts["recon"] = F.mse_loss(self.decoder(learned), self.thumbs[ep, ts])
        parts["var"], parts["cov"] = variance_covariance(learned.reshape(-1, learned.shape[-1]),
                                                         cfg.var_target)
        total = (parts["one_step"] + parts["multi_step"] + cfg.w_collision * parts["collision"]
                 + cfg.w_recon * parts["recon"] + cfg.w_var * parts["var"] + cfg.w_cov * parts["cov"])
        return total, parts

    def _step(self, opt, sched, params, total, parts, stage: str, it: int) -> None:
        opt.zero_grad(set_to_none=True)
        total.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        opt.step()
        sched.step()
        self.history.append({"stage": stage, "iter": it, "total": float(total.detach()),
                             "grad_norm": float(gn), **{k: float(v.detach()) for k, v in parts.items()}})

    def _optimizer(self, params: list, lr: float, iters: int):
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(i, iters) / max(iters, 1))))
        return opt, sched

    def stage_joint(self, bar) -> None:
        cfg = self.cfg
        params = [*self.encoder.parameters(), *self.model.parameters(), *self.decoder.parameters()]
        opt, sched = self._optimizer(params, cfg.lr, cfg.joint_iters)
        self.encoder.train()
        self.model.train()
        for it in range(cfg.joint_iters):
            ep, ts = self.sampler(cfg.joint_batch, cfg.joint_seq)
            imgs = images_to_tensor(self.data.images[ep, ts])
            emb = self.encoder(imgs).view(*ts.shape, -1)
            z = self.model.encode(emb, self.proprio[ep, ts])
            total, parts = self._losses(z, ep, ts)
            self._step(opt, sched, params, total, parts, "joint", it)
            bar.update(1)
            bar.set_postfix(stage="joint", loss=f"{float(total.detach()):.3f}")

    def stage_dynamics(self, bar) -> None:
        cfg = self.cfg
        self.encoder.eval()
        emb_all = embed_frames(self.encoder, self.data.images)
        params = [*self.model.parameters(), *self.decoder.parameters()]
        opt, sched = self._optimizer(params, cfg.wm_lr, cfg.wm_iters)
        self.model.train()
        for it in range(cfg.wm_iters):
            ep, ts = self.sampler(cfg.wm_batch, cfg.wm_seq)
            z = self.model.encode(emb_all[ep, ts], self.proprio[ep, ts])
            total, parts = self._losses(z, ep, ts)
            self._step(opt, sched, params, total, parts, "dynamics", it)
            bar.update(1)
            if it % 20 == 0:
                bar.set_postfix(stage="dynamics", loss=f"{float(total.detach()):.3f}")
        self.model.eval()


def run_stages(trainer, cfg, timer):
    """The joint (encoder + model) stage, then the dynamics stage, under one progress bar; returns the
    trained (encoder, world model) in eval mode. Shared by sim training and ``train --bag``."""
    with _progress_bar(cfg.joint_iters + cfg.wm_iters, cfg.progress) as bar:
        with timer("joint"):
            trainer.stage_joint(bar)
        with timer("dynamics"):
            trainer.stage_dynamics(bar)
    return trainer.encoder.eval(), trainer.model.eval()


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="it", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def collect_datasets(cfg: TrainConfig) -> tuple[Trajectories, Trajectories]:
    if cfg.cache_dir:
        key = json.dumps([cfg.data_seed, list(cfg.train_layouts), list(cfg.test_layouts),
                          cfg.episodes_per_layout, cfg.test_episodes_per_layout, cfg.steps_per_episode])
        path = pathlib.Path(cfg.cache_dir) / f"data-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
        if path.is_file():
            with np.load(path) as f:
                return (Trajectories(*(f[f"train_{k}"] for k in _FIELDS)),
                        Trajectories(*(f[f"test_{k}"] for k in _FIELDS)))
        train, test = collect_datasets(replace(cfg, cache_dir=""))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f"{n}_{k}": getattr(d, k) for n, d in (("train", train), ("test", test))
                          for k in _FIELDS})
        return train, test
    train = collect(list(cfg.train_layouts), cfg.episodes_per_layout, cfg.steps_per_episode, cfg.data_seed,
                    workers=cfg.workers, progress=cfg.progress)
    test = collect(list(cfg.test_layouts), cfg.test_episodes_per_layout, cfg.steps_per_episode,
                   cfg.data_seed + 1, workers=cfg.workers, progress=cfg.progress)
    return train, test


def plot_losses(history: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["total", "one_step", "multi_step", "collision", "recon", "var"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    n = len(history)
    win = max(1, n // 100)
    for k in keys:
        y = np.array([h[k] for h in history])
        if len(y) >= win:
            y = np.convolve(y, np.ones(win) / win, mode="valid")
        ax.plot(np.arange(len(y)) + win - 1, y, label=k)
    joint = sum(1 for h in history if h["stage"] == "joint")
    ax.axvline(joint, color="k", ls="--", lw=0.8)
    ax.text(joint, 0.98, " CNN frozen from here", transform=ax.get_xaxis_transform(), fontsize=8, va="top")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (moving average)")
    ax.set_title("encoder + world-model training")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class _Timer:
    """Wall and CPU seconds per stage (CPU includes finished child processes: data collection)."""

    def __init__(self):
        self.timings: dict[str, dict[str, float]] = {}

    @staticmethod
    def _now() -> tuple[float, float]:
        t = os.times()
        return time.perf_counter(), t.user + t.system + t.children_user + t.children_system

    @contextlib.contextmanager
    def __call__(self, name: str):
        w0, c0 = self._now()
        yield
        w1, c1 = self._now()
        self.timings[name] = {"wall": round(w1 - w0, 1), "cpu": round(c1 - c0, 1)}

    def total(self) -> dict[str, float]:
        return {k: round(sum(t[k] for t in self.timings.values()), 1) for k in ("wall", "cpu")}


def train(config: TrainConfig | None = None) -> dict:
    """Collect data, train, evaluate; write checkpoint + manifest (models_dir) and metrics + plot
    (out_dir). Returns the metrics dict (also in ``metrics.json``)."""
    cfg = config or TrainConfig()
    timer = _Timer()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with timer("collect"):
            train_data, test_data = collect_datasets(cfg)
        trainer = _Trainer(cfg, train_data)
        enc, wm = run_stages(trainer, cfg, timer)
        with timer("evaluate"):
            metrics = evaluate(enc, wm, test_data, cfg.eval_horizon, reference=train_data)
            on_train = evaluate(enc, wm, train_data, cfg.eval_horizon)
            metrics["train_set_one_step_fvu"] = on_train["one_step_fvu"]
            metrics["uncertainty_off_distribution"] = uncertainty_on_off_distribution(enc, wm, test_data)
        if cfg.adaptation_minutes > 0:
            from sakura_nexus.experiments.adaptation import run_adaptation

            with timer("adaptation"):
                out = str(pathlib.Path(cfg.out_dir) / "adaptation")
                result = run_adaptation(Checkpoint(enc, wm, {}), out, cfg.adaptation_friction,
                                        cfg.adaptation_minutes, seed=cfg.seed, progress=cfg.progress)
            metrics["online_adaptation"] = {k: v for k, v in result.items() if k not in ("evals", "learner")}
    finally:
        torch.set_num_threads(old_threads)
    metrics["timing_s"] = {**timer.timings, "total": timer.total()}
    metrics["final_losses"] = {k: float(np.mean([h[k] for h in trainer.history[-50:]]))
                               for k in ("total", "one_step", "multi_step", "collision", "recon", "var")}
    write_outputs(cfg, enc, wm, trainer.history, metrics, train_data, test_data)
    return metrics


def model_payloads(enc: ConvEncoder, wm: WorldModel) -> tuple[bytes, bytes, dict]:
    """The two payload files and their manifest entries ("encoder", "world_model")."""
    enc_bytes = encoder_to_bytes(enc, version=0)
    wm_bytes = world_model_to_bytes(wm, version=0)
    entries = {
        "encoder": {"file": ENCODER_FILE, "sha256": sha256_hex(enc_bytes), "bytes": len(enc_bytes),
                    "encoder_id": ENCODER_ID, "version": 0, "config": enc.config,
                    "parameters": sum(p.numel() for p in enc.parameters())},
        "world_model": {"file": WORLD_MODEL_FILE, "sha256": sha256_hex(wm_bytes), "bytes": len(wm_bytes),
                        "world_model_id": WORLD_MODEL_ID, "version": 0, "config": asdict(wm.config),
                        "parameters": wm.num_parameters()},
    }
    return enc_bytes, wm_bytes, entries


def write_outputs(cfg: TrainConfig, enc: ConvEncoder, wm: WorldModel, history: list[dict], metrics: dict,
                  train_data: Trajectories, test_data: Trajectories) -> pathlib.Path:
    models = pathlib.Path(cfg.models_dir) if cfg.models_dir else default_models_dir()
    out = pathlib.Path(cfg.out_dir)
    models.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    enc_bytes, wm_bytes, entries = model_payloads(enc, wm)
    atomic_write(models / ENCODER_FILE, enc_bytes)
    atomic_write(models / WORLD_MODEL_FILE, wm_bytes)
    manifest = {
        "format": 1,
        "produced_by": "sakura-nexus train" + (" (quick)" if cfg.joint_iters < 100 else ""),
        "git_revision": git_revision(),
        "torch_version": torch.__version__,
        "seed": cfg.seed,
        **entries,
        "data": {"data_seed": cfg.data_seed, "train_layout_seeds": list(cfg.train_layouts),
                 "test_layout_seeds": list(cfg.test_layouts), "steps_per_episode": cfg.steps_per_episode,
                 "model_dt": wm.config.model_dt,
                 "train_episodes": int(train_data.actions.shape[0]),
                 "test_episodes": int(test_data.actions.shape[0]),
                 "train_transitions": train_data.n_transitions, "test_transitions": test_data.n_transitions,
                 "train_collision_rate": float(train_data.collided.mean()),
                 "train_floor_friction": sorted({round(float(f), 3) for f in train_data.friction}),
                 "camera": [int(train_data.images.shape[-2]), int(train_data.images.shape[-3])]},
        "train_config": {k: v for k, v in asdict(cfg).items()
                         if k not in ("out_dir", "models_dir", "progress", "cache_dir")},
        "reproduce": "sakura-nexus train" + ("" if cfg.threads == 1 else f" --threads {cfg.threads}"),
        "metrics": metrics,
    }
    (models / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    plot_losses(history, out / "loss.png")
    return models


def train_main(argv: list[str] | None = None) -> int:
    """CLI: ``sakura-nexus train [--quick] [--seed N] [--out DIR] [--models DIR] ...``; with
    ``--bag PATH...`` it learns from recorded bags instead (:mod:`sakura_nexus.bags.train`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--bag" in argv or any(a.startswith("--bag=") for a in argv):
        from sakura_nexus.bags.train import bag_train_main

        return bag_train_main(argv)
    p = argparse.ArgumentParser(prog="sakura-nexus train", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny run for tests / smoke checks (~30 s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (weights, batches)")
    p.add_argument("--data-seed", type=int, default=0, help="exploration seed of the collected episodes")
    p.add_argument("--threads", type=int, default=1, help="torch threads (results depend on it)")
    p.add_argument("--workers", type=int, default=None,
                   help="data-collection processes (default 2; 1 in --quick)")
    p.add_argument("--out", default="out/train", help="directory for metrics.json, loss.png, history.json")
    p.add_argument("--models", default="", help="checkpoint directory (default: the repository's models/)")
    p.add_argument("--joint-iters", type=int, default=None)
    p.add_argument("--wm-iters", type=int, default=None)
    p.add_argument("--adaptation-minutes", type=float, default=None,
                   help="sim minutes of the online-adaptation run after training (0 = skip; default 5)")
    p.add_argument("--data-cache", default="", help="directory to cache/reuse the collected data sets")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--bag", nargs="+", metavar="PATH",
                   help="learn from rosbag2 bags instead of the sim (see `sakura-nexus train --bag X --help`)")
    a = p.parse_args(argv)
    over = {"seed": a.seed, "data_seed": a.data_seed, "threads": a.threads, "out_dir": a.out,
            "models_dir": a.models, "progress": not a.no_progress, "cache_dir": a.data_cache}
    if a.workers is not None:
        over["workers"] = a.workers
    if a.joint_iters is not None:
        over["joint_iters"] = a.joint_iters
    if a.wm_iters is not None:
        over["wm_iters"] = a.wm_iters
    if a.adaptation_minutes is not None:
        over["adaptation_minutes"] = a.adaptation_minutes
    cfg = TrainConfig.quick(**over) if a.quick else replace(TrainConfig(), **over)
    if a.quick and not a.models:
        cfg = replace(cfg, models_dir=os.path.join(a.out, "models"))
    metrics = train(cfg)
    fvu = metrics["one_step_fvu"]["all"]
    horizon = f"{cfg.eval_horizon}_step_fvu"
    print(json.dumps({"one_step_fvu": fvu, horizon: metrics[horizon]["all"],
                      "effective_rank": metrics["effective_rank"]["latent"],
                      "collision_f1": metrics["collision"]["head"]["f1"], "timing_s": metrics["timing_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
