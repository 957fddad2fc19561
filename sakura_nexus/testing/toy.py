"""A toy system with known structure, for fast tests and benchmarks without the simulator.

Unicycle kinematics with first-order velocity lag (v' = v + 0.5 (a_v - v)), plus an 8-d "visual"
state that rotates/decays linearly and is driven by the action; embeddings are a fixed random
nonlinear map of the visual state (64-d, layer-normalised like the real encoder's).
"""

from __future__ import annotations

import math

import numpy as np
import torch

DT = 0.1


def toy_sequences(n: int, steps: int, seed: int = 0, embed_dim: int = 64, action_scale: float = 1.0
                  ) -> dict[str, torch.Tensor]:
    """n sequences of ``steps`` transitions: embedding (n, T+1, E), proprio (n, T+1, 6),
    actions (n, T, 2), collided (n, T). ``action_scale`` > 1 leaves the training distribution."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(1234)  # the "camera" is the same for every seed
    proj = mix.normal(0, 1 / math.sqrt(8), (8, embed_dim))
    ang = 0.2
    a_vis = 0.97 * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    a_vis = np.kron(np.eye(4), a_vis)
    b_vis = mix.normal(0, 0.3, (2, 8))
    pose = np.zeros((n, steps + 1, 3))
    vel = np.zeros((n, steps + 1, 2))
    vis = np.zeros((n, steps + 1, 8))
    pose[:, 0] = rng.uniform([-2, -2, -math.pi], [2, 2, math.pi], (n, 3))
    vis[:, 0] = rng.normal(0, 1, (n, 8))
    acts = np.zeros((n, steps, 2))
    a = rng.uniform([-0.2, -1.0], [0.6, 1.0], (n, 2))
    for t in range(steps):
        a = np.clip(a + rng.normal(0, [0.1, 0.3], (n, 2)), [-0.6, -1.5], [0.6, 1.5])
        acts[:, t] = a * action_scale
        vel[:, t + 1] = vel[:, t] + 0.5 * (acts[:, t] - vel[:, t])
        yaw = pose[:, t, 2] + vel[:, t + 1, 1] * DT
        mid = pose[:, t, 2] + 0.5 * vel[:, t + 1, 1] * DT
        pose[:, t + 1, 0] = pose[:, t, 0] + vel[:, t + 1, 0] * DT * np.cos(mid)
        pose[:, t + 1, 1] = pose[:, t, 1] + vel[:, t + 1, 0] * DT * np.sin(mid)
        pose[:, t + 1, 2] = np.arctan2(np.sin(yaw), np.cos(yaw))
        vis[:, t + 1] = vis[:, t] @ a_vis.T + acts[:, t] @ b_vis
    emb = np.tanh(vis @ proj)
    emb = (emb - emb.mean(-1, keepdims=True)) / (emb.std(-1, keepdims=True) + 1e-5)
    proprio = np.concatenate([pose[..., :2], np.cos(pose[..., 2:]), np.sin(pose[..., 2:]), vel], -1)
    collided = (np.abs(pose[:, 1:, :2]).max(-1) > 2.5)
    f = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))  # noqa: E731
    return {"embedding": f(emb), "proprio": f(proprio), "actions": f(acts), "collided": f(collided)}
