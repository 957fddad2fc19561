"""Durable on-robot spool of encoded model deltas, plus an inbox for global models coming back.

Layout of a spool directory::

    <dir>/.lock                         flock: every mutation holds it (ROS node and ClientApp may race)
    <dir>/state.json                    counters, acknowledged ranges, sent marks (atomic replace)
    <dir>/deltas/<robot>__<seq>.delta   one entry per (possibly merged) delta
    <dir>/inbox/<model>__v<ver>.model   global models received from the aggregator
    <dir>/quarantine/                   entries that failed their checksum (never expected; counted)

Every file is written atomically (temp file, fsync, rename, fsync of the directory), so after a crash
or ``kill -9`` a reader sees either the complete entry or nothing; temp leftovers are removed on open.
``append`` returns only after the entry is durable: a returned append survives power loss.

Entries are de-duplicated by ``(robot_id, sequence)``: a sequence that is pending, covered by a merged
entry, or already acknowledged is refused (counted as ``duplicates``).

Full policy (``max_bytes`` exceeded by an append):

* ``"merge"`` (default): sum the two oldest *unsent* entries of a robot into one entry covering both
  sequence ranges (base version = the older one, sample counts added, re-encoded with the newer codec)
  until the new entry fits; falls back to dropping the oldest unsent entry. Merged deltas lose nothing
  for lossless codecs; the server sees one update of ``seq_first..seq``. Counted in ``merged``.
* ``"drop_oldest"``: delete the oldest unsent entries. Counted in ``dropped`` / ``dropped_samples``.
* ``"reject"``: raise :class:`SpoolFull`; the caller keeps the delta (e.g. in its error feedback).

Entries already handed to the uplink (``mark_sent``) are never merged: the server may have applied
them already and merging would re-send part of them under a new range. They are removed by ``ack``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from .codecs import CodecError, decode, encode, parse_header
from .durable import (
    SeqRanges,
    atomic_write,
    atomic_write_json,
    check_robot_id,
    clean_temp_files,
    dir_lock,
    fsync_dir,
)
from .privacy import l2norm

POLICIES = ("merge", "drop_oldest", "reject")
_MAGIC = b"SKSP"
_HEAD = struct.Struct("<4sIQ")  # magic, meta_len, payload_len

__all__ = ["Inbox", "POLICIES", "Spool", "SpoolEntry", "SpoolError", "SpoolFull"]


class SpoolError(RuntimeError):
    pass


class SpoolFull(SpoolError):
    pass


@dataclass
class SpoolEntry:
    """Metadata of one spooled delta (the payload is read on demand with :meth:`Spool.read`)."""

    robot_id: str
    seq: int  # last sequence number covered
    seq_first: int  # first sequence number covered (== seq unless merged)
    base_version: int
    codec: str
    sample_count: int = 0
    local_loss: float = 0.0
    l2_norm: float = 0.0
    model_id: str = "world_model"
    created_at: float = 0.0
    payload_len: int = 0
    merged: int = 1  # how many original deltas this entry sums
    path: str = field(default="", repr=False)

    @property
    def key(self) -> tuple[str, int]:
        return (self.robot_id, self.seq)

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def _pack_file(meta: dict, payload: bytes) -> bytes:
    m = json.dumps(meta, sort_keys=True).encode()
    body = m + payload
    return _HEAD.pack(_MAGIC, len(m), len(payload)) + body + hashlib.sha256(body).digest()


def _unpack_file(data: bytes) -> tuple[dict, bytes]:
    if len(data) < _HEAD.size + 32:
        raise SpoolError("entry truncated")
    magic, mlen, plen = _HEAD.unpack_from(data, 0)
    if magic != _MAGIC:
        raise SpoolError("bad entry magic")
    if len(data) != _HEAD.size + mlen + plen + 32:
        raise SpoolError("entry length mismatch")
    body = data[_HEAD.size:_HEAD.size + mlen + plen]
    if hashlib.sha256(body).digest() != data[-32:]:
        raise SpoolError("entry checksum mismatch")
    return json.loads(body[:mlen].decode()), bytes(body[mlen:])


def _read_meta(f, size: int) -> dict:
    head = f.read(_HEAD.size)
    if len(head) < _HEAD.size:
        raise SpoolError("entry truncated")
    magic, mlen, plen = _HEAD.unpack(head)
    if magic != _MAGIC:
        raise SpoolError("bad entry magic")
    if size != _HEAD.size + mlen + plen + 32:
        raise SpoolError("entry length mismatch")
    return json.loads(f.read(mlen).decode())


def _entry_name(robot_id: str, seq: int) -> str:
    return f"{robot_id}__{seq:020d}.delta"


class Spool:
    """Durable, bounded, de-duplicating spool of encoded deltas (see module docstring)."""

    def __init__(self, directory: str, max_bytes: int = 256 << 20, policy: str = "merge", *,
                 fsync: bool = True):
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.dir = os.path.abspath(directory)
        self.max_bytes = int(max_bytes)
        self.policy = policy
        self.fsync = fsync
        self.deltas_dir = os.path.join(self.dir, "deltas")
        self.quarantine_dir = os.path.join(self.dir, "quarantine")
        for d in (self.dir, self.deltas_dir, self.quarantine_dir):
            os.makedirs(d, exist_ok=True)
        self.inbox = Inbox(os.path.join(self.dir, "inbox"), fsync=fsync)
        with dir_lock(self.dir):
            clean_temp_files(self.deltas_dir)
            clean_temp_files(self.dir)
            self._drop_superseded()

    def _drop_superseded(self) -> None:
        """Crash recovery for merge: an entry whose range is inside a merged entry's range is stale."""
        entries = self._scan()
        for e in entries:
            for m in entries:
                if m is not e and m.robot_id == e.robot_id and m.seq_first <= e.seq_first \
                        and e.seq <= m.seq and m.seq != e.seq:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
                    break

    # ------------------------------------------------------------------ state

    def _state_path(self) -> str:
        return os.path.join(self.dir, "state.json")

    def _load_state(self) -> dict:
        try:
            with open(self._state_path(), "rb") as f:
                st = json.loads(f.read().decode())
        except FileNotFoundError:
            st = {}
        st.setdefault("counters", {})
        st.setdefault("acked", {})
        st.setdefault("sent", {})
        return st

    def _save_state(self, st: dict) -> None:
        atomic_write_json(self._state_path(), st, fsync=self.fsync)

    @staticmethod
    def _bump(st: dict, name: str, n: int = 1) -> None:
        st["counters"][name] = st["counters"].get(name, 0) + n

    # ------------------------------------------------------------------ listing

    def _scan(self, verify: bool = False) -> list[SpoolEntry]:
        """Entries on disk. Reads only the header and metadata (and checks the file length) unless
        ``verify``; the payload hash is always checked by :meth:`read`."""
        out = []
        for name in os.listdir(self.deltas_dir):
            if not name.endswith(".delta") or name.startswith("."):
                continue
            path = os.path.join(self.deltas_dir, name)
            try:
                with open(path, "rb") as f:
                    if verify:
                        meta, _ = _unpack_file(f.read())
                    else:
                        meta = _read_meta(f, os.fstat(f.fileno()).st_size)
                e = SpoolEntry(**meta)
                e.path = path
            except FileNotFoundError:
                continue  # acknowledged by another process meanwhile
            except (SpoolError, OSError, ValueError, TypeError):
                self._quarantine(path)
                continue
            out.append(e)
        out.sort(key=lambda e: (e.created_at, e.robot_id, e.seq))
        return out

    def _quarantine(self, path: str) -> None:
        with dir_lock(self.dir):
            if not os.path.exists(path):
                return
            with contextlib.suppress(OSError):
                os.replace(path, os.path.join(self.quarantine_dir, os.path.basename(path)))
            st = self._load_state()
            self._bump(st, "corrupt")
            self._save_state(st)

    def verify(self) -> int:
        """Check every entry's hash now; corrupt ones are quarantined. Returns the number of good entries."""
        with dir_lock(self.dir):
            return len(self._scan(verify=True))

    def pending(self, robot_id: str | None = None, *, unsent_only: bool = False) -> list[SpoolEntry]:
        """Entries not yet acknowledged, oldest first."""
        with dir_lock(self.dir):
            entries = self._scan()
            sent = SeqRanges(self._load_state()["sent"])
        if robot_id is not None:
            entries = [e for e in entries if e.robot_id == robot_id]
        if unsent_only:
            entries = [e for e in entries if not sent.contains(e.robot_id, e.seq)]
        return entries

    def read(self, entry: SpoolEntry | str) -> bytes:
        """Payload bytes of an entry, verified; a corrupt entry is quarantined and SpoolError raised."""
        path = entry.path if isinstance(entry, SpoolEntry) else entry
        with open(path, "rb") as f:
            data = f.read()
        try:
            _, payload = _unpack_file(data)
        except SpoolError:
            self._quarantine(path)
            raise
        return payload

    def bytes_used(self) -> int:
        total = 0
        for name in os.listdir(self.deltas_dir):
            if name.endswith(".delta"):
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(self.deltas_dir, name))
        return total

    def stats(self) -> dict:
        with dir_lock(self.dir):
            st = self._load_state()
            entries = self._scan()
        sent = SeqRanges(st["sent"])
        c = dict(st["counters"])
        c.update(pending=len(entries), bytes=sum(os.path.getsize(e.path) for e in entries),
                 sent_pending=sum(1 for e in entries if sent.contains(e.robot_id, e.seq)))
        return c

    def next_sequence(self, robot_id: str) -> int:
        """1 + the highest sequence ever seen for this robot (pending or acknowledged); starts at 1."""
        with dir_lock(self.dir):
            st = self._load_state()
            hi = SeqRanges(st["acked"]).max(robot_id) or 0
            for e in self._scan():
                if e.robot_id == robot_id:
                    hi = max(hi, e.seq)
            hi = max(hi, int(st.get("last_seq", {}).get(robot_id, 0)))
        return hi + 1

    # ------------------------------------------------------------------ append

    def append(self, robot_id: str, seq: int, payload: bytes, *, base_version: int,
               sample_count: int = 0, local_loss: float = 0.0, model_id: str = "world_model",
               l2_norm: float | None = None) -> bool:
        """Durably add an encoded delta. Returns False (and counts it) for a duplicate ``(robot_id, seq)``.

        The payload must be a valid codec payload (it is parsed and hash-checked here).
        Raises :class:`SpoolFull` if it cannot be made to fit under the policy.
        """
        check_robot_id(robot_id)
        seq = int(seq)
        if seq < 1:
            raise ValueError("sequence numbers start at 1")
        header = parse_header(payload)
        if l2_norm is None:
            l2_norm = l2norm(decode(payload))
        entry = SpoolEntry(robot_id=robot_id, seq=seq, seq_first=seq, base_version=int(base_version),
                           codec=header.codec, sample_count=int(sample_count), local_loss=float(local_loss),
                           l2_norm=float(l2_norm), model_id=model_id, created_at=time.time(),
                           payload_len=len(payload))
        data = _pack_file(entry.meta(), payload)
        if len(data) > self.max_bytes:
            raise SpoolFull(f"entry of {len(data)} bytes exceeds spool max_bytes={self.max_bytes}")
        with dir_lock(self.dir):
            st = self._load_state()
            entries = self._scan()
            acked = SeqRanges(st["acked"])
            if acked.contains(robot_id, seq) or any(
                    e.robot_id == robot_id and e.seq_first <= seq <= e.seq for e in entries):
                self._bump(st, "duplicates")
                self._save_state(st)
                return False
            used = sum(os.path.getsize(e.path) for e in entries)
            written = False
            if used + len(data) > self.max_bytes:
                written = self._make_room(st, entries, used, entry, payload)
            if not written:
                path = os.path.join(self.deltas_dir, _entry_name(robot_id, seq))
                atomic_write(path, data, fsync=self.fsync)
            self._bump(st, "appended")
            st.setdefault("last_seq", {})[robot_id] = max(seq, int(st.get("last_seq", {}).get(robot_id, 0)))
            self._save_state(st)
        return True

    def _make_room(self, st: dict, entries: list[SpoolEntry], used: int, incoming: SpoolEntry,
                   payload: bytes) -> bool:
        """Apply the full policy. Returns True if the incoming delta was already written (merged)."""
        if self.policy == "reject":
            self._bump(st, "rejected_full")
            self._save_state(st)
            raise SpoolFull(f"spool full ({used} + {incoming.payload_len} > {self.max_bytes} bytes)")
        sent = SeqRanges(st["sent"])
        need = len(_pack_file(incoming.meta(), payload))
        written = False
        while used + need > self.max_bytes:
            unsent = [e for e in entries if not sent.contains(e.robot_id, e.seq)]
            unsent.sort(key=lambda e: (e.robot_id, e.seq))
            done = False
            if self.policy == "merge":
                pairs = [(a, b) for a, b in zip(unsent, unsent[1:], strict=False) if a.robot_id == b.robot_id]
                for a, b in pairs:
                    try:
                        new = self._merge(a, self.read(a), b, self.read(b))
                    except (CodecError, SpoolError, ValueError):
                        continue
                    entries = [e for e in entries if e.path not in (a.path, b.path)] + [new]
                    done = True
                    break
                if not done and not written:
                    # no pair left among stored entries: fold the newest unsent one into the incoming delta
                    mine = [e for e in unsent if e.robot_id == incoming.robot_id and e.seq < incoming.seq]
                    if mine:
                        a = mine[-1]
                        try:
                            new = self._merge(a, self.read(a), incoming, payload)
                        except (CodecError, SpoolError, ValueError):
                            new = None
                        if new is not None:
                            entries = [e for e in entries if e.path != a.path] + [new]
                            written, done, need = True, True, 0
            if done:
                self._bump(st, "merged")
            else:
                victims = sorted(unsent, key=lambda e: (e.created_at, e.seq))
                if not victims:
                    self._save_state(st)
                    raise SpoolFull(f"spool full and every entry is in flight ({used} bytes)")
                v = victims[0]
                os.unlink(v.path)
                self._bump(st, "dropped", v.merged)
                self._bump(st, "dropped_samples", v.sample_count)
                # a dropped sequence must never be accepted again
                acked = SeqRanges(st["acked"])
                acked.add(v.robot_id, v.seq_first, v.seq)
                st["acked"] = acked.to_json()
                entries = [e for e in entries if e.path != v.path]
            used = sum(os.path.getsize(e.path) for e in entries)
        self._save_state(st)
        return written

    def _merge(self, a: SpoolEntry, pa: bytes, b: SpoolEntry, pb: bytes) -> SpoolEntry:
        """Sum a (older) and b into one entry stored under b's name. The merged file is durable before
        a disappears; a crash in between leaves a inside the merged range, which open() cleans up."""
        xa, xb = decode(pa), decode(pb)
        if xa.shape != xb.shape:
            raise SpoolError("cannot merge deltas of different shapes")
        total = (xa.astype(np.float32) + xb.astype(np.float32))
        payload = encode(total, b.codec)
        n = a.sample_count + b.sample_count
        loss = (a.local_loss * a.sample_count + b.local_loss * b.sample_count) / n if n else b.local_loss
        new = SpoolEntry(robot_id=b.robot_id, seq=b.seq, seq_first=min(a.seq_first, b.seq_first),
                         base_version=min(a.base_version, b.base_version), codec=b.codec, sample_count=n,
                         local_loss=float(loss), l2_norm=l2norm(total),
                         model_id=b.model_id, created_at=a.created_at, payload_len=len(payload),
                         merged=a.merged + b.merged)
        path = os.path.join(self.deltas_dir, _entry_name(b.robot_id, b.seq))
        atomic_write(path, _pack_file(new.meta(), payload), fsync=self.fsync)  # replaces b atomically
        os.unlink(a.path)
        if self.fsync:
            fsync_dir(self.deltas_dir)
        new.path = path
        return new

    # ------------------------------------------------------------------ uplink side

    def mark_sent(self, entries: Iterable[SpoolEntry | tuple[str, int]]) -> None:
        """Record that entries were handed to the uplink (they will no longer be merged)."""
        with dir_lock(self.dir):
            st = self._load_state()
            sent = SeqRanges(st["sent"])
            for e in entries:
                r, s = (e.robot_id, e.seq) if isinstance(e, SpoolEntry) else e
                sent.add(r, int(s))
            st["sent"] = sent.to_json()
            self._save_state(st)

    def ack(self, keys: Iterable[tuple[str, int] | tuple[str, int, int]]) -> int:
        """Remove entries the aggregator accepted (or permanently rejected). Keys are ``(robot, seq)``
        or ``(robot, seq_first, seq)``. Returns the number of entries removed."""
        removed = 0
        with dir_lock(self.dir):
            st = self._load_state()
            acked = SeqRanges(st["acked"])
            entries = {(e.robot_id, e.seq): e for e in self._scan()}
            for k in keys:
                robot, seq = k[0], int(k[-1])
                first = int(k[1]) if len(k) == 3 else seq
                e = entries.pop((robot, seq), None)
                if e is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)
                    removed += 1
                    first = min(first, e.seq_first)
                acked.add(robot, first, seq)
            st["acked"] = acked.to_json()
            self._bump(st, "acked", removed)
            # forget sent marks of removed entries
            sent = SeqRanges()
            old_sent = SeqRanges(st["sent"])
            for (r, s) in entries:
                if old_sent.contains(r, s):
                    sent.add(r, s)
            st["sent"] = sent.to_json()
            self._save_state(st)
        if removed and self.fsync:
            fsync_dir(self.deltas_dir)
        return removed

    def record_sync(self, bytes_sent: int, bytes_received: int, global_version: int) -> None:
        """Uplink bookkeeping for ``SyncStatus`` (the ClientApp calls it once per exchange)."""
        with dir_lock(self.dir):
            st = self._load_state()
            self._bump(st, "syncs")
            self._bump(st, "bytes_sent", int(bytes_sent))
            self._bump(st, "bytes_received", int(bytes_received))
            st["last_sync"] = {"time": time.time(), "global_version": int(global_version)}
            self._save_state(st)

    def last_sync(self) -> dict | None:
        """``{"time": unix seconds, "global_version": int}`` of the last exchange with the aggregator."""
        with dir_lock(self.dir):
            return self._load_state().get("last_sync")

    def is_acked(self, robot_id: str, seq: int) -> bool:
        with dir_lock(self.dir):
            return SeqRanges(self._load_state()["acked"]).contains(robot_id, seq)


