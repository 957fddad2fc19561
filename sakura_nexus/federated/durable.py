"""Small durability helpers: temp-file clean-up, directory locks and per-robot sequence-range sets (the atomic
write itself is :mod:`sakura_nexus.atomic`, re-exported here)."""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator

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


_THREAD_LOCKS: dict[str, threading.RLock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()
_HELD = threading.local()


@contextlib.contextmanager
def dir_lock(directory: str) -> Iterator[None]:
    """Exclusive lock across processes (flock on ``directory/.lock``) and threads of this process.

    Re-entrant within a thread (nested use does not re-flock, which would self-deadlock)."""
    key = os.path.abspath(directory)
    held = getattr(_HELD, "keys", None)
    if held is None:
        held = _HELD.keys = {}
    if held.get(key, 0) > 0:
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    with _THREAD_LOCKS_GUARD:
        tlock = _THREAD_LOCKS.setdefault(key, threading.RLock())
    with tlock:
        fd = os.open(os.path.join(key, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held[key] = 1
            try:
                yield
            finally:
                held[key] = 0
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


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
