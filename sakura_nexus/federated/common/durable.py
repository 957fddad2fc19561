"""Durable state helpers: the SQLite database every store of the fleet opens (:class:`Database`: WAL journal,
``synchronous=FULL``, SQLite's own locking between processes, explicit transactions), robot-id checks,
per-robot sequence-range sets, temp-file clean-up (the atomic file write itself is
:mod:`sakura_nexus.atomic`, re-exported here)."""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence

from sakura_nexus.atomic import atomic_write as atomic_write
from sakura_nexus.atomic import atomic_write_json as atomic_write_json
from sakura_nexus.atomic import fsync_dir as fsync_dir

_ROBOT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_robot_id(robot_id: str) -> str:
    """Robot ids name files and keys: 1-64 chars of ``[A-Za-z0-9_.-]``, not starting with a dot/dash."""
    if not isinstance(robot_id, str) or not _ROBOT_RE.match(robot_id):
        raise ValueError(f"invalid robot_id {robot_id!r} (use 1-64 chars of [A-Za-z0-9_.-])")
    return robot_id


def clean_temp_files(directory: str) -> int:
    """Remove leftovers of interrupted atomic writes (``.tmp-*``); return how many."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            if name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
                    n += 1
    return n


# --------------------------------------------------------------------------- SQLite


class StoreError(OSError):
    """A database operation failed (locked past the busy timeout, disk full, I/O error, malformed file).
    An ``OSError``, like the file errors of the stores it replaced, so callers' handlers still apply."""


class _Conn(sqlite3.Connection):
    """A connection that knows the process that opened it (and can be weakly referenced)."""

    pid: int = -1


_LIVE: weakref.WeakSet[_Conn] = weakref.WeakSet()
_INHERITED: list[_Conn] = []


def _after_fork_in_child() -> None:
    # SQLite: a connection must not be carried across fork(). The child never uses the parent's ones
    # (Database.conn() checks the pid) and must not close them either (closing runs the WAL clean-up
    # against locks the child does not hold): keep the objects referenced, untouched, for its lifetime.
    _INHERITED.extend(_LIVE)


os.register_at_fork(after_in_child=_after_fork_in_child)


class Database:
    """One SQLite file shared by threads and processes (the ROS node and the forked ClientApps on a spool).

    Each (process, thread) gets its own connection, opened on first use: a forked child opens its own and
    never touches an inherited one. ``journal_mode=WAL`` (readers never block the writer),
    ``synchronous=FULL`` (a committed transaction survives power loss; ``fsync=False``: ``NORMAL``, atomic
    and consistent but the last commits may be lost on power loss), ``busy_timeout`` for the lock
    between writers. Every multi-statement update is one :meth:`write` transaction.
    """

    BUSY_TIMEOUT_S = 30.0

    def __init__(self, path: str, schema: Sequence[str], *, fsync: bool = True):
        self.path = os.path.abspath(path)
        self.synchronous = "FULL" if fsync else "NORMAL"
        self._local = threading.local()
        with self.write() as c:
            # takes effect only before the first table exists; lets vacuum_if_sparse() shrink the file
            c.execute("PRAGMA auto_vacuum=INCREMENTAL")
            for stmt in schema:
                c.execute(stmt)

    def _open(self) -> _Conn:
        try:
            c = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT_S, isolation_level=None,
                                check_same_thread=False, factory=_Conn)
            c.pid = os.getpid()
            mode = c.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a file system without shared memory (network mounts)
                raise sqlite3.OperationalError(f"cannot use WAL journal mode here (got {mode!r})")
            c.execute(f"PRAGMA synchronous={self.synchronous}")
            c.execute("PRAGMA journal_size_limit=67108864")  # truncate the WAL to 64 MiB after checkpoints
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e
        _LIVE.add(c)
        return c

    def conn(self) -> sqlite3.Connection:
        """This thread's connection in this process (opened here if needed)."""
        c = getattr(self._local, "conn", None)
        if c is None or c.pid != os.getpid():
            c = self._local.conn = self._open()
        return c

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (rolled back on any exception); nested use joins the outer one."""
        c = self.conn()
        if c.in_transaction:
            yield c
            return
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                if c.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                    c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several queries (a deferred transaction); nested use joins."""
        c = self.conn()
        if c.in_transaction:
            yield c
            return
        try:
            c.execute("BEGIN")
            try:
                yield c
            finally:
                c.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e

    def vacuum_if_sparse(self, min_free_bytes: int = 16 << 20) -> None:
        """Give free pages back to the file system once more than ``min_free_bytes`` are free."""
        c = self.conn()
        try:
            free = c.execute("PRAGMA freelist_count").fetchone()[0] * c.execute("PRAGMA page_size").fetchone()[0]
            if free > min_free_bytes:
                c.execute("PRAGMA incremental_vacuum").fetchall()  # one page per step
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: {e}") from e