class Inbox:
    """Global models received from the aggregator: ``put`` by the ClientApp, ``latest`` by the robot."""

    def __init__(self, directory: str, keep: int = 3, *, fsync: bool = True):
        self.dir = os.path.abspath(directory)
        self.keep = keep
        self.fsync = fsync
        os.makedirs(self.dir, exist_ok=True)
        clean_temp_files(self.dir)

    def _versions(self, model_id: str) -> list[tuple[int, str]]:
        out = []
        prefix = f"{model_id}__v"
        for name in os.listdir(self.dir):
            if name.startswith(prefix) and name.endswith(".model"):
                with contextlib.suppress(ValueError):
                    out.append((int(name[len(prefix):-6]), os.path.join(self.dir, name)))
        return sorted(out)

    def put(self, version: int, payload: bytes, *, model_id: str = "world_model",
            meta: dict | None = None) -> bool:
        """Store a model version (verified payload). Returns False if it is not newer than the latest."""
        check_robot_id(model_id)
        parse_header(payload)
        with dir_lock(self.dir):
            vs = self._versions(model_id)
            if vs and vs[-1][0] >= version:
                return False
            m = {"version": int(version), "model_id": model_id, "received_at": time.time(),
                 "sha256": hashlib.sha256(payload).hexdigest(), **(meta or {})}
            atomic_write(os.path.join(self.dir, f"{model_id}__v{int(version):010d}.model"),
                         _pack_file(m, payload), fsync=self.fsync)
            for _, p in vs[: max(0, len(vs) + 1 - self.keep)]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        return True

    def latest_version(self, model_id: str = "world_model") -> int:
        vs = self._versions(model_id)
        return vs[-1][0] if vs else -1

    def latest(self, model_id: str = "world_model") -> tuple[int, bytes, dict] | None:
        """(version, payload, meta) of the newest valid model, or None."""
        for version, path in reversed(self._versions(model_id)):
            try:
                with open(path, "rb") as f:
                    meta, payload = _unpack_file(f.read())
                parse_header(payload)
                return version, payload, meta
            except (OSError, SpoolError, CodecError, ValueError):
                continue
        return None

