"""Durable on-robot spool of encoded model deltas, plus an inbox for global models coming back.

All state of a spool directory is one SQLite database, ``<dir>/spool.db`` (:class:`~.durable.Database`:
WAL journal, ``synchronous=FULL``; the ROS node and the forked ClientApp processes share it through
SQLite's own locking, each process with its own connections)::

    entries     one row per (possibly merged) delta: metadata, sent flag, accounted size, sha256, payload
    acked       (robot_id, first, last): acknowledged or dropped sequence ranges, for de-duplication
    sequences   the highest sequence ever appended per robot
    counters    appended, duplicates, merged, dropped, dropped_samples, rejected_full, acked, corrupt, syncs, ...
    kv          last_sync; the migration record
    inbox       global models received from the aggregator (:class:`Inbox`, newest ``keep`` per model)
    quarantine  entries that failed their checksum (never expected; counted as ``corrupt``)

Every method is one transaction, so each multi-step update is all-or-nothing: an append with its de-dup
check and its full-policy merges or drops, an ack with the removal of the entries and the de-dup ranges
that keep them from coming back, an inbox put with its pruning. After a crash or ``kill -9`` a reader sees
the state before or after it, nothing in between. ``append`` returns only after its commit is durable:
a returned append survives power loss (``fsync=False``: ``synchronous=NORMAL``, still atomic).

Entries are de-duplicated by ``(robot_id, sequence)``: a sequence that is pending, covered by a merged
entry, or already acknowledged is refused (counted as ``duplicates``).

Full policy (``max_bytes`` exceeded by an append; an entry counts its payload plus ``ENTRY_OVERHEAD``):

* ``"merge"`` (default): sum the two oldest *unsent* entries of a robot into one entry covering both
  sequence ranges (base version = the older one, sample counts added, re-encoded with the newer codec)
  until the new entry fits; falls back to dropping the oldest unsent entry. Merged deltas lose nothing
  for lossless codecs; the server sees one update of ``seq_first..seq``. Counted in ``merged``.
* ``"drop_oldest"``: delete the oldest unsent entries. Counted in ``dropped`` / ``dropped_samples``.
* ``"reject"``: raise :class:`SpoolFull`; the caller keeps the delta (e.g. in its error feedback).

Entries already handed to the uplink (``mark_sent``) are never merged: the server may have applied
them already and merging would re-send part of them under a new range. They are removed by ``ack``.

A directory written by the file-based spool of earlier versions (``state.json``, ``deltas/``, ``inbox/``,
``quarantine/``) is imported on first open, in one transaction; its files are removed (``state.json``
renamed ``state.json.migrated``) only after that commit (:func:`migrate_file_spool`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ..common.codecs import CodecError, decode, encode, parse_header
from ..common.durable import Database, SeqRanges, check_robot_id, clean_temp_files, load_ranges, store_ranges
from ..common.privacy import l2norm

POLICIES = ("merge", "drop_oldest", "reject")
DB_NAME = "spool.db"
ENTRY_OVERHEAD = 256  # bytes accounted per entry for its metadata, on top of the payload (against max_bytes)

__all__ = ["DB_NAME", "ENTRY_OVERHEAD", "Inbox", "POLICIES", "Spool", "SpoolEntry", "SpoolError", "SpoolFull",
           "migrate_file_spool"]


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

    @property
    def key(self) -> tuple[str, int]:
        return (self.robot_id, self.seq)

    def meta(self) -> dict:
        return asdict(self)


_META = tuple(f.name for f in fields(SpoolEntry))
_COLS = ", ".join(_META)
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
         robot_id TEXT NOT NULL, seq INTEGER NOT NULL, seq_first INTEGER NOT NULL, base_version INTEGER NOT NULL,
         codec TEXT NOT NULL, sample_count INTEGER NOT NULL, local_loss REAL, l2_norm REAL,  -- NULL: NaN
         model_id TEXT NOT NULL, created_at REAL NOT NULL, payload_len INTEGER NOT NULL, merged INTEGER NOT NULL,
         sent INTEGER NOT NULL DEFAULT 0, size INTEGER NOT NULL, sha256 BLOB NOT NULL,
         payload BLOB NOT NULL,  -- last: listing the metadata never reads the payload's overflow pages
         PRIMARY KEY (robot_id, seq))""",
    """CREATE TABLE IF NOT EXISTS acked (robot_id TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
         PRIMARY KEY (robot_id, first))""",
    "CREATE TABLE IF NOT EXISTS sequences (robot_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS inbox (model_id TEXT NOT NULL, version INTEGER NOT NULL, meta TEXT NOT NULL,
         sha256 BLOB NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (model_id, version))""",
    """CREATE TABLE IF NOT EXISTS quarantine (id INTEGER PRIMARY KEY, robot_id TEXT, seq INTEGER,
         reason TEXT NOT NULL, at REAL NOT NULL, meta TEXT, payload BLOB)""",
)


def _entry(row: Sequence) -> SpoolEntry:
    """A SpoolEntry from its ``_META`` columns (SQLite stores a NaN float as NULL: it comes back as NaN)."""
    d: dict[str, Any] = dict(zip(_META, row, strict=False))
    for k in ("local_loss", "l2_norm"):
        if d[k] is None:
            d[k] = math.nan
    return SpoolEntry(**d)


def _bump(c: sqlite3.Connection, name: str, n: int = 1) -> None:
    c.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
              "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, int(n)))


def _key(e: SpoolEntry | tuple[str, int]) -> tuple[str, int]:
    return e.key if isinstance(e, SpoolEntry) else (e[0], int(e[1]))


def _insert(c: sqlite3.Connection, e: SpoolEntry, payload: bytes, *, sent: bool = False) -> None:
    c.execute(f"INSERT OR REPLACE INTO entries ({_COLS}, sent, size, sha256, payload) "
              f"VALUES ({', '.join('?' * len(_META))}, ?, ?, ?, ?)",
              (*(getattr(e, k) for k in _META), int(sent), len(payload) + ENTRY_OVERHEAD,
               hashlib.sha256(payload).digest(), payload))


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
        os.makedirs(self.dir, exist_ok=True)
        self.db = Database(os.path.join(self.dir, DB_NAME), _SCHEMA, fsync=fsync)
        migrate_file_spool(self.db, self.dir)
        self.inbox = Inbox(self.dir, fsync=fsync)

    # ------------------------------------------------------------------ listing

    def pending(self, robot_id: str | None = None, *, unsent_only: bool = False) -> list[SpoolEntry]:
        """Entries not yet acknowledged, oldest first. An entry whose stored payload length disagrees with
        its metadata is quarantined here (the payload hash is checked by :meth:`read`)."""
        where = [w for w, on in (("robot_id = ?", robot_id is not None), ("sent = 0", unsent_only)) if on]
        q = (f"SELECT {_COLS}, length(payload) FROM entries" + (" WHERE " + " AND ".join(where) if where else "")
             + " ORDER BY created_at, robot_id, seq")
        with self.db.read() as c:
            rows = c.execute(q, (robot_id,) if robot_id is not None else ()).fetchall()
        out = []
        for row in rows:
            e = _entry(row)
            if row[-1] != e.payload_len:
                self._quarantine(e.key, "length")
                continue
            out.append(e)
        return out

    def read(self, entry: SpoolEntry | tuple[str, int]) -> bytes:
        """Payload bytes of an entry, verified; a corrupt entry is quarantined and SpoolError raised
        (also raised for an entry that is gone, e.g. acknowledged meanwhile)."""
        key = _key(entry)
        with self.db.read() as c:
            row = c.execute("SELECT payload, sha256 FROM entries WHERE robot_id = ? AND seq = ?", key).fetchone()
        if row is None:
            raise SpoolError(f"no entry {key[0]}:{key[1]}")
        payload = bytes(row[0])
        if hashlib.sha256(payload).digest() != bytes(row[1]):
            self._quarantine(key, "checksum")
            raise SpoolError(f"entry {key[0]}:{key[1]}: checksum mismatch (quarantined)")
        return payload

    def _quarantine(self, key: tuple[str, int], reason: str) -> None:
        with self.db.write() as c:
            row = c.execute(f"SELECT {_COLS}, payload FROM entries WHERE robot_id = ? AND seq = ?", key).fetchone()
            if row is None:
                return
            c.execute("INSERT INTO quarantine (robot_id, seq, reason, at, meta, payload) VALUES (?, ?, ?, ?, ?, ?)",
                      (*key, reason, time.time(), json.dumps(_entry(row).meta()), row[-1]))
            c.execute("DELETE FROM entries WHERE robot_id = ? AND seq = ?", key)
            _bump(c, "corrupt")

    def verify(self) -> int:
        """Check every entry's hash now; corrupt ones are quarantined. Returns the number of good entries."""
        with self.db.read() as c:
            keys = c.execute("SELECT robot_id, seq FROM entries").fetchall()
        good = 0
        for k in keys:
            with contextlib.suppress(SpoolError):
                self.read(k)
                good += 1
        return good

    def bytes_used(self) -> int:
        with self.db.read() as c:
            return int(c.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    def stats(self) -> dict:
        with self.db.read() as c:
            st = {k: int(v) for k, v in c.execute("SELECT name, value FROM counters")}
            n, used, sent = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(SUM(sent), 0) FROM entries").fetchone()
        st.update(pending=int(n), bytes=int(used), sent_pending=int(sent))
        return st

    def next_sequence(self, robot_id: str) -> int:
        """1 + the highest sequence ever seen for this robot (pending or acknowledged); starts at 1."""
        with self.db.read() as c:
            hi = c.execute("SELECT MAX(x) FROM (SELECT MAX(last) AS x FROM acked WHERE robot_id = ?1 "
                           "UNION ALL SELECT MAX(seq) FROM entries WHERE robot_id = ?1 "
                           "UNION ALL SELECT last_seq FROM sequences WHERE robot_id = ?1)", (robot_id,)).fetchone()[0]
        return int(hi or 0) + 1

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
        size = len(payload) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            raise SpoolFull(f"entry of {size} bytes exceeds spool max_bytes={self.max_bytes}")
        full: SpoolFull | None = None
        with self.db.write() as c:
            dup = c.execute("SELECT EXISTS (SELECT 1 FROM acked WHERE robot_id = ?1 AND first <= ?2 AND last >= ?2) "
                            "OR EXISTS (SELECT 1 FROM entries WHERE robot_id = ?1 AND seq >= ?2 AND seq_first <= ?2)",
                            (robot_id, seq)).fetchone()[0]
            if dup:
                _bump(c, "duplicates")
                return False
            written = False
            used = c.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
            if used + size > self.max_bytes:
                try:
                    written = self._make_room(c, used, entry, payload)
                except SpoolFull as e:  # its counters (and any drops) commit; the append does not happen
                    full = e
            if full is None:
                if not written:
                    _insert(c, entry, payload)
                _bump(c, "appended")
                c.execute("INSERT INTO sequences (robot_id, last_seq) VALUES (?, ?) "
                          "ON CONFLICT (robot_id) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
                          (robot_id, seq))
        if full is not None:
            raise full
        return True

    def _make_room(self, c: sqlite3.Connection, used: int, incoming: SpoolEntry, payload: bytes) -> bool:
        """Apply the full policy inside the append's transaction. Returns True if the incoming delta was
        already written (merged into the newest unsent entry of its robot)."""
        if self.policy == "reject":
            _bump(c, "rejected_full")
            raise SpoolFull(f"spool full ({used} + {incoming.payload_len} > {self.max_bytes} bytes)")
        need = len(payload) + ENTRY_OVERHEAD
        written = False
        while used + need > self.max_bytes:
            unsent = [_entry(r) for r in c.execute(
                f"SELECT {_COLS} FROM entries WHERE sent = 0 ORDER BY robot_id, seq")]
            done = False
            if self.policy == "merge":
                for a, b in zip(unsent, unsent[1:], strict=False):
                    if a.robot_id != b.robot_id:
                        continue
                    try:
                        self._merge(c, a, self.read(a), b, self.read(b))
                    except (CodecError, SpoolError, ValueError):
                        continue
                    done = True
                    break
                if not done and not written:
                    # no pair left among stored entries: fold the newest unsent one into the incoming delta
                    mine = [e for e in unsent if e.robot_id == incoming.robot_id and e.seq < incoming.seq]
                    if mine:
                        with contextlib.suppress(CodecError, SpoolError, ValueError):
                            self._merge(c, mine[-1], self.read(mine[-1]), incoming, payload)
                            written, done, need = True, True, 0
            if done:
                _bump(c, "merged")
            else:
                if not unsent:
                    raise SpoolFull(f"spool full and every entry is in flight ({used} bytes)")
                v = min(unsent, key=lambda e: (e.created_at, e.seq))
                c.execute("DELETE FROM entries WHERE robot_id = ? AND seq = ?", v.key)
                _bump(c, "dropped", v.merged)
                _bump(c, "dropped_samples", v.sample_count)
                # a dropped sequence must never be accepted again
                acked = load_ranges(c, "acked", v.robot_id)
                acked.add(v.robot_id, v.seq_first, v.seq)
                store_ranges(c, "acked", acked, [v.robot_id])
            used = c.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0]
        return written

    @staticmethod
    def _merge(c: sqlite3.Connection, a: SpoolEntry, pa: bytes, b: SpoolEntry, pb: bytes) -> SpoolEntry:
        """Sum a (older) and b into one entry stored under b's key (a is deleted in the same transaction)."""
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
        c.execute("DELETE FROM entries WHERE robot_id = ? AND seq = ?", a.key)
        _insert(c, new, payload)
        return new

    # ------------------------------------------------------------------ uplink side

    def mark_sent(self, entries: Iterable[SpoolEntry | tuple[str, int]]) -> None:
        """Record that entries were handed to the uplink (they will no longer be merged)."""
        keys = [_key(e) for e in entries]
        with self.db.write() as c:
            c.executemany("UPDATE entries SET sent = 1 WHERE robot_id = ? AND seq = ?", keys)

    def ack(self, keys: Iterable[tuple[str, int] | tuple[str, int, int]]) -> int:
        """Remove entries the aggregator accepted (or permanently rejected). Keys are ``(robot, seq)``
        or ``(robot, seq_first, seq)``. Returns the number of entries removed.

        One transaction: the entries go and their ranges enter the de-dup table together (a crash
        anywhere in between leaves both as they were, and the aggregator's own de-dup absorbs the resend)."""
        ks = [(str(k[0]), int(k[1]) if len(k) == 3 else int(k[-1]), int(k[-1])) for k in keys]
        removed = 0
        with self.db.write() as c:
            acked = load_ranges(c, "acked")
            for robot, first, seq in ks:
                row = c.execute("SELECT seq_first FROM entries WHERE robot_id = ? AND seq = ?", (robot, seq)).fetchone()
                if row is not None:
                    c.execute("DELETE FROM entries WHERE robot_id = ? AND seq = ?", (robot, seq))
                    removed += 1
                    first = min(first, int(row[0]))
                acked.add(robot, first, seq)
            store_ranges(c, "acked", acked, sorted({r for r, _, _ in ks}))
            _bump(c, "acked", removed)
        if removed:
            self.db.vacuum_if_sparse()
        return removed

    def record_sync(self, bytes_sent: int, bytes_received: int, global_version: int) -> None:
        """Uplink bookkeeping for ``SyncStatus`` (the ClientApp calls it once per exchange)."""
        with self.db.write() as c:
            _bump(c, "syncs")
            _bump(c, "bytes_sent", int(bytes_sent))
            _bump(c, "bytes_received", int(bytes_received))
            c.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('last_sync', ?)",
                      (json.dumps({"time": time.time(), "global_version": int(global_version)}),))

    def last_sync(self) -> dict | None:
        """``{"time": unix seconds, "global_version": int}`` of the last exchange with the aggregator."""
        with self.db.read() as c:
            row = c.execute("SELECT value FROM kv WHERE key = 'last_sync'").fetchone()
        return json.loads(row[0]) if row else None

    def is_acked(self, robot_id: str, seq: int) -> bool:
        with self.db.read() as c:
            return bool(c.execute("SELECT EXISTS (SELECT 1 FROM acked WHERE robot_id = ?1 AND first <= ?2 "
                                  "AND last >= ?2)", (robot_id, int(seq))).fetchone()[0])


