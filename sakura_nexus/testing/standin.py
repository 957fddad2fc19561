"""Stand-ins for tests and benchmarks: a kinematic cell and a latent dynamics model of the real size.

* :class:`KinematicCell` duck-types the parts of ``sakura_nexus.sim.FactoryCell`` the episode runner
  uses (unicycle kinematics, box obstacles with full extents ``sx, sy``, a square cell centred on the
  origin, footprint-circle contacts). No MuJoCo, deterministic, ~50 us per step.
* :class:`StandInWorldModel` has the contract API of ``sakura_nexus.models.WorldModel`` and its
  latent layout (``z[0:2] = xy / 4``, ``z[2:4] = cos, sin``, ``z[4:6] = v / 0.6, w / 1.5``, features
  after), with an exact unicycle core, an ensemble of MLPs of the real size (latent 32, hidden 128,
  5 members) that only perturbs the feature block and, per member, the velocity gain (so the
  disagreement is meaningful), and a collision head computed from the true obstacle geometry. It is
  a *perfect-model* stand-in: planner logic is tested separately from model quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sakura_nexus.geometry import Box, box_corners, sdf_np, wrap_angles
from sakura_nexus.sim.layout import ROBOT_RADIUS

__all__ = ["KinematicCell", "StandInWorldModel", "random_layout"]



def random_layout(seed: int, n_obstacles: int | None = None, size: float = 6.0,
                  gap: float = 0.6) -> list[Box]:
    """Seeded boxes similar in size to the sim's pallets/boxes/machines, >= ``gap`` apart and from walls."""
    rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 77]))
    n = int(rng.integers(4, 9)) if n_obstacles is None else int(n_obstacles)
    kinds = {"pallet": ((1.2, 1.2), (0.8, 0.8)), "box": ((0.4, 0.7), (0.4, 0.7)),
             "machine": ((0.8, 1.4), (0.6, 1.0))}
    boxes: list[Box] = []
    for _ in range(2000):
        if len(boxes) == n:
            break
        kind = ("pallet", "box", "machine")[int(rng.integers(3))]
        (a0, a1), (b0, b1) = kinds[kind]
        sx, sy, yaw = rng.uniform(a0, a1), rng.uniform(b0, b1), rng.uniform(-math.pi, math.pi)
        r = math.hypot(sx, sy) / 2
        lim = size / 2 - r - gap
        x, y = rng.uniform(-lim, lim, 2)
        cand = Box(float(x), float(y), float(sx), float(sy), float(yaw), kind)
        corners = box_corners(cand)
        if all(sdf_np(corners[:, 0], corners[:, 1], [o], size).min() >= gap
               and sdf_np(box_corners(o)[:, 0], box_corners(o)[:, 1], [cand], size).min() >= gap for o in boxes):
            boxes.append(cand)
    return boxes


@dataclass(frozen=True)
class _StepResult:
    pose: tuple
    vel: tuple
    collided: bool
    time: float


