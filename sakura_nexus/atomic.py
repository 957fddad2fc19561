"""The one atomic file write of sakura_nexus (checkpoints, spool, aggregator store, node state). ROS-free."""

from __future__ import annotations

import contextlib
import json
import os
import uuid

__all__ = ["atomic_write", "atomic_write_json", "fsync_dir"]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically: temp file ``.tmp-<uuid>`` in the same directory, fsync, rename,
    fsync of the directory (``fsync=False``: atomic, not durable across a power cut)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, f".tmp-{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if fsync:
        fsync_dir(d)


def atomic_write_json(path: str | os.PathLike, obj, *, fsync: bool = True) -> None:
    atomic_write(path, json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(), fsync=fsync)
