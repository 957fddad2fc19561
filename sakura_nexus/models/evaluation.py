"""Held-out evaluation of encoder + world model on sim trajectories (ROS-free)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .data import Trajectories
from .encoder import ConvEncoder, images_to_tensor
from .world_model import POSE_DIMS, WorldModel

# latent blocks reported separately (name -> slice)
BLOCKS = {"position": slice(0, 2), "heading": slice(2, 4), "velocity": slice(4, 6),
          "learned": slice(POSE_DIMS, None)}


@torch.no_grad()
def embed_frames(encoder: torch.nn.Module, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float embeddings (..., E), evaluated in batches."""
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([encoder(images_to_tensor(flat[i:i + batch])) for i in range(0, len(flat), batch)])
    encoder.train(was_training)
    return out.view(*lead, -1)


def effective_rank(x: torch.Tensor) -> float:
    """exp(entropy of the normalised singular values) of the centred (N, D) matrix."""
    s = torch.linalg.svdvals(x - x.mean(0))
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def _fvu(pred: torch.Tensor, target: torch.Tensor, var: torch.Tensor) -> dict[str, float]:
    err = (pred - target).square().mean(0)  # per dim
    out = {"all": float(err.sum() / var.sum())}
    for name, sl in BLOCKS.items():
        out[name] = float(err[sl].sum() / var[sl].sum())
    return out


def _angle_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a - b
    return torch.atan2(torch.sin(d), torch.cos(d)).abs()


