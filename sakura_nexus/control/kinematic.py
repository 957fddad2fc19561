"""Physics-prior dynamics for the MPPI planner: the unicycle a Nav2 user would write, and the same
unicycle with a velocity-response residual learned online from the robot's own odometry.

Both follow the planner's dynamics contract (see :mod:`sakura_nexus.control.planner`) on the state
``z = (x, y, yaw, v, w)`` (odom frame, body velocities):

* :class:`UnicycleModel` (controller ``kinematic_mpc``): the commanded velocity is reached within the
  acceleration limits (Nav2 MPPI's DiffDrive motion model), then integrated as a unicycle. Nothing
  learned; ``collision`` is whatever an obstacle layer says (none by default), ``sigma`` is 0.
* :class:`ResidualUnicycle` (the learned model's dynamics): the executed velocity is a linear function
  of features of (previous velocity, rate-limited command) whose weights start *exactly* at the
  kinematic model and move only as far as the robot's own data pulls them (Bayesian linear regression
  with the kinematic weights as the prior mean, exponential forgetting). It learns a derated or
  slipping wheel (curvature bias), a payload (slower response) or a low-friction floor (turn
  slip) within seconds of ordinary driving, and with no data it *is* the kinematic model.

An optional ``obstacles`` object (``clearance(xy[..., 2]) -> [...]`` metres, e.g.
:class:`~sakura_nexus.models.obstacles.ObstacleMemory`) turns clearance along the rollout into a contact
probability for the planner's collision term and the safety layer's ``collision_stop``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["ResidualUnicycle", "UnicycleConfig", "UnicycleModel", "rollout_poses"]


@dataclass
class UnicycleConfig:
    """The robot as a kinematic model (defaults: the safety layer's limits, the sim robot's radius)."""

    dt: float = 0.1               # s, model step (the planner's step)
    max_v: float = 0.5            # m/s
    max_w: float = 1.2            # rad/s
    max_acc_v: float = 1.0        # m/s^2
    max_acc_w: float = 3.0        # rad/s^2
    radius: float = 0.262         # m, footprint circle: contact below this clearance
    half_track: float = 0.13      # m, half the wheel separation (the sim robot's RobotSpec)
    contact_softness: float = 0.03  # m, logistic width of the clearance -> contact probability map

    @classmethod
    def from_limits(cls, limits, dt: float = 0.1, radius: float = 0.262) -> UnicycleConfig:
        """From a :class:`~sakura_nexus.control.safety.SafetyLimits` (or anything with its field names)."""
        return cls(dt=dt, max_v=limits.max_v, max_w=limits.max_w, max_acc_v=limits.max_acc_v,
                   max_acc_w=limits.max_acc_w, radius=radius)


def _wrap(a):
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


class UnicycleModel:
    """Kinematic unicycle with acceleration limits (see module docstring)."""

    state_dim = 5

    def __init__(self, config: UnicycleConfig | None = None, obstacles=None):
        self.config = config or UnicycleConfig()
        self.obstacles = obstacles

    # ---- the planner contract ----------------------------------------------------------------------
    def encode_state(self, pose, velocity) -> torch.Tensor:
        x, y, yaw = (float(v) for v in pose)
        return torch.tensor([x, y, yaw, float(velocity[0]), float(velocity[1])], dtype=torch.float32)

    def pose(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., :3]

    def collision(self, z: torch.Tensor) -> torch.Tensor:
        if self.obstacles is None:
            return torch.zeros(z.shape[:-1], dtype=z.dtype)
        return self.contact_probability(self.obstacles.clearance(z[..., :2]))

    def contact_probability(self, clearance: torch.Tensor) -> torch.Tensor:
        """Contact probability for a clearance to ``obstacles`` (what :meth:`collision` returns for the
        states that clearance was measured at). The planner measures the seen-obstacle clearance of a
        rollout once and passes it here and to its clearance critic."""
        c = self.config
        return torch.sigmoid((c.radius - clearance) / c.contact_softness)

    def rollout(self, z: torch.Tensor, actions: torch.Tensor, members=None):
        """z (B, 5), actions (B, H, 2) commanded (v, w) -> states (B, H, 5), sigma (B, H) = 0."""
        c = self.config
        z = z.reshape(-1, self.state_dim)
        b, h = actions.shape[0], actions.shape[1]
        if z.shape[0] == 1 and b > 1:
            z = z.expand(b, -1)
        x, y, yaw, v, w = (z[:, i] for i in range(5))
        out = torch.empty(b, h, 5, dtype=z.dtype)
        dv, dw = c.max_acc_v * c.dt, c.max_acc_w * c.dt
        for t in range(h):
            u = actions[:, t]
            uv = torch.minimum(torch.maximum(u[:, 0].clamp(-c.max_v, c.max_v), v - dv), v + dv)
            uw = torch.minimum(torch.maximum(u[:, 1].clamp(-c.max_w, c.max_w), w - dw), w + dw)
            v, w = self._response(v, w, uv, uw)
            mid = yaw + 0.5 * w * c.dt
            x = x + v * torch.cos(mid) * c.dt
            y = y + v * torch.sin(mid) * c.dt
            yaw = _wrap(yaw + w * c.dt)
            out[:, t, 0], out[:, t, 1], out[:, t, 2], out[:, t, 3], out[:, t, 4] = x, y, yaw, v, w
        return out, torch.zeros(b, h, dtype=z.dtype)

    def _response(self, v, w, uv, uw):
        """Executed velocity given the previous one and the rate-limited command (kinematic: = command)."""
        return uv, uw


class ResidualUnicycle(UnicycleModel):
    """:class:`UnicycleModel` whose velocity response is learned online (see module docstring).

    Executed ``(v, w)_t = W^T phi_t`` with ``u`` the rate-limited command and
    ``phi = (v_prev, w_prev, u_v, u_w, u_v |u_w|, |u_w|, 1, hinges)``. The hinges are, for each wheel, the
    demanded change of wheel ground speed (``dl, dr = (u_v - v) -/+ half_track (u_w - w)``) clipped at
    ``HINGES`` m/s and scaled to a common size: a sum of them is any saturating response, which is what a
    torque-limited motor under load or a wheel slipping on a slick floor gives, and in wheel space it
    couples the linear and angular accelerations the way a shared torque budget does. Prior mean
    ``W0``: ``v = u_v``, ``w = u_w`` (the kinematic model). Posterior mean with prior precision
    ``prior_weight`` per weight and forgetting ``forget`` per observed step:
    ``W = (F + lam I)^-1 (G + lam W0)``, ``F = sum f^k phi phi^T``, ``G = sum f^k phi y^T``.
    Chosen on development data (adaptation layouts 500.., test layouts 6000..6007): docs/evaluation.md."""

    HINGES = (0.01, 0.02, 0.04, 0.06, 0.1)   # m/s per model step
    FEATURES = 7 + 2 * len(HINGES)

    def __init__(self, config: UnicycleConfig | None = None, obstacles=None, prior_weight: float = 0.1,
                 forget: float = 0.9998, min_speed: float = 0.02):
        super().__init__(config, obstacles)
        self.prior_weight, self.forget, self.min_speed = float(prior_weight), float(forget), float(min_speed)
        self.w0 = np.zeros((self.FEATURES, 2))
        self.w0[2, 0] = self.w0[3, 1] = 1.0
        self._hinge_np = np.asarray(self.HINGES)
        self._hinge_t = torch.tensor(self.HINGES, dtype=torch.float32)
        self.reset_learning()

    def reset_learning(self) -> None:
        self._F = np.zeros((self.FEATURES, self.FEATURES))
        self._G = np.zeros((self.FEATURES, 2))
        self.samples = 0.0
        self._set_weights(self.w0.copy())

    def _set_weights(self, w: np.ndarray) -> None:
        self.weights = w
        wt = torch.tensor(w, dtype=torch.float32)
        self._wt_base, self._wt_bias = wt[:6], wt[6]
        self._wt_hinge = wt[7:] * torch.tensor(0.1 / self._hinge_np, dtype=torch.float32).repeat(2)[:, None]
        h = self.config.half_track
        self._wheel = torch.tensor([[1.0, 1.0], [-h, h]], dtype=torch.float32)   # (dv, dw) -> (dl, dr)

    def features(self, v, w, uv, uw):
        h = self.config.half_track
        dv, dw = uv - v, uw - w
        if isinstance(v, torch.Tensor):
            c = self._hinge_t.to(v.dtype)
            d = torch.stack([dv - h * dw, dv + h * dw], -1)[..., None]           # (..., 2, 1)
            hinge = (torch.minimum(torch.maximum(d, -c), c) * (0.1 / c)).flatten(-2)
            base = torch.stack([v, w, uv, uw, uv * uw.abs(), uw.abs(), torch.ones_like(v)], -1)
            return torch.cat([base, hinge], -1)
        c = self._hinge_np
        d = np.stack([dv - h * dw, dv + h * dw], -1)[..., None]
        hinge = (np.clip(d, -c, c) * (0.1 / c)).reshape(*np.shape(v), -1)
        base = np.stack([v, w, uv, uw, uv * np.abs(uw), np.abs(uw), np.ones_like(v)], -1)
        return np.concatenate([base, hinge], -1)

    def _response(self, v, w, uv, uw):
        # features() @ weights, in fewer tensor ops (this runs B x H times per plan): the hinge scale is
        # folded into the weights (_set_weights) and the wheel transform is one small matmul
        vw0, u = torch.stack([v, w], -1), torch.stack([uv, uw], -1)
        d = ((u - vw0) @ self._wheel.to(v.dtype))[..., None]                   # (B, 2, 1): dl, dr
        c = self._hinge_t.to(v.dtype)
        hinge = torch.minimum(torch.maximum(d, -c), c).flatten(-2)
        auw = uw.abs()
        base = torch.cat([vw0, u, torch.stack([uv * auw, auw], -1)], -1)
        vw = base @ self._wt_base.to(v.dtype) + hinge @ self._wt_hinge.to(v.dtype) + self._wt_bias.to(v.dtype)
        c = self.config
        return vw[:, 0].clamp(-c.max_v * 1.2, c.max_v * 1.2), vw[:, 1].clamp(-c.max_w * 1.2, c.max_w * 1.2)

    def rate_limit(self, v: float, w: float, cmd) -> tuple[float, float]:
        c = self.config
        dv, dw = c.max_acc_v * c.dt, c.max_acc_w * c.dt
        uv = min(max(min(max(float(cmd[0]), -c.max_v), c.max_v), v - dv), v + dv)
        uw = min(max(min(max(float(cmd[1]), -c.max_w), c.max_w), w - dw), w + dw)
        return uv, uw

    def observe(self, prev_velocity, command, velocity, refit: bool = True) -> None:
        """One step of the robot's own stream: body velocity before, the command sent (what the safety
        layer output), body velocity ``dt`` later (odometry). Steps where the robot stands still and
        is told to are skipped (they carry no information and would swamp the statistics)."""
        v0, w0 = (float(a) for a in prev_velocity)
        v1, w1 = (float(a) for a in velocity)
        if not all(math.isfinite(a) for a in (v0, w0, v1, w1, *command)):
            return
        uv, uw = self.rate_limit(v0, w0, command)
        if max(abs(v0), abs(w0), abs(uv), abs(uw), abs(v1), abs(w1)) < self.min_speed:
            return
        phi = np.asarray(self.features(np.float64(v0), np.float64(w0), np.float64(uv), np.float64(uw)))
        self._F *= self.forget
        self._G *= self.forget
        self._F += np.outer(phi, phi)
        self._G += np.outer(phi, (v1, w1))
        self.samples = self.samples * self.forget + 1.0
        if refit:
            self.fit()

    def fit(self) -> None:
        lam = self.prior_weight
        a = self._F + lam * np.eye(self.FEATURES)
        self._set_weights(np.linalg.solve(a, self._G + lam * self.w0))

    def state_dict(self) -> dict:
        return {"F": self._F.tolist(), "G": self._G.tolist(), "samples": self.samples,
                "prior_weight": self.prior_weight, "forget": self.forget}

    def load_state_dict(self, d: dict) -> None:
        F, G = np.asarray(d["F"], dtype=float), np.asarray(d["G"], dtype=float)
        if F.shape != (self.FEATURES, self.FEATURES) or G.shape != (self.FEATURES, 2):
            raise ValueError(f"residual statistics for {F.shape[0]} features, this model has {self.FEATURES}")
        self._F, self._G = F, G
        self.samples = float(d["samples"])
        self.fit()


def rollout_poses(model: UnicycleModel, pose, velocity, commands) -> np.ndarray:
    """Open-loop prediction (H, 3) of ``model`` from ``pose``/``velocity`` under ``commands`` (H, 2):
    what the tracking-error metric compares with the executed path."""
    with torch.inference_mode():
        z = model.encode_state(pose, velocity)[None]
        zs, _ = model.rollout(z, torch.as_tensor(np.asarray(commands), dtype=torch.float32)[None])
    return zs[0, :, :3].numpy().astype(np.float64)