# --------------------------------------------------------------------------- sequence ranges


class SeqRanges:
    """A set of non-negative integers per robot, stored as sorted disjoint closed intervals.

    Used for de-duplication by ``(robot_id, sequence)``: sequences are mostly contiguous, so the set
    stays tiny however many deltas a robot has sent.
    """

    def __init__(self, data: dict[str, list[list[int]]] | None = None):
        self._r: dict[str, list[list[int]]] = {}
        for k, v in (data or {}).items():
            for a, b in v:
                self.add(k, int(a), int(b))

    def to_json(self) -> dict[str, list[list[int]]]:
        return {k: [list(x) for x in v] for k, v in self._r.items()}

    def robots(self) -> list[str]:
        return sorted(self._r)

    def intervals(self, robot: str) -> list[tuple[int, int]]:
        return [(a, b) for a, b in self._r.get(robot, [])]

    def add(self, robot: str, first: int, last: int | None = None) -> None:
        last = first if last is None else last
        if last < first:
            raise ValueError("last < first")
        iv = self._r.setdefault(robot, [])
        starts = [a for a, _ in iv]
        i = bisect.bisect_left(starts, first)
        # merge with the previous interval if it touches
        if i > 0 and iv[i - 1][1] >= first - 1:
            i -= 1
            first = iv[i][0]
            last = max(last, iv[i][1])
        j = i
        while j < len(iv) and iv[j][0] <= last + 1:
            last = max(last, iv[j][1])
            j += 1
        iv[i:j] = [[first, last]]

    def overlap(self, robot: str, first: int, last: int | None = None) -> int:
        """Number of integers of ``[first, last]`` already in the set."""
        last = first if last is None else last
        n = 0
        for a, b in self._r.get(robot, []):
            lo, hi = max(a, first), min(b, last)
            if lo <= hi:
                n += hi - lo + 1
        return n

    def contains(self, robot: str, seq: int) -> bool:
        return self.overlap(robot, seq, seq) == 1

    def max(self, robot: str) -> int | None:
        iv = self._r.get(robot)
        return iv[-1][1] if iv else None

    def count(self, robot: str | None = None) -> int:
        robots = [robot] if robot is not None else list(self._r)
        return sum(b - a + 1 for r in robots for a, b in self._r.get(r, []))


def load_ranges(c: sqlite3.Connection, table: str, robot: str | None = None) -> SeqRanges:
    """The ``(robot_id, first, last)`` rows of ``table`` (one robot's, or all) as a :class:`SeqRanges`."""
    q = f"SELECT robot_id, first, last FROM {table}" + (" WHERE robot_id = ?" if robot is not None else "")
    r = SeqRanges()
    for rid, a, b in c.execute(q, () if robot is None else (robot,)):
        r.add(rid, a, b)
    return r


def store_ranges(c: sqlite3.Connection, table: str, ranges: SeqRanges, robots: Sequence[str] | None = None) -> None:
    """Replace the rows of ``robots`` (default: every robot of ``ranges``, and no other row) in ``table``."""
    if robots is None:
        c.execute(f"DELETE FROM {table}")
        robots = ranges.robots()
    for rid in robots:
        c.execute(f"DELETE FROM {table} WHERE robot_id = ?", (rid,))
        c.executemany(f"INSERT INTO {table} (robot_id, first, last) VALUES (?, ?, ?)",
                      [(rid, a, b) for a, b in ranges.intervals(rid)])