def _pose_errors(pred: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    return {"position_rmse_m": float((pred[:, :2] - truth[:, :2]).square().sum(-1).mean().sqrt()),
            "yaw_mae_rad": float(_angle_err(pred[:, 2], truth[:, 2]).mean())}


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _classification(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = p >= 0.5
    tp = float((pred & y).sum())
    precision = tp / max(pred.sum(), 1)
    recall = tp / max(y.sum(), 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    return {"precision": precision, "recall": recall, "f1": f1, "auroc": _auroc(p, y),
            "brier": float(((p - y) ** 2).mean())}


def true_pose(proprio: torch.Tensor) -> torch.Tensor:
    return torch.stack([proprio[..., 0], proprio[..., 1], torch.atan2(proprio[..., 3], proprio[..., 2])], -1)


@torch.no_grad()
def evaluate(encoder: ConvEncoder, model: WorldModel, data: Trajectories, horizon: int = 10,
             reference: Trajectories | None = None, embeddings: torch.Tensor | None = None) -> dict:
    """Metrics on held-out trajectories (see docs/world_model.md for definitions).

    ``reference``: the training data, for the constant baselines (mean pose, base collision rate);
    defaults to ``data`` itself (an optimistic baseline)."""
    model.eval()
    emb = embed_frames(encoder, data.images) if embeddings is None else embeddings
    prop = torch.from_numpy(data.proprio)
    acts = torch.from_numpy(data.actions)
    z = model.encode(emb, prop)  # (N, T+1, Z)
    n, t1, zd = z.shape
    steps = t1 - 1
    flat = z.reshape(-1, zd)
    var = flat.var(0)
    one, sigma = model.step(z[:, :-1].reshape(-1, zd), acts.reshape(-1, 2))
    target = z[:, 1:].reshape(-1, zd)
    metrics: dict = {"n_transitions": n * steps, "latent_variance_total": float(var.sum()),
                     "latent_variance_by_block": {k: float(var[sl].sum()) for k, sl in BLOCKS.items()}}
    metrics["one_step_fvu"] = _fvu(one, target, var)
    metrics["one_step_mse"] = float((one - target).square().mean())
    metrics["uncertainty_mean"] = float(sigma.mean())

    # k-step open loop from every start that leaves room for ``horizon`` steps (stride 5)
    starts = list(range(0, steps - horizon + 1, 5))
    z0 = torch.cat([z[:, s] for s in starts])
    a_seq = torch.cat([acts[:, s:s + horizon] for s in starts])
    zk, sig_k = model.rollout(z0, a_seq)
    tgt_k = torch.cat([z[:, s + 1:s + horizon + 1] for s in starts])
    metrics[f"{horizon}_step_fvu"] = _fvu(zk[:, -1], tgt_k[:, -1], var)
    metrics["multi_step_fvu_by_k"] = [float((zk[:, k] - tgt_k[:, k]).square().mean(0).sum() / var.sum())
                                      for k in range(horizon)]
    metrics[f"{horizon}_step_uncertainty_mean"] = float(sig_k[:, -1].mean())

    metrics["effective_rank"] = {"latent": effective_rank(flat),
                                 "learned": effective_rank(flat[:, POSE_DIMS:]),
                                 "embedding": effective_rank(emb.reshape(-1, emb.shape[-1])),
                                 "latent_dim": zd}

    # pose head on predicted latents vs baselines
    ref = reference if reference is not None else data
    ref_pose = true_pose(torch.from_numpy(ref.proprio).reshape(-1, 6))
    const = torch.tensor([float(ref_pose[:, 0].mean()), float(ref_pose[:, 1].mean()),
                          math.atan2(float(ref_pose[:, 2].sin().mean()), float(ref_pose[:, 2].cos().mean()))])
    truth1 = true_pose(prop[:, 1:].reshape(-1, 6))
    truth_k = true_pose(torch.cat([prop[:, s + horizon] for s in starts]))
    metrics["pose"] = {
        "encoded": _pose_errors(model.pose(flat), true_pose(prop.reshape(-1, 6))),
        "one_step": _pose_errors(model.pose(one), truth1),
        f"{horizon}_step": _pose_errors(model.pose(zk[:, -1]), truth_k),
        "constant_baseline": _pose_errors(const.expand_as(truth1), truth1),
        "hold_last_baseline_one_step": _pose_errors(true_pose(prop[:, :-1].reshape(-1, 6)), truth1),
        f"hold_last_baseline_{horizon}_step": _pose_errors(
            true_pose(torch.cat([prop[:, s] for s in starts])), truth_k),
    }

    # collision head on the predicted next latent vs the contact flag of that step
    y = data.collided.reshape(-1).astype(bool)
    p = model.collision(one).numpy()
    base = float(ref.collided.mean())
    metrics["collision"] = {
        "positive_rate": float(y.mean()),
        "head": _classification(p, y),
        "head_on_encoded_next": _classification(model.collision(target).numpy(), y),
        "constant_always": _classification(np.ones_like(p), y),
        "constant_base_rate": {"brier": float(((base - y) ** 2).mean()), "auroc": 0.5,
                               "precision": 0.0, "recall": 0.0, "f1": 0.0},
    }
    return metrics


@torch.no_grad()
def uncertainty_on_off_distribution(encoder: ConvEncoder, model: WorldModel, data: Trajectories,
                                    max_frames: int = 2000) -> dict[str, float]:
    """Mean ensemble disagreement of one step on held-out data vs off-distribution inputs:
    colour-inverted and uniform-noise camera images, velocities 2x beyond the robot limits, and
    actions 3x beyond the limits."""
    model.eval()
    n = min(max_frames, data.n_transitions)
    imgs = data.images[:, :-1].reshape(-1, *data.images.shape[-3:])[:n]
    prop = torch.from_numpy(data.proprio[:, :-1].reshape(-1, 6)[:n])
    acts = torch.from_numpy(data.actions.reshape(-1, 2)[:n])
    z = model.encode(embed_frames(encoder, imgs), prop)
    z_inv = model.encode(embed_frames(encoder, 255 - imgs), prop)
    noise = np.random.default_rng(0).integers(0, 256, imgs.shape, dtype=np.uint8)
    z_noise = model.encode(embed_frames(encoder, noise), prop)
    fast = prop.clone()
    fast[:, 4] = fast[:, 4].sign() * 1.2 + fast[:, 4]
    fast[:, 5] = fast[:, 5].sign() * 3.0 + fast[:, 5]
    z_fast = model.encode(embed_frames(encoder, imgs), fast)
    return {"in_distribution": float(model.step(z, acts)[1].mean()),
            "inverted_images": float(model.step(z_inv, acts)[1].mean()),
            "noise_images": float(model.step(z_noise, acts)[1].mean()),
            "velocity_beyond_limits": float(model.step(z_fast, acts)[1].mean()),
            "actions_beyond_limits": float(model.step(z, acts * 3.0)[1].mean())}
