"""Online learning core (ROS-free): replay buffer, guarded gradient steps, weight deltas for the
fleet, global-model replacement and crash-safe checkpoints. The world-model node drives it.

Threading model: ``add`` is called from the observation callback, ``train_step`` from one learner
thread; both are safe together. Inference must not read the torch module while it is being
updated: read :attr:`OnlineLearner.snapshot` instead (an immutable NumPy copy of the weights,
republished after every applied step, see :mod:`.inference`).

By default only the dynamics ensemble and the collision head learn online (``trainable =
"dynamics"``): the latent space itself (``encode``) stays that of the base model, so the planner's
costs, the fleet average of deltas and the latents in ``world_state`` keep their meaning. A
friction or payload change is a change of dynamics, which is exactly what adapts.

**Record-level DP-SGD** (``dp_noise_multiplier > 0``; Abadi et al. 2016): the unit of privacy is one
transition. Each step samples the replay buffer by **Poisson sampling** (every stored transition
independently with probability ``q``, ``q = batch_size / buffer size`` rounded *up* to two
significant digits, so the buffer filling up costs a bounded number of accountant evaluations);
per-sample gradients come from ``torch.func`` (``vmap(grad(...))`` over the one-sample loss), each
is clipped to L2 norm ``dp_clip_norm``, their sum gets ``N(0, (z C)^2)`` noise and is divided by the
*expected* batch size ``q * N``; Adam then steps on that noisy gradient (post-processing). Every step
is one Poisson-subsampled Gaussian release in the ledger (:class:`~sakura_nexus.federated.common.privacy.
RDPAccountant`, Google's ``dp-accounting``), counted for every record as if it had been in the buffer
since the ledger began (an upper bound: a record evicted from the FIFO spends nothing afterwards).
With ``dp_epsilon_budget > 0`` a step that would take epsilon (at ``dp_delta``) above the budget is
not taken: learning stops with ``budget_exhausted``. The ``grad_clip`` skip guard does not apply in
DP mode (the per-sample clip bounds every step; a non-finite per-sample gradient counts as zero).
"""

from __future__ import annotations

import math
import os
import re
import threading
from dataclasses import dataclass

import numpy as np
import torch

from .inference import WorldModelSnapshot
from .losses import collision_bce, prediction_error
from .serialization import PayloadError, atomic_write, load_into, pack_state, unpack_state
from .world_model import WorldModel, world_model_from_bytes

_CKPT = re.compile(r"^online-(\d{8})\.ckpt$")
# parameters that learn online with trainable="dynamics" (the default; the fleet exchanges these)
TRAINABLE_PREFIXES = ("dynamics.", "collision_head.")
# what learns online (``trainable``): name prefixes per choice; every choice is a subset of the exchanged
# TRAINABLE_PREFIXES coordinates except "all". The small sets are for DP-SGD, whose noise norm grows as the
# square root of the number of trained coordinates: "dynamics_out" = the ensemble's output layer (w3, b3:
# 10,400 coordinates), "dynamics_bias" = the ensemble's biases (b1, b2, b3: 800 coordinates).
TRAINABLE_SETS = {"dynamics": TRAINABLE_PREFIXES, "all": ("",),
                  "dynamics_out": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_bias": ("dynamics.b1", "dynamics.b2", "dynamics.b3"),
                  "dynamics_b3": ("dynamics.b3",),
                  "dynamics_out_state": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_velocity": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale6": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_tied": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale6_tied": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_enc_tied": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_all_tied": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_vel_tied": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_state_tied": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_vel_tied_s10": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_state_tied_s10": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_state_tied_s3": ("dynamics.w3", "dynamics.b3"),
                  "dynamics_out_scale_state_tied_s30": ("dynamics.w3", "dynamics.b3")}
