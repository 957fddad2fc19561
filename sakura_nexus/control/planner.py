"""MPPI in the learned latent space.

``dynamics`` is any object with (torch tensors)::

    rollout(z[B,Z], actions[B,H,2]) -> (zs[B,H,Z], sigma[B,H])    # optional kwarg members=m
    pose(z[...,Z]) -> [...,3]        (x, y, yaw in odom)
    collision(z[...,Z]) -> [...]     (probability of contact in the step that produced z)

Each MPPI iteration evaluates all samples with ONE batched ``rollout`` call (no per-sample Python
loop); the horizon loop lives inside the model. The mean action sequence is warm-started by
shifting the previous solution by one step. See docs/control.md for the cost and the choice of
MPPI over CEM.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["MPPIConfig", "MPPIPlanner", "PlanResult"]


@dataclass
class MPPIConfig:
    """Planner settings (names of the shared ones match the policy_node parameters)."""

    samples: int = 128               # trajectories per iteration (incl. the warm-start mean and a stop)
    horizon: int = 15                # steps of model_dt
    iterations: int = 1              # MPPI updates per plan() call
    temperature: float = 0.05        # lambda, in cost units (metres of goal distance)
    noise_v: float = 0.25            # m/s, exploration std (linear)
    noise_w: float = 0.8             # rad/s, exploration std (angular)
    noise_smoothing: float = 0.6     # AR(1) correlation of the exploration noise along the horizon
    v_min: float = 0.0               # m/s action bounds of the samples (< 0 allows reversing: blind)
    v_max: float = 0.5
    w_max: float = 1.2
    max_dv: float | None = 0.1       # m/s per step: sampled sequences respect the accel limit (None: off)
    max_dw: float | None = 0.3       # rad/s per step
    w_goal: float = 1.0              # mean goal distance over the horizon [m]
    w_terminal: float = 1.0          # goal distance at the end of the horizon [m]
    turn_cost: float = 0.4           # m/rad: bearing error toward the goal counts like this much distance
    w_heading: float = 0.3           # (1 - cos yaw error), faded in within heading_radius of the goal
    heading_radius: float = 0.5      # m
    w_collision: float = 1.0         # sum over the horizon of predicted contact probability
    w_uncertainty: float = 1.0       # mean ensemble disagreement (latent std)
    w_smooth: float = 0.05           # sum of squared action changes, normalised by the action range
    w_reverse: float = 0.2           # extra cost per (m/s) of reverse speed: the camera looks forward
    w_obstacle: float = 10.0         # mean over the horizon of ((r_safe - clearance) / margin)^2, clearance to
                                     # the map and to ``dynamics.obstacles`` (seen obstacles) if it has one
    obstacle_radius: float = 0.262   # m, robot footprint radius (contact below this clearance)
    obstacle_margin: float = 0.15    # m, the penalty starts at obstacle_radius + margin (r_safe)
    contact_softness: float = 0.03   # m, map clearance -> contact probability (logistic width at the radius)
    w_memory: float = 0.0            # local-minimum escape: penalty near recently visited positions
    memory_radius: float = 0.35      # m, width of the visited-position bumps
    memory_len: int = 300            # visited positions remembered (one per plan call)
    memory_delay: int = 20           # the newest this many positions do not count (2 s at 10 Hz)
    members: int | None = 1          # ensemble members for the sample rollouts (None: all; ignored by
                                     # dynamics whose rollout has no ``members`` argument)
    evaluate_plan: bool = True       # roll the final plan through the full ensemble (poses, risk0, sigma0)
    seed: int = 0

    def validate(self) -> MPPIConfig:
        if self.samples < 4 or self.horizon < 2 or self.iterations < 1:
            raise ValueError("need samples >= 4, horizon >= 2, iterations >= 1")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if not (self.v_min <= 0.0 <= self.v_max and self.w_max > 0):
            raise ValueError("need v_min <= 0 <= v_max and w_max > 0")
        if not 0.0 <= self.noise_smoothing < 1.0:
            raise ValueError("noise_smoothing must be in [0, 1)")
        if not self.obstacle_margin > 0:
            raise ValueError("obstacle_margin must be > 0")
        return self


@dataclass
class PlanResult:
    action: tuple[float, float]                 # (v, w) to apply now
    predicted_poses: np.ndarray                 # (H, 3) weighted-mean predicted poses of the samples
    cost: float                                 # cost of the best sample of the last iteration
    info: dict = field(default_factory=dict)    # risk0, sigma0, risk_max, ess, plan_ms, terms...
    actions: np.ndarray | None = None           # (H, 2) the planned action sequence (action = actions[0])
    evaluated: bool = False                     # predicted_poses / risk / sigma from the full ensemble


def _takes_members(dynamics) -> bool:
    try:
        params = inspect.signature(dynamics.rollout).parameters
    except (TypeError, ValueError, AttributeError):
        return False
    return "members" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


class MPPIPlanner:
    """Model-predictive path integral control over the latent dynamics (see module docstring)."""

    def __init__(self, dynamics, config: MPPIConfig | None = None, dtype: torch.dtype = torch.float32):
        self.dynamics = dynamics
        self.dtype = dtype
        self.config = dataclasses.replace(config or MPPIConfig()).validate()
        self._memory: deque = deque(maxlen=self.config.memory_len)
        self._ctg = None
        self._setup()
        self.reset()

    # ---- configuration --------------------------------------------------------------------------
    def set_config(self, config: MPPIConfig) -> None:
        """Change the configuration live; the warm start survives unless the horizon changed."""
        old = self.config
        self.config = dataclasses.replace(config).validate()
        self._setup()
        if self.config.horizon != old.horizon:
            self.reset()
        if self.config.memory_len != old.memory_len:
            self._memory = deque(self._memory, maxlen=self.config.memory_len)

    def _setup(self) -> None:
        c = self.config
        h, rho = c.horizon, c.noise_smoothing
        # AR(1) noise eps_t = rho*eps_{t-1} + sqrt(1-rho^2)*n_t (unit marginal variance) as one matmul.
        idx = torch.arange(h)
        lag = (idx[:, None] - idx[None, :]).to(torch.float64)
        m = torch.where(lag >= 0, rho ** lag.clamp(min=0), torch.zeros(()))
        m[:, 1:] *= math.sqrt(1 - rho * rho)
        self._smooth = m.to(self.dtype)
        self._std = torch.tensor([c.noise_v, c.noise_w], dtype=self.dtype)
        self._lo = torch.tensor([c.v_min, -c.w_max], dtype=self.dtype)
        self._hi = torch.tensor([c.v_max, c.w_max], dtype=self.dtype)
        self._step = torch.tensor([c.max_dv if c.max_dv is not None else 1e9,
                                   c.max_dw if c.max_dw is not None else 1e9], dtype=self.dtype)
        self._range = torch.tensor([max(c.v_max - c.v_min, 1e-6), 2 * c.w_max], dtype=self.dtype)
        self._gen = torch.Generator().manual_seed(int(c.seed))
        use = c.members is not None and _takes_members(self.dynamics)
        self._kw = {"members": int(c.members)} if use else {}

    @property
    def cost_to_go(self):
        """The field set with :meth:`set_cost_to_go` (None: map-free)."""
        return self._ctg

    def set_cost_to_go(self, field) -> None:
        """Use a map-based cost-to-go (``costmap.CostToGo`` or anything with ``sample(xy) -> (dist,
        heading)``) for the goal term; ``None`` returns to the map-free straight-line distance."""
        self._ctg = field

    def reset(self) -> None:
        """Forget the warm start, the previous action and the visited-position memory (new goal)."""
        self._mean = torch.zeros(self.config.horizon, 2, dtype=self.dtype)
        self._prev = torch.zeros(2, dtype=self.dtype)
        self._memory.clear()
        self._gen = torch.Generator().manual_seed(int(self.config.seed))

    def warm_up(self, latent_dim: int, calls: int = 3) -> float:
        """Plan a few times from a zero latent, then :meth:`reset`: the first calls compile and
        profile the TorchScript rollout (~0.1-0.3 s), which a node should pay while configuring, not
        in its first control cycle. Returns the seconds spent."""
        t0 = time.perf_counter()
        for _ in range(calls):
            self.plan(torch.zeros(latent_dim, dtype=self.dtype), (1.0, 0.0), evaluate=True)
        self.reset()
        return time.perf_counter() - t0

    @property
    def mean_actions(self) -> torch.Tensor:
        return self._mean.clone()

    # ---- planning --------------------------------------------------------------------------------
    def plan(self, z, goal_xyz_yaw, prev_action=None, position=None, evaluate: bool | None = None) -> PlanResult:
        """Plan from latent ``z`` (Z,) or (1, Z) toward ``goal`` (x, y[, yaw]); yaw NaN/missing = any.

        ``prev_action``: the command actually applied last (defaults to the previous plan's action);
        it anchors the smoothness and acceleration constraints. ``position``: the current (x, y), only
        used by the visited-position memory (w_memory > 0); defaults to the pose head on ``z``.
        ``evaluate`` (default ``config.evaluate_plan``): roll the chosen plan through the full ensemble
        now; ``False`` returns the sample-weighted means instead, and :meth:`evaluate` can do it later
        (policy_node sends the command first: the action does not depend on the evaluation)."""
        t0 = time.perf_counter()
        c = self.config
        evaluate_now = c.evaluate_plan if evaluate is None else evaluate
        with torch.inference_mode():
            z = torch.as_tensor(z, dtype=self.dtype).reshape(1, -1)
            g = [float(v) for v in goal_xyz_yaw]
            gx, gy = g[0], g[1]
            gyaw = g[2] if len(g) > 2 and math.isfinite(g[2]) else None
            if prev_action is not None:
                self._prev = torch.as_tensor(prev_action, dtype=self.dtype).reshape(2).nan_to_num(0.0)
            mem = self._update_memory(z, position) if c.w_memory > 0 else None
            b, h = c.samples, c.horizon
            zb = z.expand(b, -1)
            best = None
            for _ in range(c.iterations):
                noise = torch.randn(b, h, 2, generator=self._gen, dtype=self.dtype)
                noise = torch.matmul(self._smooth, noise) * self._std
                noise[0] = 0.0                                   # the warm-start mean itself
                acts = self._mean + noise
                acts[1] = 0.0                                    # and a stop sequence
                acts = self._feasible(acts)
                zs, sigma = self.dynamics.rollout(zb, acts, **self._kw)
                poses = self.dynamics.pose(zs)
                seen_clearance = self._seen_clearance(poses)
                if seen_clearance is not None:      # measured once: contact probability + clearance critic
                    risk = self.dynamics.contact_probability(seen_clearance).to(self.dtype)
                else:
                    risk = self.dynamics.collision(zs).to(self.dtype)
                cost, terms = self._cost(acts, poses.to(self.dtype), risk, sigma.to(self.dtype), gx, gy, gyaw,
                                         mem, seen_clearance)
                cost = torch.nan_to_num(cost, nan=1e9, posinf=1e9)
                s_min = cost.min()
                wts = torch.softmax(-(cost - s_min) / c.temperature, 0)
                self._mean = (wts[:, None, None] * acts).sum(0)
                best = (wts, poses, risk, sigma, cost, terms)
            wts, poses, risk, sigma, cost, terms = best
            self._mean = self._feasible(self._mean[None])[0]
            plan = self._mean.clone()
            if not evaluate_now:
                # weighted means over the samples (yaw as a circular mean)
                pred = (wts[:, None, None] * poses).sum(0)
                pred[:, 2] = torch.atan2((wts[:, None] * poses[..., 2].sin()).sum(0),
                                         (wts[:, None] * poses[..., 2].cos()).sum(0))
                risk_p, sig_p = (wts[:, None] * risk).sum(0), (wts[:, None] * sigma).sum(0)
            info = {
                "ess": float(1.0 / (wts * wts).sum()),
                "best_cost": float(cost.min()),
                "terms": {k: float((wts * v).sum()) for k, v in terms.items()},
            }
            # warm start for the next call: shift by one step, repeat the last action
            self._mean = torch.cat([self._mean[1:], self._mean[-1:]], 0)
            self._prev = plan[0].clone()
        result = PlanResult((float(plan[0, 0]), float(plan[0, 1])), np.zeros((0, 3)), info["best_cost"], info,
                            actions=plan.numpy())
        if evaluate_now:
            self.evaluate(z, result)
        else:
            self._set_prediction(result, pred, risk_p, sig_p)
        info["plan_ms"] = (time.perf_counter() - t0) * 1e3
        return result

    def evaluate(self, z, result: PlanResult) -> PlanResult:
        """Roll ``result.actions`` from ``z`` through the full ensemble (B = 1) and replace the predicted
        poses, contact risk (risk0, risk_max) and disagreement (sigma0, sigma_mean) of ``result`` with
        the plan's own: what gets published, and what the ROS-free episode's safety layer gates on."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            z = torch.as_tensor(z, dtype=self.dtype).reshape(1, -1)
            zp, sp = self.dynamics.rollout(z, torch.as_tensor(result.actions, dtype=self.dtype)[None])
            self._set_prediction(result, self.dynamics.pose(zp)[0].to(self.dtype),
                                 self.dynamics.collision(zp)[0].to(self.dtype), sp[0].to(self.dtype))
        result.evaluated = True
        result.info["evaluate_ms"] = (time.perf_counter() - t0) * 1e3
        return result

    @staticmethod
    def _set_prediction(result: PlanResult, pred, risk_p, sig_p) -> None:
        pred, risk_p, sig_p = pred.nan_to_num(0.0), risk_p.nan_to_num(1.0), sig_p.nan_to_num(math.inf)
        result.predicted_poses = pred.numpy().astype(np.float64)
        result.info.update(risk0=float(risk_p[0]), risk_max=float(risk_p.max()), sigma0=float(sig_p[0]),
                           sigma_mean=float(sig_p.mean()))

    def _feasible(self, acts: torch.Tensor) -> torch.Tensor:
        """Clamp to the action box and (optionally) to per-step rate limits from the previous action."""
        c = self.config
        acts = torch.clamp(acts, self._lo, self._hi)
        if c.max_dv is None and c.max_dw is None:
            return acts
        # A rate limiter run along the horizon, batched over the samples, in units of the per-step limit
        # (so one scalar clamp serves both channels) and in (H, B, 2) layout: 3 in-place ops per step.
        out = (acts / self._step).transpose(0, 1).contiguous()
        prev = (self._prev / self._step).expand(acts.shape[0], 2)
        for t in range(out.shape[0]):
            cur = out[t]
            cur.sub_(prev).clamp_(-1.0, 1.0).add_(prev)
            prev = cur
        return (out * self._step).transpose(0, 1)

    def _seen_clearance(self, poses):
        """Clearance (B, H) of the rollout to ``dynamics.obstacles`` (what the camera saw), or None when
        the dynamics has no obstacle memory or cannot turn a clearance into a contact probability."""
        seen = getattr(self.dynamics, "obstacles", None)
        if seen is None or not hasattr(self.dynamics, "contact_probability"):
            return None
        return seen.clearance(poses[..., :2])

    def _cost(self, acts, poses, risk, sigma, gx, gy, gyaw, mem, seen_clearance=None):
        c = self.config
        clearance = None
        if self._ctg is None:                                            # map-free: straight line
            dx, dy = gx - poses[..., 0], gy - poses[..., 1]
            dist = torch.sqrt(dx * dx + dy * dy + 1e-9)                  # (B, H)
            direction = torch.atan2(dy, dx)
        elif c.w_obstacle > 0 and hasattr(self._ctg, "sample_all"):      # geodesic on a known map
            dist, direction, clearance = self._ctg.sample_all(poses[..., :2])
            # contact with the map's obstacles counts like a predicted contact (Nav2's collision cost)
            risk = torch.maximum(risk, torch.sigmoid((c.obstacle_radius - clearance) / c.contact_softness))
        else:
            dist, direction = self._ctg.sample(poses[..., :2])
        seen = getattr(self.dynamics, "obstacles", None)
        if c.w_obstacle > 0 and seen is not None:                        # what the camera saw (not on the map)
            sc = (seen.clearance(poses[..., :2]) if seen_clearance is None else seen_clearance).to(poses.dtype)
            clearance = sc if clearance is None else torch.minimum(clearance, sc)
        intrusion = None
        if clearance is not None:
            intrusion = ((c.obstacle_radius + c.obstacle_margin - clearance) / c.obstacle_margin).clamp(min=0)
        # cost-to-go of a unicycle: distance plus the distance-equivalent of turning toward the goal
        # (faded out within heading_radius, where the bearing is ill-defined)
        bearing = _wrap(direction - poses[..., 2]).abs()
        ctg = dist + c.turn_cost * bearing * torch.clamp(dist / c.heading_radius, max=1.0)
        terms = {
            "goal": c.w_goal * ctg.mean(1) + c.w_terminal * ctg[:, -1],
            "collision": c.w_collision * risk.sum(1),
            "uncertainty": c.w_uncertainty * sigma.mean(1),
        }
        da = torch.diff(acts, dim=1, prepend=self._prev.expand(acts.shape[0], 1, 2)) / self._range
        terms["smooth"] = c.w_smooth * (da * da).sum((1, 2))
        if c.w_reverse > 0:
            terms["reverse"] = c.w_reverse * (-acts[..., 0]).clamp(min=0).mean(1)
        if gyaw is not None and c.w_heading > 0:
            near = torch.exp(-(dist / c.heading_radius) ** 2)
            terms["heading"] = c.w_heading * (near * (1 - torch.cos(poses[..., 2] - gyaw))).mean(1)
        if intrusion is not None:
            terms["obstacle"] = c.w_obstacle * (intrusion * intrusion).mean(1)
        if mem is not None:
            d2 = ((poses[..., None, :2] - mem) ** 2).sum(-1)            # (B, H, M)
            terms["memory"] = c.w_memory * torch.exp(-d2 / (2 * c.memory_radius ** 2)).sum(-1).mean(1)
        total = sum(terms.values())
        return total, terms

    def _update_memory(self, z, position):
        if position is None:
            p = self.dynamics.pose(z)[0]
            position = (float(p[0]), float(p[1]))
        self._memory.append((float(position[0]), float(position[1])))
        # the most recent positions are where the robot is: they would only push it forward blindly,
        # so only positions older than memory_delay calls count (a stalled robot accumulates bumps
        # under itself until moving away is cheaper than staying: the local minimum fills up)
        old = list(self._memory)[: -self.config.memory_delay or None]
        if not old:
            return None
        return torch.tensor(old, dtype=self.dtype)
