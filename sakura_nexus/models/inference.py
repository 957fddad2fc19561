"""Low-latency inference: an immutable float32 NumPy snapshot of a :class:`WorldModel`.

Why: one world-model tick (encode + step + a 15-step prediction of one sample) is ~350 tiny
tensor ops; PyTorch eager pays ~4-5 µs dispatch per op, NumPy ~1 µs, so the snapshot is ~2x
faster at batch 1 (numbers in docs/world_model.md). TorchScript would do the same but is
deprecated in the installed torch. The snapshot is also the thread-safety mechanism for online
learning: the learner trains the torch module in a background thread and publishes a fresh
snapshot; inference reads whatever snapshot reference is current (a reference swap is atomic),
never half-updated weights.

Same API and semantics as :class:`WorldModel` (tests check equality to 1e-5), on NumPy arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from .world_model import WorldModel


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


class WorldModelSnapshot:
    def __init__(self, model: WorldModel):
        cfg = model.config
        self.config, self.version = cfg, model.version
        with torch.no_grad():
            def arr(t: torch.Tensor) -> np.ndarray:
                return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32).copy()

            enc = model.encoder_net
            self._enc = (arr(enc[0].weight.T), arr(enc[0].bias), arr(enc[2].weight.T), arr(enc[2].bias))
            self._ln_eps = float(enc[3].eps)
            head = model.collision_head
            self._head = (arr(head[0].weight.T), arr(head[0].bias), arr(head[2].weight[0]),
                          float(head[2].bias[0]))
            self._col_from = model._col_from
            self._dyn = tuple(arr(t) for t in model.dynamics.prepare(cfg.ensemble)[:7])
            self._proprio_scale = arr(model.proprio_scale)
            self._action_scale = arr(model.action_scale)
        self._z = cfg.latent_dim

    def encode(self, embedding: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2 = self._enc
        learned = _silu(np.asarray(embedding, np.float32) @ w1 + b1) @ w2 + b2
        learned = learned - learned.mean(-1, keepdims=True)
        learned /= np.sqrt((learned * learned).mean(-1, keepdims=True) + self._ln_eps)
        pose = np.asarray(proprio, np.float32) * self._proprio_scale
        return np.concatenate([pose, learned], -1)

    def step(self, z: np.ndarray, action: np.ndarray, members: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
        return self._mean_and_disagreement(
            self.rollout_members(z, np.asarray(action, np.float32)[:, None, :], members)[:, :, 0])

    def rollout(self, z: np.ndarray, actions: np.ndarray, members: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        return self._mean_and_disagreement(self.rollout_members(z, actions, members))

    def pose(self, z: np.ndarray) -> np.ndarray:
        ps = self.config.pos_scale
        return np.stack([z[..., 0] * ps, z[..., 1] * ps, np.arctan2(z[..., 3], z[..., 2])], -1)

    def collision(self, z: np.ndarray) -> np.ndarray:
        w1, b1, w2, b2 = self._head
        logit = _silu(z[..., self._col_from:] @ w1 + b1) @ w2 + b2
        return 1.0 / (1.0 + np.exp(-logit))

    def rollout_members(self, z: np.ndarray, actions: np.ndarray, members: int | None = None) -> np.ndarray:
        k = self.config.ensemble
        m = k if members is None else max(1, min(int(members), k))
        w1, w_a, b1, w2, b2, w3, b3 = (w[:m] for w in self._dyn)
        z = np.asarray(z, np.float32)
        acts = np.asarray(actions, np.float32) * self._action_scale
        bsz, horizon = acts.shape[:2]
        zd = self._z
        act_h = np.matmul(acts.transpose(1, 0, 2)[None], w_a[:, None]) + b1[:, None]  # (m, H, B, hidden)
        out = np.empty((m, bsz, horizon, zd), np.float32)
        zk = np.broadcast_to(z, (m, bsz, zd))
        for t in range(horizon):
            h = np.matmul(zk, w1)
            h += act_h[:, t]
            np.maximum(h, 0.0, out=h)
            h2 = np.matmul(h, w2)
            h2 += b2
            np.maximum(h2, 0.0, out=h2)
            o = np.matmul(h2, w3)
            o += b3
            nz = out[:, :, t]
            np.multiply(zk[..., 2:3], o[..., :4], out=nz[..., :4])
            nz[..., :4] += zk[..., 3:4] * o[..., zd:]
            nz[..., :2] += zk[..., :2]
            np.add(zk[..., 4:], o[..., 4:zd], out=nz[..., 4:])
            zk = nz
        return out

    @staticmethod
    def _mean_and_disagreement(zk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if zk.shape[0] == 1:
            return zk[0], np.zeros(zk.shape[1:-1], np.float32)
        return zk.mean(0), zk.std(0, ddof=1).mean(-1)