class Inbox:
    """Global models received from the aggregator, in the ``inbox`` table of ``<directory>/spool.db``:
    ``put`` by the ClientApp, ``latest`` by the robot."""

    def __init__(self, directory: str, keep: int = 3, *, fsync: bool = True):
        self.dir = os.path.abspath(directory)
        self.keep = keep
        self.fsync = fsync
        os.makedirs(self.dir, exist_ok=True)
        self.db = Database(os.path.join(self.dir, DB_NAME), _SCHEMA, fsync=fsync)

    def versions(self, model_id: str = "world_model") -> list[int]:
        """The kept versions of ``model_id``, oldest first."""
        with self.db.read() as c:
            return [int(v) for (v,) in c.execute(
                "SELECT version FROM inbox WHERE model_id = ? ORDER BY version", (model_id,))]

    def put(self, version: int, payload: bytes, *, model_id: str = "world_model",
            meta: dict | None = None) -> bool:
        """Store a model version (verified payload). Returns False if it is not newer than the latest."""
        check_robot_id(model_id)
        parse_header(payload)
        digest = hashlib.sha256(payload)
        m = {"version": int(version), "model_id": model_id, "received_at": time.time(),
             "sha256": digest.hexdigest(), **(meta or {})}
        with self.db.write() as c:
            latest = c.execute("SELECT MAX(version) FROM inbox WHERE model_id = ?", (model_id,)).fetchone()[0]
            if latest is not None and latest >= version:
                return False
            c.execute("INSERT INTO inbox (model_id, version, meta, sha256, payload) VALUES (?, ?, ?, ?, ?)",
                      (model_id, int(version), json.dumps(m), digest.digest(), payload))
            c.execute("DELETE FROM inbox WHERE model_id = ?1 AND version NOT IN "
                      "(SELECT version FROM inbox WHERE model_id = ?1 ORDER BY version DESC LIMIT ?2)",
                      (model_id, max(1, self.keep)))
        return True

    def latest_version(self, model_id: str = "world_model") -> int:
        with self.db.read() as c:
            v = c.execute("SELECT MAX(version) FROM inbox WHERE model_id = ?", (model_id,)).fetchone()[0]
        return -1 if v is None else int(v)

    def latest(self, model_id: str = "world_model") -> tuple[int, bytes, dict] | None:
        """(version, payload, meta) of the newest valid model, or None."""
        with self.db.read() as c:
            rows = c.execute("SELECT version, meta, sha256, payload FROM inbox WHERE model_id = ? "
                             "ORDER BY version DESC", (model_id,)).fetchall()
        for version, meta, digest, payload in rows:
            payload = bytes(payload)
            if hashlib.sha256(payload).digest() != bytes(digest):
                continue
            try:
                parse_header(payload)
                return int(version), payload, json.loads(meta)
            except (CodecError, ValueError):
                continue
        return None