class KinematicCell:
    """Unicycle robot among boxes; see the module docstring. API subset of FactoryCell."""

    def __init__(self, seed: int = 0, n_obstacles: int | None = None, size: float = 6.0,
                 max_v: float = 0.6, max_w: float = 1.5, radius: float = ROBOT_RADIUS):
        self.seed, self.n_obstacles, self._size = seed, n_obstacles, size
        self.max_v, self.max_w, self.radius = max_v, max_w, radius
        self.reset(seed)

    def reset(self, seed: int | None = None) -> _StepResult:
        if seed is not None:
            self.seed = int(seed)
        self._obstacles = random_layout(self.seed, self.n_obstacles, self._size)
        self._time = 0.0
        rng = np.random.default_rng(self.seed + 1000)
        self.set_pose(*self.sample_free_pose(rng, 0.4))
        self._goal = self.sample_free_pose(rng, 0.4)
        return _StepResult(self.pose, self.velocity, False, 0.0)

    def set_pose(self, x: float, y: float, yaw: float) -> None:
        self._pose = [float(x), float(y), float(yaw)]
        self._vel = (0.0, 0.0)

    def set_goal(self, x: float, y: float, yaw: float = 0.0) -> None:
        self._goal = (float(x), float(y), float(yaw))

    def step(self, v_cmd: float, w_cmd: float, dt: float = 0.1) -> _StepResult:
        if not (math.isfinite(v_cmd) and math.isfinite(w_cmd)):
            v_cmd = w_cmd = 0.0
        v = min(max(float(v_cmd), -self.max_v), self.max_v)
        w = min(max(float(w_cmd), -self.max_w), self.max_w)
        n = max(1, int(round(dt / 0.01)))
        h = dt / n
        collided = False
        x, y, th = self._pose
        for _ in range(n):
            thm = th + 0.5 * w * h
            nx, ny, th = x + v * h * math.cos(thm), y + v * h * math.sin(thm), th + w * h
            if sdf_np(nx, ny, self._obstacles, self._size) < self.radius:
                collided = True          # contact: the robot stops at the surface
                v = 0.0
            else:
                x, y = nx, ny
        self._pose = [x, y, wrap_angles(th)]
        self._vel = (v, w)
        self._time += n * h
        return _StepResult(self.pose, self.velocity, collided, self._time)

    def render(self, width: int | None = None, height: int | None = None) -> np.ndarray:
        return np.zeros((height or 64, width or 64, 3), np.uint8)

    def sample_free_pose(self, rng=None, clearance: float = 0.5) -> tuple:
        rng = np.random.default_rng(rng)
        need = self.radius + clearance
        half = self._size / 2 - need
        for _ in range(20000):
            x, y = rng.uniform(-half, half, 2)
            if sdf_np(x, y, self._obstacles, self._size) >= need:
                return float(x), float(y), float(rng.uniform(-math.pi, math.pi))
        raise RuntimeError("no free pose")

    @property
    def pose(self) -> tuple:
        return tuple(self._pose)

    @property
    def velocity(self) -> tuple:
        return self._vel

    @property
    def time(self) -> float:
        return self._time

    @property
    def in_collision(self) -> bool:
        return bool(sdf_np(self._pose[0], self._pose[1], self._obstacles, self._size) < self.radius + 1e-6)

    @property
    def layout(self) -> list:
        return list(self._obstacles)

    @property
    def size(self) -> tuple:
        return (self._size, self._size)

    @property
    def goal(self) -> tuple:
        return self._goal


