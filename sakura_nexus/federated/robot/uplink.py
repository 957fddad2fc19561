"""Robot side of the uplink (ROS-free): cumulative model deltas -> clipped, privatised, compressed
increments in the durable spool, with crash-consistent robot state.

``world_model_node`` publishes, every ``delta_period``, the *cumulative* change of its weights since the
global base version it started from (``OnlineLearner.delta_since_base()``), with a sequence number that
never repeats. Sending those as they are would make the aggregator add the same learning again and
again, so :class:`DeltaUplink` sends **increments**: ``inc = cum_seq - cum_prev`` while the base version
is unchanged, ``inc = cum_seq`` after the robot adopted a new base. Summed over a base epoch the
increments equal the latest cumulative delta (a lost or dropped message is covered by the next one).
Each increment is L2-clipped (``clip_norm``), optionally noised (:class:`LocalPrivatizer`, accounted),
encoded with :class:`ErrorFeedback` (the untransmitted residual stays on the robot) and appended to the
:class:`Spool` under ``(robot_id, sequence)``.

Robot state (last cumulative delta, base version, sample count, error-feedback residual, privacy
ledger) lives in ``<spool>/uplink/state.{0,1}.npz``. It is written to the slot *not* holding the
current state **before** the spool append, and the spool is the commit record: after a crash the newest
slot whose sequence the spool has seen (pending, acknowledged, merged or dropped) is the state, the
other slot otherwise. So a ``kill -9`` anywhere neither loses nor double-counts an increment, and the
residual and the epsilon spent survive restarts.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..common.codecs import CodecError, ErrorFeedback, decode, get_codec
from ..common.durable import atomic_write, check_robot_id, clean_temp_files, fsync_dir
from ..common.privacy import LocalPrivatizer, RDPAccountant, l2norm
from .spool import Spool, SpoolFull

__all__ = ["DeltaUplink", "UplinkResult", "UplinkState"]

_STATE_FORMAT = 1


@dataclass
class UplinkState:
    seq: int = 0  # last sequence number processed (0 = none)
    base_version: int | None = None
    samples: int = 0  # cumulative sample count of the last delta of this base
    cum: np.ndarray | None = None  # last cumulative delta of this base
    residual: np.ndarray | None = None  # error-feedback residual
    accountant: dict | None = None  # local-DP ledger (RDPAccountant.state_dict)
    codec: str = ""
    robot_id: str = ""
    spooled: int = 0  # increments appended (lifetime)

    def copy(self) -> UplinkState:
        return UplinkState(self.seq, self.base_version, self.samples,
                           None if self.cum is None else self.cum.copy(),
                           None if self.residual is None else self.residual.copy(),
                           json.loads(json.dumps(self.accountant)) if self.accountant else None,
                           self.codec, self.robot_id, self.spooled)


@dataclass
class UplinkResult:
    status: str  # "spooled" | "duplicate" | "unchanged" | "rejected"
    reason: str = ""
    seq: int = 0
    bytes_in: int = 0  # cumulative payload received
    bytes_out: int = 0  # encoded increment stored in the spool
    increment_norm: float = 0.0  # before clipping
    clipped: bool = False
    sample_count: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def spooled(self) -> bool:
        return self.status == "spooled"


def _slot_path(d: str, i: int) -> str:
    return os.path.join(d, f"state.{i}.npz")


class DeltaUplink:
    """See the module docstring. Not thread-safe: call from one thread (the node's executor)."""

    def __init__(self, spool: Spool, robot_id: str, *, codec: str = "topk0.01+q8", clip_norm: float = 10.0,
                 noise_multiplier: float = 0.0, expected_size: int | None = None, model_id: str = "world_model",
                 fsync: bool = True):
        self.spool = spool
        self.robot_id = check_robot_id(robot_id)
        self.model_id = model_id
        self.expected_size = expected_size
        self.fsync = fsync
        self.dir = os.path.join(spool.dir, "uplink")
        os.makedirs(self.dir, exist_ok=True)
        # one uplink per spool: a second node on the same directory would clobber the robot state
        self._owner = os.open(os.path.join(self.dir, ".owner"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._owner)
            raise RuntimeError(f"{spool.dir} is in use by another uplink (federated_sync_node)") from None
        clean_temp_files(self.dir)
        get_codec(codec)
        self.codec = codec
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.state, self.slot, self.recovery = self._recover()
        self.ef = ErrorFeedback(codec, self.state.residual.size if self.state.residual is not None else None)
        if self.state.residual is not None:
            self.ef.residual = self.state.residual.copy()
        self.privatizer = self._make_privatizer()

    def close(self) -> None:
        """Release the spool (the lock is also released when the process dies)."""
        if self._owner >= 0:
            os.close(self._owner)
            self._owner = -1

    # ------------------------------------------------------------------ configuration

    def _make_privatizer(self) -> LocalPrivatizer:
        pv = LocalPrivatizer(self.clip_norm, self.noise_multiplier)
        if self.state.accountant:
            pv.accountant = RDPAccountant.from_state_dict(self.state.accountant)
        return pv

    def set_codec(self, codec: str) -> None:
        """Switch codec; the residual (a plain weight vector) carries over."""
        get_codec(codec)
        residual = self.ef.residual
        self.ef = ErrorFeedback(codec, None)
        self.ef.residual = None if residual is None else residual.copy()
        self.codec = codec

    def set_privacy(self, clip_norm: float, noise_multiplier: float) -> None:
        self.clip_norm, self.noise_multiplier = float(clip_norm), float(noise_multiplier)
        self.state.accountant = self.privatizer.accountant.state_dict()
        self.privatizer = self._make_privatizer()

    @property
    def epsilon(self) -> float:
        acc = self.privatizer.accountant
        return acc.epsilon() if acc.num_releases else 0.0

    @property
    def residual_norm(self) -> float:
        return self.ef.residual_norm

    # ------------------------------------------------------------------ state persistence

    def _load_slot(self, i: int) -> UplinkState | None:
        path = _slot_path(self.dir, i)
        try:
            with open(path, "rb") as f:
                z = np.load(io.BytesIO(f.read()), allow_pickle=False)
                meta = json.loads(bytes(z["meta"]).decode())
                if meta.get("format") != _STATE_FORMAT:
                    return None
                st = UplinkState(seq=int(meta["seq"]), base_version=meta["base_version"],
                                 samples=int(meta["samples"]), accountant=meta.get("accountant"),
                                 codec=str(meta.get("codec", "")), robot_id=str(meta.get("robot_id", "")),
                                 spooled=int(meta.get("spooled", 0)))
                st.cum = z["cum"].astype(np.float32) if z["cum"].size else None
                st.residual = z["residual"].astype(np.float32) if z["residual"].size else None
                return st
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
            return None  # torn / foreign file: treated as absent (never expected: writes are atomic)

    def _write_slot(self, i: int, st: UplinkState) -> None:
        meta = {"format": _STATE_FORMAT, "seq": st.seq, "base_version": st.base_version, "samples": st.samples,
                "accountant": st.accountant, "codec": st.codec, "robot_id": self.robot_id,
                "spooled": st.spooled, "written_at": time.time()}
        buf = io.BytesIO()
        empty = np.zeros(0, np.float32)
        np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 cum=empty if st.cum is None else st.cum, residual=empty if st.residual is None else st.residual)
        atomic_write(_slot_path(self.dir, i), buf.getvalue(), fsync=self.fsync)

    def _drop_slot(self, i: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_slot_path(self.dir, i))
        if self.fsync:
            fsync_dir(self.dir)

    def _recover(self) -> tuple[UplinkState, int, str]:
        """(state, slot holding it, what happened) after a (re)start."""
        committed = self.spool.next_sequence(self.robot_id) - 1
        slots = [(i, self._load_slot(i)) for i in (0, 1)]
        good = [(i, s) for i, s in slots if s is not None and s.robot_id == self.robot_id]
        if self.expected_size is not None:
            good = [(i, s) for i, s in good
                    if (s.cum is None or s.cum.size == self.expected_size)
                    and (s.residual is None or s.residual.size == self.expected_size)]
        good.sort(key=lambda x: -x[1].seq)
        for i, s in good:
            if s.seq <= committed:
                why = "fresh" if s.seq == 0 else f"resumed at sequence {s.seq}"
                if good[0][1].seq > s.seq:
                    why += f" (state of sequence {good[0][1].seq} was never appended: rolled back)"
                return s, i, why
        st = UplinkState(robot_id=self.robot_id)
        return st, 1, "fresh" if not good else "fresh (no state matches the spool)"

    # ------------------------------------------------------------------ the uplink

    def submit(self, seq: int, base_version: int, payload: bytes, *, sample_count: int = 0,
               local_loss: float = float("nan")) -> UplinkResult:
        """Process one cumulative delta (codec payload) published with ``seq``/``base_version``."""
        seq, base_version = int(seq), int(base_version)
        res = UplinkResult("rejected", seq=seq, bytes_in=len(payload))
        if seq < 1:
            res.reason = "bad_seq"
            return res
        if seq <= self.state.seq:
            res.status, res.reason = "duplicate", "sequence already processed"
            return res
        try:
            cum = decode(payload).ravel().astype(np.float32)
        except CodecError as e:
            res.reason = f"corrupt: {e}"
            return res
        if self.expected_size is not None and cum.size != self.expected_size:
            res.reason = f"shape: {cum.size} values, model has {self.expected_size}"
            return res
        if not np.all(np.isfinite(cum)):
            res.reason = "nonfinite"
            return res
        old = self.state
        same_base = old.base_version == base_version and old.cum is not None and old.cum.size == cum.size
        inc = cum - old.cum if same_base else cum
        samples = int(sample_count)
        res.sample_count = samples - old.samples if same_base and samples >= old.samples else samples
        if same_base and not np.any(inc):
            # nothing learned since the last cut (learning paused): nothing to send, state unchanged
            res.status, res.reason = "unchanged", "no change since the previous delta"
            return res
        res.increment_norm = l2norm(inc)
        res.clipped = res.increment_norm > self.clip_norm
        ledger = self.privatizer.accountant.state_dict()
        residual = None if self.ef.residual is None else self.ef.residual.copy()
        try:
            released = self.privatizer(inc)
            out = self.ef.encode(released)
        except (ValueError, CodecError) as e:
            self._restore(ledger, residual)
            res.reason = f"encode: {e}"
            return res
        new = UplinkState(seq=seq, base_version=base_version, samples=samples, cum=cum,
                          residual=self.ef.residual.copy(), accountant=self.privatizer.accountant.state_dict(),
                          codec=self.codec, robot_id=self.robot_id, spooled=old.spooled + 1)
        slot = 1 - self.slot
        self._write_slot(slot, new)  # before the append: the spool decides which slot is committed
        try:
            ok = self.spool.append(self.robot_id, seq, out, base_version=base_version,
                                   sample_count=max(0, res.sample_count),
                                   local_loss=float(local_loss) if math.isfinite(local_loss) else 0.0,
                                   model_id=self.model_id)
        except (SpoolFull, OSError, ValueError, CodecError) as e:
            ok, res.reason = False, f"spool: {e}"
        if not ok:
            self._drop_slot(slot)
            self._restore(ledger, residual)
            if not res.reason:
                res.status, res.reason = "duplicate", "spool has this sequence"
            return res
        self.state, self.slot = new, slot
        res.status, res.bytes_out = "spooled", len(out)
        return res

    def _restore(self, ledger: dict, residual: np.ndarray | None) -> None:
        self.privatizer.accountant = RDPAccountant.from_state_dict(ledger)
        self.ef.residual = residual
