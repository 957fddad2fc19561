"""Clock-fault detection for nodes that buffer or align inputs by stamp (ROS-free).

Two faults stall a stamp-ordered node for good if nothing watches for them:

- a **foreign-clock message** (a driver on wall time while the graph runs on sim time, a clock
  stepped by NTP on another host): stamped far ahead of the node's clock, it becomes the newest
  sample, and every later, correctly stamped one looks out of order or misaligned. Such a message is
  refused (:meth:`ClockGuard.is_future`) and never enters a buffer;
- a **jump of the node's own clock**: backwards (sim reset, ``/clock`` restart, NTP step) leaves
  buffers full of samples "from the future"; :meth:`ClockGuard.observe` reports it so the node
  resets what depends on time. A forward step by more than ``max_offset`` beyond the wall time
  that elapsed is reported too (counted; old samples then simply age out). With sim time running
  much faster than real time and inputs seconds apart, a fast sim can also count as a forward step.

A clock that reads 0 (sim time before the first ``/clock``) is not judged here: a node drops every stamped
input until its clock has started (``SakuraNode.future_stamp`` in ``sakura_nexus/ros/node.py``).
"""

from __future__ import annotations

import threading
import time

BACKWARDS, FORWARDS = "backwards", "forwards"
BACKWARDS_TOLERANCE = 1e-3  # s: a node's clock never runs backwards; this only absorbs float rounding


class ClockGuard:
    def __init__(self, max_offset: float, wall=time.monotonic):
        self.max_offset = float(max_offset)
        self._wall = wall
        self._last: tuple[float, float] | None = None  # (clock, wall) at the last observation
        self._lock = threading.Lock()

    def observe(self, now: float) -> str | None:
        """Record the node's clock reading ``now`` (s); return BACKWARDS / FORWARDS on a jump, else None."""
        if now <= 0.0:
            return None
        wall = self._wall()
        with self._lock:
            last, self._last = self._last, (now, wall)
        if last is None:
            return None
        if now < last[0] - BACKWARDS_TOLERANCE:
            return BACKWARDS
        if (now - last[0]) - (wall - last[1]) > self.max_offset:
            return FORWARDS
        return None

    def is_future(self, stamp: float, now: float) -> bool:
        """True if ``stamp`` is more than ``max_offset`` ahead of the clock reading ``now``."""
        return now > 0.0 and stamp - now > self.max_offset

    def reset(self) -> None:
        with self._lock:
            self._last = None