# --------------------------------------------------------------------------- migration of the file format

_LEGACY_MAGIC = b"SKSP"
_LEGACY_HEAD = struct.Struct("<4sIQ")  # magic, meta_len, payload_len; then JSON meta, payload, sha256(meta+payload)
_LEGACY_DIRS = ("deltas", "inbox", "quarantine")


def _unpack_legacy(data: bytes) -> tuple[dict, bytes]:
    """One entry or inbox file of the file-based spool."""
    if len(data) < _LEGACY_HEAD.size + 32:
        raise SpoolError("entry truncated")
    magic, mlen, plen = _LEGACY_HEAD.unpack_from(data, 0)
    body = data[_LEGACY_HEAD.size:-32]
    if magic != _LEGACY_MAGIC or len(body) != mlen + plen or hashlib.sha256(body).digest() != data[-32:]:
        raise SpoolError("corrupt legacy entry")
    return json.loads(body[:mlen].decode()), bytes(body[mlen:])


def _legacy_names(directory: str, sub: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(os.path.join(directory, sub)) if not n.startswith("."))
    except FileNotFoundError:
        return []


def _legacy_files(directory: str, sub: str) -> Iterator[tuple[str, bytes]]:
    for name in _legacy_names(directory, sub):
        with open(os.path.join(directory, sub, name), "rb") as f:
            yield name, f.read()


