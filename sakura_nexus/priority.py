"""Thread priority for background work inside a node process (no ROS here).

A node's latency-critical work (a world-model tick, a plan) shares its process and GIL with slow
background work (online learning, building a map cost-to-go). Demoting the background thread at the
OS level alone is not enough: while it holds the GIL a woken tick waits up to the interpreter's
switch interval (5 ms by default), so that is shortened too.
"""

from __future__ import annotations

import os
import sys
import threading


def deprioritise_current_thread(switch_interval_s: float | None = 0.0005) -> str:
    """Call at the start of a background thread (online learning, the policy's map cost-to-go) so that
    it only uses CPU time nobody else wants. On Linux the thread gets the SCHED_IDLE policy: any
    normal thread waking on the same core (a tick) preempts it at once, where a nice-19 thread would
    keep the core for up to a scheduler slice. Where SCHED_IDLE is refused it falls back to nice 19.
    The interpreter's GIL switch interval is shortened (process-wide) so a woken tick waits at most
    ~0.5 ms for the GIL.
    Returns the policy applied: "idle", "nice" or "none"."""
    if switch_interval_s is not None:
        sys.setswitchinterval(switch_interval_s)
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
        return "nice"
    except (AttributeError, OSError):
        return "none"


def deprioritise_process() -> str:
    """Call first thing in a process that does only background work (federated_sync_node): the calling
    thread gets SCHED_IDLE (or nice 19), and so does everything started from it afterwards, threads
    and child processes alike (the Flower SuperNode, its SuperExec and every ClientApp), since Linux
    threads and forked children inherit the scheduling policy. Returns "idle", "nice" or "none"."""
    return deprioritise_current_thread(switch_interval_s=None)
