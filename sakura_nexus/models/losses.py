"""Training losses shared by offline training and online learning.

Latent prediction errors are divided per dimension by ``WorldModel.error_scale`` (set from the
training data by :func:`error_scale`): for the odometry block (pose, velocity) the spread of its
one-step changes, so a 1 cm position error and a 0.01 rad heading error count relative to how much
they move per step; for the learned block its spread over the data, so the loss is the fraction
of unexplained variance, the quantity the evaluation reports, and the encoder gains nothing by
rescaling its features. Targets are stop-gradient latents of the real next observation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .world_model import POSE_DIMS, WorldModel


def prediction_error(pred: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Normalised squared error, mean over the latent dims: (..., Z) -> (...)."""
    return ((pred - target) / scale).square().mean(-1)


@torch.no_grad()
def error_scale(z: torch.Tensor, floor: float = 0.003) -> torch.Tensor:
    """(Z,) error normalisers from encoded sequences z (B, T+1, Z): std of one-step changes for the
    odometry dims, std over all frames for the learned dims; floored at ``floor``."""
    zd = z.shape[-1]
    steps = (z[:, 1:] - z[:, :-1]).reshape(-1, zd).std(0)
    spread = z.reshape(-1, zd).std(0)
    return torch.cat([steps[:POSE_DIMS], spread[POSE_DIMS:]]).clamp_min(floor)


def collision_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype).expand_as(logits))


def variance_covariance(learned: torch.Tensor, min_std: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg terms on (N, D) features: hinge keeping every dim's std >= ``min_std``, and
    off-diagonal covariance (decorrelation). Together with the reconstruction loss they keep the
    stop-gradient objective from collapsing the learned block to a constant."""
    x = learned - learned.mean(0)
    std = torch.sqrt(x.var(0) + 1e-4)
    var_loss = F.relu(min_std - std).mean()
    n, d = x.shape
    cov = (x.T @ x) / max(n - 1, 1)
    off = cov - torch.diag(torch.diag(cov))
    return var_loss, off.square().sum() / d


def sequence_losses(model: WorldModel, z: torch.Tensor, actions: torch.Tensor, collided: torch.Tensor,
                    member_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Dynamics + collision losses on encoded sequences.

    z: (B, T+1, Z) encoded latents (differentiable w.r.t. the encoders), actions (B, T, 2),
    collided (B, T) (contact during step t). member_weights: (K, B) bootstrap weights or None.

    ``one_step``: teacher-forced one-step error at every t; ``multi_step``: open-loop rollout of
    each member over all T steps from t = 0 (the multi-step loss the planner relies on);
    ``collision``: BCE of the collision head on encoded and on predicted next latents.
    """
    bsz, t1, zd = z.shape
    steps = t1 - 1
    target = z.detach()[:, 1:]
    scale = model.error_scale
    k = model.config.ensemble
    w = torch.ones(k, bsz, device=z.device) if member_weights is None else member_weights
    w = w / w.mean()

    traj = model.rollout_members(z[:, 0], actions)  # (K, B, T, Z)
    multi = (prediction_error(traj, target, scale).mean(-1) * w).mean()
    one = model.rollout_members(z[:, :-1].reshape(bsz * steps, zd), actions.reshape(bsz * steps, 1, -1))
    one = one.view(k, bsz, steps, zd)
    single = (prediction_error(one, target, scale).mean(-1) * w).mean()
    col = collision_bce(model.collision_logits(z[:, 1:]), collided) + collision_bce(
        model.collision_logits(torch.cat([one, traj], 2)), collided.repeat(1, 2))
    return {"one_step": single, "multi_step": multi, "collision": col}


def learned_part(z: torch.Tensor) -> torch.Tensor:
    return z[..., POSE_DIMS:]
