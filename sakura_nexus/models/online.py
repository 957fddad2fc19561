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
        rows = torch.from_numpy(self._data[rng.integers(0, self.size, n)])
        e = self._e
        return {"embedding": rows[:, :e], "proprio": rows[:, e:e + 6], "action": rows[:, e + 6:e + 8],
                "next_embedding": rows[:, e + 8:2 * e + 8], "next_proprio": rows[:, 2 * e + 8:2 * e + 14],
                "collided": rows[:, -1]}


class OnlineLearner:
    """Guarded online adaptation of a :class:`WorldModel` (trained in place)."""

    def __init__(self, model: WorldModel, lr: float = 3e-4, buffer_size: int = 5000, batch_size: int = 32,
                 grad_clip: float = 10.0, w_collision: float = 1.0, trainable: str = "dynamics",
                 min_samples: int | None = None, seed: int = 0):
        if trainable not in ("dynamics", "all"):
            raise ValueError("trainable must be 'dynamics' or 'all'")
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
                 if trainable == "all" or n.startswith(TRAINABLE_PREFIXES)]
        self._params = [p for _, p in learn]
        for p in model.parameters():
            p.requires_grad_(any(p is q for q in self._params))
        self.lr = float(lr)
        self.optimizer = torch.optim.Adam(self._params, lr=self.lr)
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
                self.optimizer.step()
                self.steps += 1
                self.samples_since_base += self.batch_size
                value = float(loss.detach())
                self._loss_sum += value
                self._loss_n += 1
                self.snapshot = WorldModelSnapshot(self.model)
            return value

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
        self.optimizer = torch.optim.Adam(self._params, lr=self.lr)
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
                    "loss_n": self._loss_n, "extra": dict(extra or {})}
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
                self.optimizer = torch.optim.Adam(self._params, lr=self.lr)
                self.snapshot = WorldModelSnapshot(self.model)
            return {**meta["extra"], **meta, "path": path, "skipped_corrupt": skipped}
        return None

    def stats(self) -> dict:
        with self.lock:
            return {"buffer": self.buffer.size, "added": self.buffer.added, "steps": self.steps,
                    "skipped_nonfinite": self.skipped_nonfinite, "skipped_grad": self.skipped_grad,
                    "last_grad_norm": self.last_grad_norm, "version": self.model.version,
                    "base_version": self.base_version, "samples_since_base": self.samples_since_base}


def _checkpoints(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """(sequence, path) of online checkpoints, newest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(directory, n)) for n in names if (m := _CKPT.match(n))]
    return sorted(found, reverse=True)