# sets that learn in a fixed low-dimensional subspace built from the PUBLIC (shipped) weights at
# construction, name -> (output columns, tied): "dynamics_out_scale" = per member, a scale of each output
# column of the heading and velocity change (latent dims 2-5: cos dθ, sin dθ, v, w; the direction of the
# shipped w3 column) and its bias: 5 members x 4 x 2 = 40 coordinates; "dynamics_out_scale6" the same
# for the pose change too (dims 0-5: 60). "_tied": one scale and one bias shift per column shared by all
# ensemble members (each member's column keeps its own direction and grows by the same factor): 8 / 12
# coordinates. The learner's Adam runs on these coefficients. A group may carry a step scale (4th field,
# after the kind): its coefficients' Adam step is multiplied by it (a fixed rescaling of the noised
# step: post-processing, no privacy cost), e.g. "_s10": the full-column group moves at 1/10 of the lr of
# the per-member scales (one lr cannot suit both: a scale coefficient moves a whole column, a full-column
# coefficient one weight of size ~0.01).
SUBSPACE_COLUMNS = {"dynamics_out_scale": ((2, 3, 4, 5), False), "dynamics_out_scale6": (tuple(range(6)), False),
                    "dynamics_out_scale_tied": ((2, 3, 4, 5), True),
                    "dynamics_out_scale6_tied": (tuple(range(6)), True),
                    "dynamics_out_scale_enc_tied": (((2, 3, 4, 5), False), (tuple(range(6, 32)), True)),
                    "dynamics_out_scale_all_tied": (tuple(range(2, 32)), True),
                    "dynamics_out_scale_vel_tied": (((2, 3, 4, 5), False), ((4, 5), True, "full")),
                    "dynamics_out_scale_state_tied": (((2, 3, 4, 5), False), ((2, 3, 4, 5), True, "full")),
                    "dynamics_out_scale_vel_tied_s10": (((2, 3, 4, 5), False), ((4, 5), True, "full", 0.1)),
                    "dynamics_out_scale_state_tied_s10": (((2, 3, 4, 5), False), ((2, 3, 4, 5), True, "full", 0.1)),
                    "dynamics_out_scale_state_tied_s3": (((2, 3, 4, 5), False), ((2, 3, 4, 5), True, "full", 0.3)),
                    "dynamics_out_scale_state_tied_s30": (((2, 3, 4, 5), False), ((2, 3, 4, 5), True, "full", 1 / 30))}
# sets that learn only part of a parameter: name -> index of the learning coordinates (the rest get no
# gradient, so Adam leaves them alone). "dynamics_out_state": the output columns of the pose and
# velocity change (x, y, cos, sin, v, w: latent dims 0-5) of every member, 1,950 coordinates;
# "dynamics_out_velocity": those of the velocity change only (v, w: dims 4-5), 650 coordinates.
TRAINABLE_MASKS = {"dynamics_out_state": {"dynamics.w3": (..., slice(0, 6)), "dynamics.b3": (..., slice(0, 6))},
                   "dynamics_out_velocity": {"dynamics.w3": (..., slice(4, 6)), "dynamics.b3": (..., slice(4, 6))}}


@dataclass
class Transition:
    embedding: np.ndarray  # (E,) observation embedding at t
    proprio: np.ndarray  # (6,) [x, y, cos yaw, sin yaw, v, w] at t
    action: np.ndarray  # (2,) command (v, w) held from t to t+1
    next_embedding: np.ndarray  # (E,) at t+1
    next_proprio: np.ndarray  # (6,) at t+1
    collided: bool = False  # contact between t and t+1