def _import_file_spool(c: sqlite3.Connection, directory: str) -> int:
    try:
        with open(os.path.join(directory, "state.json"), "rb") as f:
            st = json.loads(f.read().decode())
    except FileNotFoundError:
        st = {}
    sent = SeqRanges(st.get("sent"))
    now = time.time()
    corrupt = 0
    entries: list[tuple[SpoolEntry, bytes]] = []
    for name, data in _legacy_files(directory, "deltas"):
        if not name.endswith(".delta"):
            continue
        try:
            meta, payload = _unpack_legacy(data)
            e = SpoolEntry(**{k: meta[k] for k in _META if k in meta})
            if len(payload) != e.payload_len:
                raise SpoolError("payload length mismatch")
            entries.append((e, payload))
        except (SpoolError, ValueError, TypeError, KeyError):
            c.execute("INSERT INTO quarantine (reason, at, meta, payload) VALUES ('migration', ?, ?, ?)",
                      (now, json.dumps({"file": name}), data))
            corrupt += 1
    for e, payload in entries:
        # the file-based merge wrote the merged entry before deleting the older one: one left inside a
        # merged range by a crash is stale (the file spool's open did the same clean-up)
        if any(m is not e and m.robot_id == e.robot_id and m.seq_first <= e.seq_first and e.seq <= m.seq
               and m.seq != e.seq for m, _ in entries):
            continue
        _insert(c, e, payload, sent=sent.contains(e.robot_id, e.seq))
    for name, data in _legacy_files(directory, "quarantine"):
        c.execute("INSERT INTO quarantine (reason, at, meta, payload) VALUES ('quarantined before migration', ?, ?, ?)",
                  (now, json.dumps({"file": name}), data))
    for name, data in _legacy_files(directory, "inbox"):
        if not name.endswith(".model"):
            continue
        try:
            meta, payload = _unpack_legacy(data)
            c.execute("INSERT OR REPLACE INTO inbox (model_id, version, meta, sha256, payload) VALUES (?, ?, ?, ?, ?)",
                      (str(meta["model_id"]), int(meta["version"]), json.dumps(meta),
                       hashlib.sha256(payload).digest(), payload))
        except (SpoolError, ValueError, KeyError):
            continue  # the file inbox skipped an unreadable model too (latest() returns the newest valid one)
    store_ranges(c, "acked", SeqRanges(st.get("acked")))
    for robot, last in (st.get("last_seq") or {}).items():
        c.execute("INSERT OR REPLACE INTO sequences (robot_id, last_seq) VALUES (?, ?)", (robot, int(last)))
    for name, value in (st.get("counters") or {}).items():
        _bump(c, name, int(value))
    if corrupt:
        _bump(c, "corrupt", corrupt)
    if st.get("last_sync"):
        c.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('last_sync', ?)", (json.dumps(st["last_sync"]),))
    return len(entries)


def migrate_file_spool(db: Database, directory: str) -> bool:
    """Import a spool directory of the file-based format into ``db`` (one transaction, skipped if an earlier
    open did it), then remove the old files. Returns True if this call imported it."""
    state = os.path.join(directory, "state.json")
    if not (os.path.exists(state) or any(os.path.isdir(os.path.join(directory, d)) for d in _LEGACY_DIRS)):
        return False
    imported = False
    with db.write() as c:
        if c.execute("SELECT 1 FROM kv WHERE key = 'migrated_from_files'").fetchone() is None:
            n = _import_file_spool(c, directory)
            c.execute("INSERT INTO kv (key, value) VALUES ('migrated_from_files', ?)",
                      (json.dumps({"time": time.time(), "entries": n}),))
            imported = True
    # only after the commit: a crash before this point leaves the files, and the next open only tidies up
    for sub in _LEGACY_DIRS:
        d = os.path.join(directory, sub)
        for name in _legacy_names(directory, sub) + [".lock"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, name))
        clean_temp_files(d)
        with contextlib.suppress(OSError):
            os.rmdir(d)
    with contextlib.suppress(FileNotFoundError):
        os.replace(state, state + ".migrated")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, ".lock"))
    clean_temp_files(directory)
    return imported
