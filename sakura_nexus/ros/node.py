"""Base class and process runner shared by every sakura_nexus node.

- :class:`NexusNode` is a lifecycle node whose parameters come from the node's schema
  (:mod:`sakura_nexus.params`), with a diagnostics publisher on ``/diagnostics`` whose counters
  every node uses for dropped / invalid inputs, and a ``drop()`` helper that logs each reason at most
  once per second (:meth:`NexusNode.log_throttled`); the one model-update check every node runs
  (:meth:`NexusNode.accept_model_update`, signatures: :mod:`sakura_nexus.federated.common.signing`) and the
  clock-fault checks of the nodes that align inputs by stamp (:mod:`sakura_nexus.clock_guard`).
  Every subscription callback is wrapped by :meth:`NexusNode.input` so each input topic has its own
  ledger in diagnostics (``input/<topic>``: ``received`` = ``accepted`` + every drop reason + ``ignored``),
  which is how a fuzz run proves every message that reached the node is accounted for.
- :func:`run` spins a node on rclpy's C++ EventsExecutor (``SAKURA_NEXUS_EXECUTOR=multi``: the
  Python MultiThreadedExecutor; see :func:`make_executor`), transitions it to active when
  ``autostart`` is set, and on SIGINT/SIGTERM deactivates it (so nodes can send their final safe
  output while publishers are still active) before shutting down cleanly. It first tunes malloc for
  large messages (:mod:`sakura_nexus.allocator`: camera frames 3.1 -> 1.3 ms per hop).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, ManagedEntity, SimpleManagedEntity, TransitionCallbackReturn
from rclpy.lifecycle import State as LifecycleState
from rclpy.qos import DurabilityPolicy, QoSProfile
from rclpy.qos_overriding_options import QoSOverridingOptions

from sakura_nexus.allocator import tune_for_large_messages
from sakura_nexus.clock_guard import BACKWARDS, FORWARDS, ClockGuard
from sakura_nexus.params import NodeSchema
from sakura_nexus.ros.params import ParamStore

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR
LOG_PERIOD = 1.0  # s: each log key (drop reason) is logged at most once per period
# model ids of the graph: an update for another node's model is not a refusal
MODEL_IDS = ("encoder", "world_model")


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
        self.inputs: dict[str, Counter] = {}   # input topic -> {received, accepted, ignored, <drop reason>}
        self._timer = self._create_timer(period)

    def _create_timer(self, period: float):
        # on the steady clock: a node on sim time whose /clock has not started (or has stopped) still
        # reports, e.g. the input it drops meanwhile (no_clock_<what>); the array is stamped with ROS time
        return self._node.create_timer(period, self.publish, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def set(self, key: str, value) -> None:
        self.values[key] = value

    def count_input(self, topic: str, outcome: str) -> None:
        with self._lock:
            c = self.inputs.get(topic)
            if c is None:
                c = self.inputs[topic] = Counter()
            c[outcome] += 1

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
        with self._node.untracked():  # the diagnostics timer lives as long as the node, not one configuration
            self._timer = self._create_timer(period)

    def status(self) -> DiagnosticStatus:
        self._update_rates()
        self._update_windows()
        level, message = self._level_fn() if self._level_fn else (OK, "ok")
        with self._lock:
            items = sorted(self.counters.items())
            ledgers = {t: dict(sorted(c.items())) for t, c in sorted(self.inputs.items())}
        kv = [KeyValue(key=k, value=str(v)) for k, v in items]
        kv += [KeyValue(key=f"input/{t}", value=json.dumps(c)) for t, c in ledgers.items()]
        kv += [KeyValue(key=k, value=str(v)) for k, v in sorted(self.values.items())]
        level = level if isinstance(level, bytes) else bytes([level])
        return DiagnosticStatus(level=level, name=self._name, message=message, hardware_id=self._node.get_name(),
                                values=kv)

    def publish(self) -> None:
        arr = DiagnosticArray()
        arr.header.stamp = self._node.get_clock().now().to_msg()
        arr.status = [self.status()]
        self._pub.publish(arr)


class _Activity(SimpleManagedEntity):
    """Managed entity whose flag says whether the node is active (rclpy has no public state query)."""

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._enabled = False
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._enabled = False
        return TransitionCallbackReturn.SUCCESS


class _Worker(ManagedEntity):
    """A thread that runs ``target`` while the node is active: started on activate; on deactivate
    (and the node's shutdown or error: :meth:`SakuraNode.stop_workers`) the node's ``stop`` event is
    set, ``wake`` called (to interrupt a wait) and the thread joined."""

    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event,
                 wake: Callable[[], None] | None, join_timeout: float):
        self.name, self._target, self._stop, self._wake = name, target, stop, wake
        self._join_timeout = join_timeout
        self._thread: threading.Thread | None = None

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop.clear()
        self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
        self._thread.start()
        return TransitionCallbackReturn.SUCCESS

    def stop(self) -> None:
        self._stop.set()
        if self._wake is not None:
            self._wake()
        if self._thread is not None:
            self._thread.join(timeout=self._join_timeout)
            self._thread = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop()
        return TransitionCallbackReturn.SUCCESS


def _qos_overridable(topic: str, qos) -> bool:
    """The node's own sensor and state topics (relative names, volatile profiles) take
    ``qos_overrides./<resolved topic>.<publisher|subscription>.{reliability,history,depth}`` parameters;
    model topics (transient-local) and the absolute ROS-wide ones (/diagnostics, /parameter_events,
    /rosout) keep their QoS."""
    return isinstance(qos, QoSProfile) and qos.durability == DurabilityPolicy.VOLATILE and not topic.startswith("/")


def _tracking_configure(fn):
    """Wrap a subclass's ``on_configure``: what it creates is recorded, and destroyed again on a failed
    configure (or by :meth:`NexusNode.on_cleanup` / ``on_shutdown``), so a retry creates each entity once."""

    @functools.wraps(fn)
    def on_configure(self, state):
        outer = self._configured is None
        if outer:
            self._configured = []
        try:
            ret = fn(self, state)
        except BaseException:
            if outer:
                self.destroy_configured()
            raise
        if outer and ret != TransitionCallbackReturn.SUCCESS:
            self.destroy_configured()
        return ret

    on_configure._tracks_entities = True
    return on_configure


class NexusNode(LifecycleNode):
    """Lifecycle node with schema parameters, diagnostics and drop accounting.

    Lifecycle as in ros2/demos and Nav2: every publisher, subscription, timer, service and client a node
    creates from ``on_configure`` on (until cleanup) is recorded and destroyed by ``on_cleanup`` /
    ``on_shutdown``, so configure -> cleanup -> configure creates each entity once. Sensor and state
    publishers/subscriptions take ROS QoS overrides (``qos_overrides./<topic>.subscription.reliability``
    etc. in a params file; :class:`rclpy.qos_overriding_options.QoSOverridingOptions`)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("on_configure")
        if fn is not None and not getattr(fn, "_tracks_entities", False):
            cls.on_configure = _tracking_configure(fn)

    def __init__(self, name: str, schema: NodeSchema, **kwargs):
        self._configured: list | None = None  # entities created since on_configure began; None = not configured
        self._untracked = 0
        super().__init__(name, **kwargs)
        self._activity = _Activity()
        self.add_managed_entity(self._activity)
        self.params = ParamStore(self, schema)
        self.diag = Diagnostics(self, name, self.params["diagnostics_period"]
                                if "diagnostics_period" in self.params.as_dict() else 1.0)
        self.params.on_change(self._on_common_change)
        self._log_lock = threading.Lock()
        self._log_marks: dict[str, float] = {}
        self._log_suppressed: Counter = Counter()
        self._update_gate = None  # created on the first model update (reads trusted_keys)
        self._clock_guard: ClockGuard | None = None
        self._on_clock_back: Callable[[], None] | None = None
        self._input_ctx = threading.local()  # the input topic (and its outcome) of the running callback
        self._stop = threading.Event()  # set while the node is not active: its worker threads end
        self._workers: list[_Worker] = []

    def run_while_active(self, name: str, target: Callable[[], None], wake: Callable[[], None] | None = None,
                         join_timeout: float = 5.0) -> None:
        """Run ``target`` on its own thread (``name``) while the node is active; it must return soon after
        ``self._stop`` is set (``wake`` is called then, to end a wait). Call once, from ``__init__``."""
        worker = _Worker(name, target, self._stop, wake, join_timeout)
        self._workers.append(worker)
        self.add_managed_entity(worker)

    def stop_workers(self) -> None:
        """End the worker threads now (deactivate does it anyway), e.g. before a checkpoint."""
        for worker in self._workers:
            worker.stop()

    # --- entities: QoS overrides and configure/cleanup bookkeeping ------------------------------
    @contextlib.contextmanager
    def untracked(self):
        """Entities created inside this block outlive cleanup (they belong to the node, not to a configuration)."""
        self._untracked += 1
        try:
            yield
        finally:
            self._untracked -= 1

    def _track(self, entity, destroy: Callable):
        if getattr(self, "_configured", None) is not None and not getattr(self, "_untracked", 0):
            self._configured.append((entity, destroy))
        return entity

    def create_publisher(self, msg_type, topic, qos_profile, **kwargs):
        if _qos_overridable(topic, qos_profile):
            kwargs.setdefault("qos_overriding_options", QoSOverridingOptions.with_default_policies())
        return self._track(super().create_publisher(msg_type, topic, qos_profile, **kwargs), self.destroy_publisher)

    def create_lifecycle_publisher(self, msg_type, topic, qos_profile, **kwargs):
        if _qos_overridable(topic, qos_profile):
            kwargs.setdefault("qos_overriding_options", QoSOverridingOptions.with_default_policies())
        return self._track(super().create_lifecycle_publisher(msg_type, topic, qos_profile, **kwargs),
                           self.destroy_lifecycle_publisher)

    def create_subscription(self, msg_type, topic, callback, qos_profile, **kwargs):
        # every subscription goes through input() (its ledger is keyed by ``topic``); not rclpy's own
        # (``/clock`` of the time source, created before this class' state exists)
        if getattr(self, "_input_ctx", None) is not None and topic != "/clock":
            callback = self.input(topic, callback)
        if _qos_overridable(topic, qos_profile):
            kwargs.setdefault("qos_overriding_options", QoSOverridingOptions.with_default_policies())
        return self._track(super().create_subscription(msg_type, topic, callback, qos_profile, **kwargs),
                           self.destroy_subscription)

    def create_timer(self, *args, **kwargs):
        return self._track(super().create_timer(*args, **kwargs), self.destroy_timer)

    def create_service(self, *args, **kwargs):
        return self._track(super().create_service(*args, **kwargs), self.destroy_service)

    def create_client(self, *args, **kwargs):
        return self._track(super().create_client(*args, **kwargs), self.destroy_client)

    def destroy_configured(self) -> None:
        """Destroy what the node created since on_configure (newest first); the node is unconfigured after."""
        entities, self._configured = self._configured or [], None
        for entity, destroy in reversed(entities):
            destroy(entity)  # returns False for one the node destroyed itself already

    def _on_common_change(self, changed: dict) -> None:
        if "diagnostics_period" in changed:
            self.diag.set_period(changed["diagnostics_period"])

    # --- input accounting -------------------------------------------------------------------
    def input(self, topic: str, callback: Callable) -> Callable:
        """Wrap a subscription callback: each message counts as ``received`` in the topic's ledger and
        ends as exactly one outcome: a drop reason (:meth:`drop` inside the callback), ``ignored``
        (:meth:`ignore`), ``error`` (the callback raised) or ``accepted`` (anything else)."""
        ctx = self._input_ctx

        @functools.wraps(callback)
        def wrapped(msg, *args):
            prev = getattr(ctx, "frame", None)
            ctx.frame = frame = [topic, None]
            self.diag.count_input(topic, "received")
            try:
                return callback(msg, *args)
            except Exception:
                frame[1] = frame[1] or "error"
                raise
            finally:
                self.diag.count_input(topic, frame[1] or "accepted")
                ctx.frame = prev

        return wrapped

    def _outcome(self, outcome: str) -> None:
        frame = getattr(self._input_ctx, "frame", None)
        if frame is not None and frame[1] is None:
            frame[1] = outcome

    def ignore(self, what: str = "") -> None:
        """The message of the running callback is not for this node or not usable now (inactive, another
        node's model): counted as ``ignored`` in its topic's ledger (and ``ignored_<what>``), not logged."""
        if what:
            self.diag.count(f"ignored_{what}")
        self._outcome("ignored")

    def drop(self, reason: str, detail: str = "", level: str = "warning") -> None:
        """Count a dropped input under ``dropped_<reason>`` (and as ``reason`` in the ledger of the input whose
        callback is running) and log it, at most once per second per reason."""
        self.diag.count(f"dropped_{reason}")
        self._outcome(reason)
        detail = detail if len(detail) < 300 else detail[:300] + "..."
        self.log_throttled(reason, f"dropped input ({reason}){': ' + detail if detail else ''}", level)

    def log_throttled(self, key: str, text: str, level: str = "warning", period: float = LOG_PERIOD) -> bool:
        """Log ``text`` unless ``key`` was logged within ``period`` s; the next line that is logged says how
        many were suppressed. (rclpy's own throttle is per call site, so one site dropping for many
        reasons would hide all but one.) Returns whether it logged."""
        now = time.monotonic()
        with self._log_lock:
            last = self._log_marks.get(key)
            if last is not None and now - last < period:
                self._log_suppressed[key] += 1
                return False
            self._log_marks[key] = now
            n = self._log_suppressed.pop(key, 0)
        text += f" [{n} more like it since the last report]" if n else ""
        logger = self.get_logger()  # one call site per severity: rclpy refuses a site that changes severity
        if level == "error":
            logger.error(text)
        elif level == "info":
            logger.info(text)
        else:
            logger.warning(text)
        return True

    # --- model updates ----------------------------------------------------------------------
    def accept_model_update(self, msg, model_id: str, current_version: int) -> bool:
        """The one check every node runs on a ``ModelUpdate`` before it decodes the payload: signed by a
        trusted fleet key, intact, for ``model_id`` and newer than ``current_version``. Refusals are
        counted as ``dropped_model_update_<reason>`` and logged (once per second per reason); updates
        for another node's model are only counted (``model_update_other_model``)."""
        from sakura_nexus.federated.common.signing import UpdateGate

        if msg.model_id != model_id and msg.model_id in MODEL_IDS:
            self.diag.count("model_update_other_model")
            self.ignore()
            return False
        if self._update_gate is None:
            self._update_gate = UpdateGate(self.params["trusted_keys"])
        v = self._update_gate.check(model_id=msg.model_id, version=int(msg.version), codec=msg.codec,
                                    payload=bytes(msg.payload), sha256=msg.sha256, key_id=msg.key_id,
                                    signature=bytes(msg.signature), current_version=int(current_version),
                                    expected_model_id=model_id)
        if not v.ok:
            self.drop(f"model_update_{v.reason}", v.detail + "; the current model is kept", level="error")
        return v.ok

    # --- clock faults -----------------------------------------------------------------------
    def watch_clock(self, on_backwards: Callable[[], None]) -> None:
        """Check the node's clock for jumps on every :meth:`checked_now`; ``on_backwards`` resets the
        node's time-dependent state after a backward jump."""
        self._clock_guard = ClockGuard(self.params["max_clock_offset"])
        self._on_clock_back = on_backwards

    def checked_now(self) -> float:
        """The node's clock (s), after checking it for a jump since the last call (counted as
        ``clock_jumps_backward`` / ``clock_jumps_forward``; a backward jump resets time-dependent state)."""
        now = self.get_clock().now().nanoseconds * 1e-9
        guard = self._clock_guard
        if guard is None:
            return now
        guard.max_offset = self.params["max_clock_offset"]
        jump = guard.observe(now)
        if jump == BACKWARDS:
            self.diag.count("clock_jumps_backward")
            self.log_throttled("clock_backward", f"clock jumped backwards (now {now:.3f} s): "
                               "time-dependent state reset")
            if self._on_clock_back is not None:
                self._on_clock_back()
        elif jump == FORWARDS:
            self.diag.count("clock_jumps_forward")
            self.log_throttled("clock_forward", f"clock jumped forwards (now {now:.3f} s)", "info")
        return now

    def future_stamp(self, stamp: float, now: float, what: str) -> bool:
        """True (and the input dropped as ``future_stamp_<what>``) if ``stamp`` is more than
        ``max_clock_offset`` ahead of ``now``: a foreign clock; it must not become the time reference.
        Before the node's clock has started (``now`` 0: sim time, no ``/clock`` yet) every input is dropped
        as ``no_clock_<what>``."""
        guard = self._clock_guard
        if guard is None:
            return False
        if now <= 0.0:
            # on sim time before the first /clock: no stamp can be judged, so none may become the reference
            # (a restarted node whose first odometry came from a foreign clock stalled on it for good)
            self.drop(f"no_clock_{what}", f"{what} received before the node's clock started (no /clock yet)")
            return True
        if not guard.is_future(stamp, now):
            return False
        self.drop(f"future_stamp_{what}", f"{what} stamped {stamp - now:.3f} s ahead of the node's clock")
        return True

    @property
    def is_active(self) -> bool:
        """The node is in the active state (set by the managed-entity callbacks of on_activate/on_deactivate,
        which every node reaches through ``super()``)."""
        return self._activity.is_activated

    # Default transitions succeed; subclasses call super() last in on_activate / on_deactivate / on_cleanup.
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.destroy_configured()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activity.on_shutdown(state)
        self.stop_workers()
        self.destroy_configured()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activity.on_error(state)
        self.stop_workers()
        self.destroy_configured()  # the node goes back to unconfigured
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
    return spin_nodes([node], executor, stop, node.get_logger())


def spin_nodes(nodes: list[NexusNode], executor, stop: threading.Event, logger,
               error_counter: str = "callback_errors") -> int:
    """Configure + activate the nodes with ``autostart``, spin ``executor`` (holding the nodes) until ``stop``
    is set, then deactivate the active ones (the last first: the policy's final zero goes out while its
    inputs still flow), shut the executor down, destroy the nodes and rclpy. One failing callback must not
    take the process down: it is logged (throttled) and counted as ``error_counter`` in every node's
    diagnostics. Returns the process exit code."""
    for node in nodes:
        if node.params.as_dict().get("autostart", True):
            node.trigger_configure()
            node.trigger_activate()

    def spin():
        while rclpy.ok() and not stop.is_set():
            try:
                executor.spin_once(timeout_sec=0.1)
            except Exception as e:  # noqa: BLE001
                for node in nodes:
                    node.diag.count(error_counter)
                logger.error(f"callback raised {e!r}", throttle_duration_sec=5.0)

    spinner = threading.Thread(target=spin, name="executor", daemon=True)
    spinner.start()
    try:
        while not stop.wait(0.2):
            if not spinner.is_alive():
                break
    finally:
        logger.info("shutting down")
        for node in reversed(nodes):
            if node.is_active:
                node.trigger_deactivate()  # nodes publish their final safe output here
        executor.shutdown(timeout_sec=2.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
