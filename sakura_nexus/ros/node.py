"""Base class and process runner shared by every sakura_nexus node.

- :class:`NexusNode` is a lifecycle node whose parameters come from the node's schema
  (:mod:`sakura_nexus.params`), with a diagnostics publisher on ``/diagnostics`` whose counters
  every node uses for dropped / invalid inputs, and a throttled ``drop()`` helper.
- :func:`run` spins a node on rclpy's C++ EventsExecutor (``SAKURA_NEXUS_EXECUTOR=multi``: the
  Python MultiThreadedExecutor; see :func:`make_executor`), transitions it to active when
  ``autostart`` is set, and on SIGINT/SIGTERM deactivates it (so nodes can send their final safe
  output while publishers are still active) before shutting down cleanly. It first tunes malloc for
  large messages (:mod:`sakura_nexus.allocator`: camera frames 3.1 -> 1.3 ms per hop).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.lifecycle import State as LifecycleState

from sakura_nexus.allocator import tune_for_large_messages
from sakura_nexus.params import NodeSchema
from sakura_nexus.ros.params import ParamStore

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class Diagnostics:
    """Counters and values published as one DiagnosticStatus on /diagnostics."""

    def __init__(self, node, name: str, period: float):
        self._node = node
        self._name = f"{node.get_fully_qualified_name()}: {name}"
        self._pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.counters: Counter = Counter()
        self.values: dict[str, object] = {}
        self._lock = threading.Lock()
        self._level_fn: Callable[[], tuple[int, str]] | None = None
        self._rates: dict[str, str] = {}  # counter -> value name
        self._rate_mark: tuple[float, Counter] | None = None
        self._windows: dict[str, deque] = {}  # value name -> last samples (summarised in status())
        self._timer = node.create_timer(period, self.publish)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def set(self, key: str, value) -> None:
        self.values[key] = value

    def track_rate(self, counter: str, name: str) -> None:
        """Report the rate of ``counter`` (per second of wall time since the last publication) as ``name``."""
        self._rates[counter] = name

    def sample(self, name: str, value: float, window: int = 300) -> None:
        """Add a sample; ``name`` is reported as {mean, p99} over the last ``window`` samples. Cheap on the
        hot path (an append); the summary is computed when diagnostics are published."""
        with self._lock:  # samples come from worker threads, the summary from the executor
            w = self._windows.get(name)
            if w is None:
                w = self._windows[name] = deque(maxlen=window)
            w.append(float(value))

    def _update_windows(self) -> None:
        with self._lock:
            snap = {name: np.array(w) for name, w in self._windows.items() if w}
        for name, a in snap.items():
            self.values[name] = {"mean": round(float(a.mean()), 3), "p99": round(float(np.percentile(a, 99)), 3)}

    def _update_rates(self) -> None:
        if not self._rates:
            return
        now = time.monotonic()
        with self._lock:
            snap = Counter(self.counters)
        if self._rate_mark is not None and now > self._rate_mark[0]:
            dt = now - self._rate_mark[0]
            for counter, name in self._rates.items():
                self.values[name] = round((snap[counter] - self._rate_mark[1][counter]) / dt, 2)
        self._rate_mark = (now, snap)

    def level_from(self, fn: Callable[[], tuple[int, str]]) -> None:
        self._level_fn = fn

    def set_period(self, period: float) -> None:
        self._timer.cancel()
        self._node.destroy_timer(self._timer)
        self._timer = self._node.create_timer(period, self.publish)

    def status(self) -> DiagnosticStatus:
        self._update_rates()
        self._update_windows()
        level, message = self._level_fn() if self._level_fn else (OK, "ok")
        with self._lock:
            items = sorted(self.counters.items())
        kv = [KeyValue(key=k, value=str(v)) for k, v in items]
        kv += [KeyValue(key=k, value=str(v)) for k, v in sorted(self.values.items())]
        level = level if isinstance(level, bytes) else bytes([level])
        return DiagnosticStatus(level=level, name=self._name, message=message, hardware_id=self._node.get_name(),
                                values=kv)

    def publish(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self._node.get_clock().now().to_msg()
        arr.status = [self.status()]
        self._pub.publish(arr)


class NexusNode(LifecycleNode):
    """Lifecycle node with schema parameters, diagnostics and drop accounting."""

    def __init__(self, name: str, schema: NodeSchema, **kwargs):
        super().__init__(name, **kwargs)
        self.params = ParamStore(self, schema)
        self.diag = Diagnostics(self, name, self.params["diagnostics_period"]
                                if "diagnostics_period" in self.params.as_dict() else 1.0)
        self.params.on_change(self._on_common_change)

    def _on_common_change(self, changed: dict) -> None:
        if "diagnostics_period" in changed:
            self.diag.set_period(changed["diagnostics_period"])

    def drop(self, reason: str, detail: str = "") -> None:
        """Count a dropped input under ``dropped_<reason>`` and log it (throttled)."""
        self.diag.count(f"dropped_{reason}")
        detail = detail if len(detail) < 300 else detail[:300] + "..."
        self.get_logger().warning(f"dropped input ({reason}){': ' + detail if detail else ''}",
                                  throttle_duration_sec=5.0)

    @property
    def is_active(self) -> bool:
        return self._state_machine.current_state[1] == "active"

    # Default transitions succeed; subclasses call super() last in on_deactivate.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        return TransitionCallbackReturn.SUCCESS


def make_executor(threads: int = 2):
    """The executor nodes spin on. Default: rclpy's EventsExecutor (C++, single-threaded): on the
    2-core target it cut the CPU of the closed loop by ~1/3 and the per-hop executor/transport time
    several-fold versus the Python MultiThreadedExecutor, which rebuilds its wait set and goes
    through a thread pool for every message (odom and /clock arrive at 100+ Hz in every node).
    Long work never runs on it anyway (perception inference and world-model learning have their own
    threads; a plan takes ~10 ms). ``SAKURA_NEXUS_EXECUTOR=multi`` selects the MultiThreadedExecutor
    with ``threads`` threads (also the fallback where EventsExecutor does not exist)."""
    if os.environ.get("SAKURA_NEXUS_EXECUTOR", "events") != "multi":
        try:
            from rclpy.experimental import EventsExecutor

            return EventsExecutor()
        except ImportError:
            pass
    return MultiThreadedExecutor(num_threads=threads)


def run(factory: Callable[[], NexusNode], args=None, threads: int = 2) -> int:
    """Run one node until SIGINT/SIGTERM; returns the process exit code."""
    tune_for_large_messages()  # before any receive buffer exists; see sakura_nexus/allocator.py
    try:
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except ImportError:  # very old rclpy
        rclpy.init(args=args)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = factory()
    executor = make_executor(threads)
    executor.add_node(node)
    if node.params.as_dict().get("autostart", True):
        node.trigger_configure()
        node.trigger_activate()
    def spin():
        # One failing callback must not take the node down: log it, count it, keep spinning.
        while rclpy.ok() and not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.1)
            except Exception as e:  # noqa: BLE001
                node.diag.count("callback_errors")
                node.get_logger().error(f"callback raised {e!r}", throttle_duration_sec=5.0)

    spinner = threading.Thread(target=spin, name="executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(0.2):
            if not spinner.is_alive():
                break
    finally:
        node.get_logger().info("shutting down")
        if node.is_active:
            node.trigger_deactivate()  # nodes publish their final safe output here
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