class ReplayBuffer:
    """Bounded FIFO of transitions in preallocated float32 arrays (oldest overwritten)."""

    def __init__(self, capacity: int, embed_dim: int):
        self.capacity = int(capacity)
        width = 2 * embed_dim + 6 + 2 + 6 + 1
        self._data = np.zeros((self.capacity, width), np.float32)
        self._e = embed_dim
        self._next = 0
        self.size = 0
        self.added = 0

    def add(self, tr: Transition) -> None:
        e = self._e
        row = self._data[self._next]
        row[:e], row[e:e + 6], row[e + 6:e + 8] = tr.embedding, tr.proprio, tr.action
        row[e + 8:2 * e + 8], row[2 * e + 8:2 * e + 14] = tr.next_embedding, tr.next_proprio
        row[-1] = float(tr.collided)
        self._next = (self._next + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    def sample(self, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        return self._split(torch.from_numpy(self._data[rng.integers(0, self.size, n)]))

    def sample_poisson(self, rng: np.random.Generator, q: float) -> dict[str, torch.Tensor]:
        """Every stored transition independently with probability ``q`` (DP-SGD's sampling)."""
        idx = np.flatnonzero(rng.random(self.size) < q)
        return self._split(torch.from_numpy(self._data[idx]))

    def _split(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self._e
        return {"embedding": rows[:, :e], "proprio": rows[:, e:e + 6], "action": rows[:, e + 6:e + 8],
                "next_embedding": rows[:, e + 8:2 * e + 8], "next_proprio": rows[:, 2 * e + 8:2 * e + 14],
                "collided": rows[:, -1]}


def _round_up_2sig(q: float) -> float:
    """``q`` rounded up to two significant digits (a sampling rate that is never below ``q``)."""
    if q >= 1.0:
        return 1.0
    e = math.floor(math.log10(q)) - 1
    return min(1.0, math.ceil(q / 10.0 ** e - 1e-9) * 10.0 ** e)


class _LossModule(torch.nn.Module):
    """The OnlineLearner loss as a module's forward, so ``torch.func.functional_call`` can take the
    trainable weights as inputs (per-sample gradients for DP-SGD)."""

    def __init__(self, model: WorldModel, w_collision: float):
        super().__init__()
        self.model, self.w_collision = model, w_collision

    def forward(self, emb, prop, act, next_emb, next_prop, col):
        m = self.model
        with torch.no_grad():
            target = m.encode(next_emb, next_prop)
        z = m.encode(emb, prop)
        pred = m.predict_members(z, act)
        dyn = prediction_error(pred, target, m.error_scale).mean()
        c = collision_bce(m.collision_logits(pred), col) + collision_bce(m.collision_logits(target), col)
        return dyn + self.w_collision * c


class OnlineLearner:
    """Guarded online adaptation of a :class:`WorldModel` (trained in place)."""

    def __init__(self, model: WorldModel, lr: float = 3e-4, buffer_size: int = 5000, batch_size: int = 32,
                 grad_clip: float = 10.0, w_collision: float = 1.0, trainable: str = "dynamics",
                 min_samples: int | None = None, seed: int = 0, dp_noise_multiplier: float = 0.0,
                 dp_clip_norm: float = 1.0, dp_delta: float = 1e-5, dp_epsilon_budget: float = 0.0,
                 dp_tie_members: bool = False):
        if trainable not in TRAINABLE_SETS:
            raise ValueError(f"trainable must be one of {sorted(TRAINABLE_SETS)}, got {trainable!r}")
        if not (buffer_size > 0 and batch_size > 0 and lr > 0 and grad_clip > 0):
            raise ValueError("buffer_size, batch_size, lr and grad_clip must be positive")
        self.model = model.train()
        self.batch_size, self.grad_clip = int(batch_size), float(grad_clip)
        self.w_collision = float(w_collision)
        self.trainable = trainable
        # transitions needed before the first step (default: one batch); ~200 (20 s of driving)
        # keeps the first steps from overfitting a handful of transitions (adaptation.py uses 200)
        self.min_samples = min(int(buffer_size), int(min_samples if min_samples is not None else batch_size))
        self.buffer = ReplayBuffer(buffer_size, model.config.embed_dim)
        self.rng = np.random.default_rng(seed)
        self.lock = threading.RLock()  # guards weights, base, counters, buffer
        self._train_lock = threading.Lock()  # one train_step at a time
        self._names = [n for n, _ in model.named_parameters()]
        learn = [(n, p) for n, p in model.named_parameters()
                 if n.startswith(TRAINABLE_SETS[trainable])]
        self._params = [p for _, p in learn]
        self._masks: list[torch.Tensor | None] = []
        for n, p in learn:
            idx = TRAINABLE_MASKS.get(trainable, {}).get(n)
            mask = None
            if idx is not None:
                mask = torch.zeros_like(p, dtype=torch.bool)
                mask[idx] = True
            self._masks.append(mask)
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in self._params))
        self.lr = float(lr)
        self._basis, self._step_scale = self._build_basis(learn, SUBSPACE_COLUMNS.get(trainable))
        self._coef = (torch.nn.Parameter(torch.zeros(sum(b.shape[0] for b in self._basis if b is not None)))
                      if self._basis is not None else None)
        self.optimizer = self._make_optimizer()
        self.base_version = int(model.version)
        self._base = self._flat().clone()
        self.steps = 0  # applied gradient steps (lifetime)
        self.skipped_nonfinite = 0
        self.skipped_grad = 0
        self.last_grad_norm = float("nan")
        self.samples_since_base = 0
        self._loss_sum = 0.0
        self._loss_n = 0
        self.snapshot = WorldModelSnapshot(model)
        # record-level DP-SGD (see the module docstring)
        if dp_noise_multiplier < 0 or dp_clip_norm <= 0 or not 0 < dp_delta < 1 or dp_epsilon_budget < 0:
            raise ValueError("dp_noise_multiplier >= 0, dp_clip_norm > 0, 0 < dp_delta < 1, budget >= 0")
        from sakura_nexus.federated.common.privacy import RDPAccountant

        self.dp_noise_multiplier, self.dp_clip_norm = float(dp_noise_multiplier), float(dp_clip_norm)
        self.dp_delta, self.dp_epsilon_budget = float(dp_delta), float(dp_epsilon_budget)
        # DP-SGD releases ONE update shared by every ensemble member (the per-sample gradient summed over
        # the members, clipped, noised, applied to each): 1/members the noised coordinates
        self.dp_tie_members = bool(dp_tie_members)
        if self.dp_tie_members and (self._basis is not None or any(mk is not None for mk in self._masks)):
            raise ValueError(f"dp_tie_members does not combine with trainable={trainable!r}")
        self.accountant = RDPAccountant(target_delta=self.dp_delta)
        self.budget_exhausted = False
        self.dp_steps_refused = 0
        self._allowance: tuple[float, int] | None = None  # (q, DP steps left within the budget at q)
        self._noise = torch.Generator().manual_seed(int(seed) + 7919)
        self._loss_module = _LossModule(model, self.w_collision)
        self._per_sample_grad = None  # built on first DP step

    # ------------------------------------------------------------------ data
    def add(self, transition: Transition) -> None:
        with self.lock:
            self.buffer.add(transition)

    def __len__(self) -> int:
        return self.buffer.size

    # ------------------------------------------------------------------ learning
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        m = self.model
        with torch.no_grad():
            target = m.encode(batch["next_embedding"], batch["next_proprio"])
        z = m.encode(batch["embedding"], batch["proprio"])
        pred = m.predict_members(z, batch["action"])  # (K, B, Z)
        dyn = prediction_error(pred, target, m.error_scale).mean()
        col = collision_bce(m.collision_logits(pred), batch["collided"]) + collision_bce(
            m.collision_logits(target), batch["collided"])
        return dyn + self.w_collision * col

    def train_step(self) -> float | None:
        """One guarded gradient step on a replay minibatch.

        Returns the loss, or None when the buffer holds fewer than ``min_samples`` transitions or
        the step was skipped: a non-finite loss or gradient (``skipped_nonfinite``) or a gradient
        norm above ``grad_clip`` (``skipped_grad``). A skipped step changes no weight."""
        if self.dp_noise_multiplier > 0:
            return self._dp_step()
        with self._train_lock:
            with self.lock:
                if self.buffer.size < self.min_samples:
                    return None
                batch = self.buffer.sample(self.rng, self.batch_size)
            loss = self.loss(batch)
            if not torch.isfinite(loss):
                self.skipped_nonfinite += 1
                return None
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for p, mk in zip(self._params, self._masks, strict=True):
                if mk is not None and p.grad is not None:
                    p.grad.mul_(mk)
            norm = float(torch.nn.utils.clip_grad_norm_(self._params, float("inf")))
            self.last_grad_norm = norm
            if not math.isfinite(norm):
                self.skipped_nonfinite += 1
                self.optimizer.zero_grad(set_to_none=True)
                return None
            if norm > self.grad_clip:
                self.skipped_grad += 1
                self.optimizer.zero_grad(set_to_none=True)
                return None
            with self.lock:
                if self._basis is not None:
                    self._subspace_step([p.grad for p in self._params])
                else:
                    self.optimizer.step()
                self.steps += 1
                self.samples_since_base += self.batch_size
                value = float(loss.detach())
                self._loss_sum += value
                self._loss_n += 1
                self.snapshot = WorldModelSnapshot(self.model)
            return value

    # ------------------------------------------------------------------ DP-SGD
    @property
    def dp_enabled(self) -> bool:
        return self.dp_noise_multiplier > 0

    @property
    def epsilon(self) -> float:
        """Record-level epsilon (at ``dp_delta``) of every DP step taken under this ledger;
        ``inf`` once a non-private step was taken with DP off and 0 before any step."""
        if not self.dp_enabled:
            return math.inf if self.steps > 0 else 0.0
        return self.accountant.epsilon()

    def _sampling_rate(self, n: int) -> float:
        return _round_up_2sig(self.batch_size / max(1, n))

    def _within_budget(self, q: float) -> bool:
        """True if one more DP step at rate ``q`` keeps epsilon within the budget (no budget: True)."""
        if self.dp_epsilon_budget <= 0:
            return True
        if self._allowance is None or self._allowance[0] != q:
            self._allowance = (q, self.accountant.steps_within(self.dp_epsilon_budget, self.dp_noise_multiplier, q))
        return self._allowance[1] > 0

    def _grads_fn(self):
        if self._per_sample_grad is None:
            from torch.func import functional_call, grad, vmap

            module = self._loss_module
            frozen = {f"model.{n}": b for n, b in self.model.named_buffers()}

            def one(params, e, p, a, ne, np_, c):
                args = (e[None], p[None], a[None], ne[None], np_[None], c[None])
                return functional_call(module, {**params, **frozen}, args)

            self._per_sample_grad = vmap(grad(one), in_dims=(None, 0, 0, 0, 0, 0, 0))
        return self._per_sample_grad

    def _make_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam([self._coef] if self._coef is not None else self._params, lr=self.lr)

    @staticmethod
    def _build_basis(learn, spec) -> tuple[list[torch.Tensor | None] | None, torch.Tensor | None]:
        """Per learning parameter an orthonormal (r, numel) basis of its subspace (None: no subspace), and
        the step scale of every coefficient (None: all 1); ``spec``: (output columns, tied) of
        SUBSPACE_COLUMNS, or a tuple of groups (columns, tied[, kind[, step scale]])."""
        if spec is None:
            return None, None
        groups = (spec,) if isinstance(spec[1], bool) else spec  # (columns, tied) or ((columns, tied[, kind]), ...)
        out: list[torch.Tensor | None] = []
        scales: list[float] = []
        for n, p in learn:
            rows = []
            for columns, tied, *rest in groups:
                full = rest[:1] == ["full"]  # every w3 entry of the columns (no bias: the scale groups carry it)
                step_scale = float(rest[1]) if len(rest) > 1 else 1.0
                for k in [slice(None)] if tied else range(p.shape[0]):  # tied: one row spans every member
                    for c in columns:
                        for h in range(p.shape[1]) if full and n == "dynamics.w3" else [slice(None)]:
                            e = torch.zeros_like(p)
                            if n == "dynamics.w3":
                                e[k, h, c] = 1.0 if full else p.detach()[k, h, c]
                            elif n == "dynamics.b3" and not full:
                                e[k, :, c] = 1.0
                            else:
                                continue
                            rows.append((e / e.norm().clamp_min(1e-12)).reshape(-1))
                            scales.append(step_scale)
            if rows:
                b = torch.stack(rows)
                if not torch.allclose(b @ b.T, torch.eye(len(rows)), atol=1e-5):  # overlapping groups
                    # Gram-Schmidt order: each row keeps its group's direction minus the earlier groups'
                    b = torch.linalg.qr(b.T.double()).Q.T.float()
                out.append(b)
            else:
                out.append(None)
        return out, (torch.tensor(scales) if any(x != 1.0 for x in scales) else None)

    def _subspace_step(self, grads: list | None, coef_grad: torch.Tensor | None = None) -> None:
        """One Adam step on the subspace coefficients; the weights move by basis^T (coefficient step)."""
        if coef_grad is None:
            coef_grad = torch.cat([g.reshape(-1) @ b.T for g, b in zip(grads, self._basis, strict=True)
                                   if b is not None])
        self._coef.grad = coef_grad.detach().clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        step = self._coef.detach().clone()
        if self._step_scale is not None:  # a slower group: a fixed rescaling of the (noised) Adam step
            step = step * self._step_scale
        with torch.no_grad():
            self._coef.zero_()
            off = 0
            for p, b in zip(self._params, self._basis, strict=True):
                if b is not None:
                    p.add_((step[off: off + b.shape[0]] @ b).view_as(p))
                    off += b.shape[0]
        for p in self._params:
            p.grad = None

    @staticmethod
    def _tied(key: str) -> bool:
        """Parameters with a leading ensemble-member axis (dynamics.*: (members, ...))."""
        return key.startswith("model.dynamics.")

    def _dp_step(self) -> float | None:
        """One DP-SGD step: Poisson sample, per-sample clipped gradients + Gaussian noise, Adam."""
        z, clip = self.dp_noise_multiplier, self.dp_clip_norm
        with self._train_lock:
            with self.lock:
                n = self.buffer.size
                if n < self.min_samples:
                    return None
                q = self._sampling_rate(n)
                if not self._within_budget(q):
                    self.budget_exhausted = True
                    self.dp_steps_refused += 1
                    return None
                batch = self.buffer.sample_poisson(self.rng, q)
                # the release happens whatever the batch holds: account it before computing anything
                self.accountant.step(z, q)
                if self._allowance is not None:
                    self._allowance = (q, self._allowance[1] - 1)
            names = [n_ for n_, p in self.model.named_parameters() if p.requires_grad]
            params = {f"model.{n_}": p.detach() for n_, p in self.model.named_parameters() if p.requires_grad}
            m = int(batch["action"].shape[0])
            summed = [torch.zeros_like(p[:1] if self.dp_tie_members and self._tied(k) else p)
                      for k, p in params.items()]
            value = float("nan")
            if m > 0:
                cols = ("embedding", "proprio", "action", "next_embedding", "next_proprio", "collided")
                g = self._grads_fn()(params, *(batch[k] for k in cols))
                if self.dp_tie_members:
                    g = {k: (v.sum(1, keepdim=True) if self._tied(k) else v) for k, v in g.items()}
                for n_, mk in zip(names, self._masks, strict=True):
                    if mk is not None:  # only the learning coordinates count towards the clip norm
                        g[f"model.{n_}"] = g[f"model.{n_}"] * mk
                flat = [g[f"model.{n_}"].reshape(m, -1) for n_ in names]
                if self._basis is not None:  # per-sample gradients -> subspace coefficients (orthonormal basis)
                    flat = [f @ b.T for f, b in zip(flat, self._basis, strict=True) if b is not None]
                    summed = [torch.zeros(f.shape[1]) for f in flat]
                norms = torch.sqrt(sum(f.square().sum(1) for f in flat))
                factor = torch.where(torch.isfinite(norms), (clip / (norms + 1e-12)).clamp(max=1.0),
                                     torch.zeros_like(norms))
                for i, f in enumerate(flat):
                    f = torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
                    summed[i] = (f * factor[:, None]).sum(0)
                    if self._basis is None:
                        summed[i] = summed[i].reshape(g[f"model.{names[i]}"].shape[1:])
                self.last_grad_norm = float(norms.median())
                with torch.no_grad():
                    value = float(self.loss(batch))
            expected = q * n
            if self._basis is not None:
                if m == 0:
                    summed = [torch.zeros(b.shape[0]) for b in self._basis if b is not None]
                with self.lock:
                    coef = torch.cat(summed)
                    coef = (coef + torch.randn(coef.shape, generator=self._noise) * (z * clip)) / expected
                    self._subspace_step(None, coef)
                    self._stepped(m, value)
                return value if math.isfinite(value) else None
            with self.lock:
                for p, s_, mk in zip(self._params, summed, self._masks, strict=True):
                    noise = torch.randn(s_.shape, generator=self._noise) * (z * clip)
                    if mk is not None:
                        noise = noise * mk
                    p.grad = ((s_ + noise) / expected).expand_as(p).clone()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self._stepped(m, value)
            return value if math.isfinite(value) else None

    def _stepped(self, samples: int, loss: float) -> None:
        """Bookkeeping after one DP-SGD update (caller holds ``self.lock``): counters, loss, snapshot."""
        self.steps += 1
        self.samples_since_base += samples
        if math.isfinite(loss):
            self._loss_sum += loss
            self._loss_n += 1
        self.snapshot = WorldModelSnapshot(self.model)

    def dp_state(self) -> dict:
        """Privacy ledger and settings (persisted with checkpoints and by the world-model node)."""
        with self.lock:
            return {"noise_multiplier": self.dp_noise_multiplier, "clip_norm": self.dp_clip_norm,
                    "delta": self.dp_delta, "budget": self.dp_epsilon_budget,
                    "ledger": self.accountant.state_dict(), "budget_exhausted": self.budget_exhausted}

    def restore_dp_ledger(self, ledger: dict) -> None:
        """Adopt a persisted ledger if it has at least as many releases as the current one (ledgers only
        grow: a restart must never forget privacy already spent)."""
        from sakura_nexus.federated.common.privacy import RDPAccountant

        with self.lock:
            other = RDPAccountant.from_state_dict(ledger)
            other.target_delta = self.dp_delta
            if other.num_releases >= self.accountant.num_releases:
                self.accountant = other
                self._allowance = None

    def set_lr(self, lr: float) -> None:
        self.lr = float(lr)
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr

    # ------------------------------------------------------------------ fleet exchange
    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def parameter_names(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) in the order of the flat delta vector."""
        return [(n, tuple(p.shape)) for n, p in self.model.named_parameters()]

    def delta_since_base(self) -> np.ndarray:
        """Current minus base weights, all parameters flattened in :meth:`parameter_names` order
        (float32). Frozen parameters contribute zeros."""
        with self.lock:
            return (self._flat() - self._base).numpy().astype(np.float32)

    def delta_stats(self) -> dict:
        """What a ModelDelta message carries besides the payload."""
        with self.lock:
            return {"base_version": self.base_version, "sample_count": self.samples_since_base,
                    "local_loss": self._loss_sum / self._loss_n if self._loss_n else float("nan"),
                    "steps": self._loss_n}

    def apply_global(self, state_bytes: bytes, version: int, expected_sha256: str | None = None) -> None:
        """Replace the weights by a global model (``world_model_to_bytes`` payload) and make it the
        new base: delta, sample count and loss accounting restart; optimizer moments are reset.
        The payload is fully validated first; on any error (PayloadError) nothing changes."""
        new = world_model_from_bytes(state_bytes, expected_sha256, like=self.model)
        state = new.state_dict()
        with self._train_lock, self.lock:
            self.model.load_state_dict(state)
            self.model.version = int(version)
            self._reset_base(int(version))

    def _reset_base(self, version: int) -> None:
        self.base_version = version
        self._base = self._flat().clone()
        self.samples_since_base = 0
        self._loss_sum, self._loss_n = 0.0, 0
        self.optimizer = self._make_optimizer()
        self.snapshot = WorldModelSnapshot(self.model)

    # ------------------------------------------------------------------ persistence
    def save_checkpoint(self, directory: str | os.PathLike, extra: dict | None = None, keep: int = 2) -> str:
        """Atomically write ``online-<seq>.ckpt`` (temp + fsync + rename) with current and base
        weights, versions and counters (+ ``extra``, e.g. the node's delta sequence number); keep
        the ``keep`` newest files. Returns the path."""
        os.makedirs(directory, exist_ok=True)
        with self.lock:
            tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
            tensors["base"] = self._base.clone()
            meta = {"version": self.model.version, "base_version": self.base_version, "steps": self.steps,
                    "skipped_nonfinite": self.skipped_nonfinite, "skipped_grad": self.skipped_grad,
                    "samples_since_base": self.samples_since_base, "loss_sum": self._loss_sum,
                    "loss_n": self._loss_n, "dp_ledger": self.accountant.state_dict(),
                    "extra": dict(extra or {})}
        existing = _checkpoints(directory)
        seq = existing[0][0] + 1 if existing else 1
        path = os.path.join(directory, f"online-{seq:08d}.ckpt")
        atomic_write(path, pack_state(tensors, meta))
        for _, old in _checkpoints(directory)[keep:]:
            try:
                os.remove(old)
            except OSError:
                pass
        return path

    def load_latest(self, directory: str | os.PathLike) -> dict | None:
        """Restore from the newest valid checkpoint in ``directory``; a truncated or corrupt one
        (checksum mismatch, wrong shapes) is skipped in favour of the previous. Returns its meta
        (counters, ``extra`` and, for convenience, the ``extra`` keys at top level; ``path``;
        ``skipped_corrupt``: what was skipped and why) or None when there is no valid checkpoint."""
        skipped = []
        for _, path in _checkpoints(directory):
            try:
                with open(path, "rb") as f:
                    tensors, meta = unpack_state(f.read())
                model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
                base = tensors["base"]
                probe = WorldModel(self.model.config)
                load_into(probe, model_state, "online checkpoint")
                if base.shape != self._base.shape or not torch.isfinite(base).all():
                    raise PayloadError("base weights do not fit this model")
            except (OSError, PayloadError, KeyError) as e:
                skipped.append(f"{os.path.basename(path)}: {e}")
                continue
            with self._train_lock, self.lock:
                self.model.load_state_dict(probe.state_dict())
                self.model.version = int(meta["version"])
                self.base_version = int(meta["base_version"])
                self._base = base.clone()
                self.steps = int(meta["steps"])
                self.skipped_nonfinite = int(meta["skipped_nonfinite"])
                self.skipped_grad = int(meta["skipped_grad"])
                self.samples_since_base = int(meta["samples_since_base"])
                self._loss_sum, self._loss_n = float(meta["loss_sum"]), int(meta["loss_n"])
                self.optimizer = self._make_optimizer()
                self.snapshot = WorldModelSnapshot(self.model)
            if meta.get("dp_ledger"):
                self.restore_dp_ledger(meta["dp_ledger"])
            return {**meta["extra"], **meta, "path": path, "skipped_corrupt": skipped}
        return None

    def stats(self) -> dict:
        with self.lock:
            return {"buffer": self.buffer.size, "added": self.buffer.added, "steps": self.steps,
                    "skipped_nonfinite": self.skipped_nonfinite, "skipped_grad": self.skipped_grad,
                    "last_grad_norm": self.last_grad_norm, "version": self.model.version,
                    "base_version": self.base_version, "samples_since_base": self.samples_since_base,
                    **({"epsilon": round(self.accountant.epsilon(), 4), "dp_steps": self.accountant.num_releases,
                        "budget_exhausted": self.budget_exhausted} if self.dp_enabled else {})}


def _checkpoints(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """(sequence, path) of online checkpoints, newest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(directory, n)) for n in names if (m := _CKPT.match(n))]
    return sorted(found, reverse=True)