class StandInWorldModel(nn.Module):
    """Perfect-model stand-in with the compute of the real ensemble (see the module docstring)."""

    POS, VS, WS = 4.0, 0.6, 1.5

    def __init__(self, obstacles=(), size: float = 6.0, latent: int = 32, hidden: int = 128,
                 ensemble: int = 5,
                 dt: float = 0.1, radius: float = ROBOT_RADIUS, margin: float = 0.03, softness: float = 0.01,
                 gain_spread: float = 0.03, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.latent, self.ensemble, self.dt = latent, ensemble, dt
        self.radius, self.margin, self.softness = radius, margin, softness
        d_in = latent + 2

        def p(*shape, fan):
            return nn.Parameter(torch.randn(*shape, generator=g) / math.sqrt(fan), requires_grad=False)

        self.w1 = p(ensemble, d_in, hidden, fan=d_in)
        self.w2 = p(ensemble, hidden, hidden, fan=hidden)
        self.w3 = p(ensemble, hidden, latent - 6, fan=hidden)
        self.b1 = nn.Parameter(torch.zeros(ensemble, 1, hidden), requires_grad=False)
        self.b2 = nn.Parameter(torch.zeros(ensemble, 1, hidden), requires_grad=False)
        self.gain = 1.0 + gain_spread * torch.linspace(-1, 1, ensemble)   # per-member velocity gain
        self.size = size
        self.set_obstacles(obstacles)

    def set_obstacles(self, obstacles) -> None:
        obs = list(obstacles)
        self._oc = torch.tensor([[o.x, o.y] for o in obs], dtype=torch.float32).reshape(-1, 2)
        self._ocs = torch.tensor([[math.cos(o.yaw), math.sin(o.yaw)] for o in obs],
                                 dtype=torch.float32).reshape(-1, 2)
        self._oh = torch.tensor([[o.sx / 2, o.sy / 2] for o in obs], dtype=torch.float32).reshape(-1, 2)

    # ---- contract API -------------------------------------------------------------------------------
    def encode_state(self, pose, vel=(0.0, 0.0), features=None) -> torch.Tensor:
        x, y, th = pose
        z = torch.zeros(self.latent)
        z[:6] = torch.tensor([x / self.POS, y / self.POS, math.cos(th), math.sin(th), vel[0] / self.VS,
                              vel[1] / self.WS])
        if features is not None:
            z[6:] = torch.as_tensor(features)
        return z

    def encode(self, embedding: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        scale = torch.tensor([1 / self.POS, 1 / self.POS, 1.0, 1.0, 1 / self.VS, 1 / self.WS])
        feats = embedding[..., : self.latent - 6] * 0.0
        return torch.cat([proprio * scale, feats], -1)

    def rollout(self, z: torch.Tensor, actions: torch.Tensor, members: int | None = None):
        m = self.ensemble if members is None else max(1, min(int(members), self.ensemble))
        bsz, horizon = actions.shape[:2]
        zk = z.unsqueeze(0).expand(m, bsz, -1)
        gain = self.gain[:m].view(m, 1) if m > 1 else torch.ones(1, 1)
        w1, w2, w3, b1, b2 = self.w1[:m], self.w2[:m], self.w3[:m], self.b1[:m], self.b2[:m]
        out = []
        for t in range(horizon):
            a = actions[:, t].unsqueeze(0).expand(m, -1, -1)
            h = torch.baddbmm(b1, torch.cat([zk, a], -1), w1).relu_()
            h = torch.baddbmm(b2, h, w2).relu_()
            feat = zk[..., 6:] * 0.9 + 0.01 * torch.tanh(torch.bmm(h, w3))
            v, w = a[..., 0] * gain, a[..., 1] * gain
            c, s = zk[..., 2], zk[..., 3]
            hw = 0.5 * w * self.dt
            ch, sh = torch.cos(hw), torch.sin(hw)
            cm, sm = c * ch - s * sh, s * ch + c * sh                           # heading at mid-step
            c2, s2 = torch.cos(2 * hw), torch.sin(2 * hw)
            step = v * self.dt / self.POS
            pose = torch.stack([zk[..., 0] + step * cm, zk[..., 1] + step * sm,
                                c * c2 - s * s2, s * c2 + c * s2, v / self.VS, w / self.WS], -1)
            zk = torch.cat([pose, feat], -1)
            out.append(zk)
        traj = torch.stack(out, 2)                                              # (m, B, H, Z)
        mean = traj.mean(0)
        sigma = traj.std(0).mean(-1) if m > 1 else traj.new_zeros(bsz, horizon)
        return mean, sigma

    def step(self, z: torch.Tensor, action: torch.Tensor, members: int | None = None):
        zs, s = self.rollout(z, action.unsqueeze(-2), members)
        return zs[:, 0], s[:, 0]

    def pose(self, z: torch.Tensor) -> torch.Tensor:
        yaw = torch.atan2(z[..., 3], z[..., 2])
        return torch.stack([z[..., 0] * self.POS, z[..., 1] * self.POS, yaw], -1)

    def collision(self, z: torch.Tensor) -> torch.Tensor:
        p = z[..., :2] * self.POS
        half = self.size / 2
        d = torch.minimum(half - p[..., 0].abs(), half - p[..., 1].abs())
        if self._oc.shape[0]:
            dx = p[..., None, 0] - self._oc[:, 0]
            dy = p[..., None, 1] - self._oc[:, 1]
            c, s = self._ocs[:, 0], self._ocs[:, 1]
            qx = (dx * c + dy * s).abs() - self._oh[:, 0]
            qy = (-dx * s + dy * c).abs() - self._oh[:, 1]
            out = torch.hypot(qx.clamp(min=0), qy.clamp(min=0)) + torch.maximum(qx, qy).clamp(max=0)
            d = torch.minimum(d, out.min(-1).values)
        return torch.sigmoid((self.radius + self.margin - d) / self.softness)
