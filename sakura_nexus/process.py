"""Process helpers (ROS-free, Linux ``/proc``): the one place that finds a process' descendants, tells a
zombie from a live process, identifies a process by its start time (pid reuse) and stops a whole process
tree (SIGTERM, then SIGKILL after a timeout). Used by the demo harness' supervisor, the aggregator's and
the SuperNode's supervisors, the benches and the tests.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time


def descendants(pid: int) -> list[int]:
    """PIDs of all descendants of ``pid`` (Linux /proc), parents before children."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out

def proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (/proc/<pid>/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None

def kill_tree(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM ``pid``, its process group and every descendant (SuperExec / ClientApps run in their own
    sessions); SIGKILL whatever is left after ``timeout``."""
    procs = [pid, *descendants(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(p, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if all(proc_start_ticks(p) is None or is_zombie(p) for p in procs):
                return
            time.sleep(0.05)

def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
