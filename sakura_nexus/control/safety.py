"""Safety layer: the last stage every velocity command passes through, whatever produced it.

Pure Python floats, deterministic, no ROS, no numpy needed. Times are plain float seconds from
whatever clock the caller uses (wall, ROS, sim time), so simulated time works unchanged.

Per axis (linear ``v``, angular ``w``) the layer guarantees, for a fixed set of limits and a
monotone clock, on every call with ``dt = now - t_prev > 0``:

* ``|u| <= max``                                     (velocity, always, in every mode)
* ``|u - u_prev| / dt <= max_acc``                   (acceleration, normal mode)
* ``|a - a_prev| / dt <= max_jerk``                  (jerk, between two consecutive normal-mode calls)

Emergency mode (watchdog, collision-risk stop, non-finite risk) is the single documented exception:
the command is driven toward zero at ``emergency_decel`` (defaults to ``max / control_period``),
never grows in magnitude and never changes sign. With a monotone clock this brings a stale input
to exactly zero no later than ``last_input_time + watchdog_timeout + control_period``, however the
calls are spaced (see docs/control.md for the proof). E-stop and a clock that runs backwards are
hard stops: zero on that very call.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field

from sakura_nexus.geometry import wrap_angles

__all__ = ["SafetyLimits", "SafeCommand", "SafetyLayer", "goal_reached", "speed_scale"]

# Reasons reported in SafeCommand.reasons (stable strings: diagnostics and tests key on them).
R_INIT = "init"                      # first call: the clock starts, output zero
R_ESTOP = "estop"                    # latched e-stop: zero until reset_estop()
R_CLOCK = "clock_invalid"            # now is not finite or ran backwards: hard stop, state reset
R_HOLD = "hold"                      # dt == 0: previous command repeated
R_WATCHDOG = "watchdog"              # input stale (or never received / stamped in the future)
R_COLLISION = "collision_risk"       # predicted collision risk >= collision_stop (or not finite)
R_UNC_STOP = "uncertainty_stop"      # uncertainty >= uncertainty_stop (or not finite)
R_UNC_SLOW = "uncertainty_slow"      # speed limits scaled down by uncertainty
R_GOAL = "goal_reached"              # controlled stop at the goal
R_INVALID = "invalid_command"        # NaN/inf in the planner output: controlled stop
R_CLAMP_V = "clamp_v"                # requested |v| above the (scaled) limit
R_CLAMP_W = "clamp_w"
R_RATE_V = "rate_limited_v"          # output differs from the (clamped) target: accel/jerk limit active
R_RATE_W = "rate_limited_w"
R_LIMITS = "limits_changed"          # set_limits() lowered a limit below the current state


@dataclass
class SafetyLimits:
    """Limits of the safety layer. Names match the policy_node parameters (sakura_nexus.params)."""

    max_v: float = 0.5                 # m/s, |v|
    max_w: float = 1.2                 # rad/s, |w|
    max_acc_v: float = 1.0             # m/s^2
    max_acc_w: float = 3.0             # rad/s^2
    max_jerk_v: float = 20.0           # m/s^3 (math.inf disables)
    max_jerk_w: float = 60.0           # rad/s^3
    control_period: float = 0.05       # s, nominal period of the caller's loop (20 Hz)
    watchdog_timeout: float = 0.1      # s, input older than this is stale
    emergency_decel_v: float | None = None   # m/s^2; None -> max_v / control_period
    emergency_decel_w: float | None = None   # rad/s^2; None -> max_w / control_period
    uncertainty_slow: float = 0.5      # speed limits scale down linearly from here ...
    uncertainty_stop: float = 2.0      # ... to zero here (and stop above)
    collision_stop: float = 0.8        # predicted collision probability that triggers a protective stop
    goal_tolerance: float = 0.25       # m
    goal_yaw_tolerance: float = 3.2    # rad; >= pi ignores yaw

    def __post_init__(self) -> None:
        self.validate()

    @property
    def decel_v(self) -> float:
        return self.max_v / self.control_period if self.emergency_decel_v is None else self.emergency_decel_v

    @property
    def decel_w(self) -> float:
        return self.max_w / self.control_period if self.emergency_decel_w is None else self.emergency_decel_w

    def validate(self) -> SafetyLimits:
        """Raise ValueError unless the limits are consistent; returns self."""
        def pos(name: str, allow_inf: bool = False) -> None:
            x = getattr(self, name)
            ok = (isinstance(x, (int, float)) and not math.isnan(x) and x > 0
                  and (allow_inf or math.isfinite(x)))
            if not ok:
                raise ValueError(f"SafetyLimits.{name} must be a positive number, got {x!r}")

        for n in ("max_v", "max_w", "max_acc_v", "max_acc_w", "control_period", "watchdog_timeout",
                  "goal_tolerance", "goal_yaw_tolerance"):
            pos(n)
        for n in ("max_jerk_v", "max_jerk_w"):
            pos(n, allow_inf=True)
        for n in ("emergency_decel_v", "emergency_decel_w"):
            if getattr(self, n) is not None:
                pos(n)
        # The stale-input guarantee needs the emergency ramp to cover the whole speed range in one period.
        if self.decel_v * self.control_period < self.max_v * (1 - 1e-12):
            raise ValueError("emergency_decel_v must be >= max_v / control_period (stop within one period)")
        if self.decel_w * self.control_period < self.max_w * (1 - 1e-12):
            raise ValueError("emergency_decel_w must be >= max_w / control_period (stop within one period)")
        if not (0.0 <= self.uncertainty_slow < self.uncertainty_stop < math.inf):
            raise ValueError("need 0 <= uncertainty_slow < uncertainty_stop < inf")
        if not (0.0 < self.collision_stop <= 1.0):
            raise ValueError("collision_stop must be in (0, 1]")
        return self


@dataclass(frozen=True)
class SafeCommand:
    v: float
    w: float
    reasons: tuple[str, ...] = ()
    emergency: bool = False            # True: emergency-decel / hard-stop mode (accel/jerk exception)
    speed_scale: float = 1.0           # uncertainty speed scale applied to the limits (1 = none)

    @property
    def stopping(self) -> bool:
        return any(r in self.reasons for r in (R_ESTOP, R_CLOCK, R_WATCHDOG, R_COLLISION, R_UNC_STOP, R_GOAL,
                                               R_INVALID, R_INIT))


def speed_scale(uncertainty: float, slow: float, stop: float) -> float:
    """1 below ``slow``, linear down to 0 at ``stop``, 0 above; NaN -> 0."""
    if not uncertainty < stop:      # also catches NaN
        return 0.0
    if uncertainty <= slow:
        return 1.0
    return (stop - uncertainty) / (stop - slow)


def goal_reached(pose, goal, limits: SafetyLimits) -> bool:
    """Within ``goal_tolerance`` (and ``goal_yaw_tolerance`` unless it is >= pi or goal yaw is NaN)."""
    dx, dy = goal[0] - pose[0], goal[1] - pose[1]
    if not math.hypot(dx, dy) <= limits.goal_tolerance:
        return False
    if limits.goal_yaw_tolerance >= math.pi or len(goal) < 3 or not math.isfinite(goal[2]):
        return True
    return abs(wrap_angles(goal[2] - pose[2])) <= limits.goal_yaw_tolerance


def _brake_accel(room: float, dt: float, jerk: float) -> float:
    """Largest a >= 0 with a*dt + a^2/(2*jerk) <= room: accelerating at ``a`` for ``dt`` keeps enough
    room to ramp the acceleration back to zero (at ``jerk``) before velocity grows by ``room``."""
    if room <= 0.0:
        return 0.0
    if math.isinf(jerk):
        return room / dt
    return 2.0 * room / (dt + math.sqrt(dt * dt + 2.0 * room / jerk))


@dataclass
class _Axis:
    u: float = 0.0      # last published command
    a: float = 0.0      # acceleration of the last normal-mode step (0 after emergency/hold-from-reset)


def _limit_axis(st: _Axis, target: float, dt: float, vmax: float, amax: float, jmax: float,
                period: float, max_gap: float) -> float:
    """One normal-mode step of the per-axis velocity/accel/jerk limiter; updates ``st``; returns u.

    Invariant kept (so the three limits never conflict): ``u + max(a,0)^2/(2J) <= vmax`` and
    ``u - max(-a,0)^2/(2J) >= -vmax``, i.e. the velocity limit can always be respected by ramping the
    acceleration down at the jerk limit, for any future dt sequence."""
    u0, a0 = st.u, st.a
    dt_true = dt
    # After a long gap (time jump, missed cycles) do not let the whole gap count as ramp time: the
    # command was held meanwhile. The cap is at least 2*amax/jmax so the jerk bound, measured with
    # the true dt, still holds on this step (|a - a0| <= 2*amax <= jmax*dt_true).
    dt = min(dt, max(max_gap, 2.0 * period, 2.0 * amax / jmax))
    r = min(max(target, -vmax), vmax)
    e = r - u0
    b_lo, b_hi = -_brake_accel(u0 + vmax, dt, jmax), _brake_accel(vmax - u0, dt, jmax)
    lo = max(a0 - jmax * dt, -amax, b_lo)
    hi = min(a0 + jmax * dt, amax, b_hi)
    if lo > hi:  # only through floating-point noise: keep the velocity limit, then the accel limit
        lo = hi = min(max(a0, b_lo, -amax), b_hi, amax)
    exact = e / dt
    if lo <= exact <= hi and abs(exact) <= jmax * max(dt, period):
        # Close enough to land exactly on the target and still stop accelerating next period.
        st.a, st.u = (r - u0) / dt_true, r
        return r
    if e > 0:
        ideal = _brake_accel(e, dt, jmax)
    elif e < 0:
        ideal = -_brake_accel(-e, dt, jmax)
    else:
        ideal = 0.0
    a = min(max(ideal, lo), hi)
    u = min(max(u0 + a * dt, -vmax), vmax)
    st.a, st.u = (u - u0) / dt_true, u
    return u


_SNAP = 1e-9   # m/s or rad/s: magnitudes below this after an emergency step are exactly zero


def _emergency_axis(st: _Axis, dt: float, decel: float) -> float:
    mag = abs(st.u) - decel * dt
    st.u = math.copysign(mag, st.u) if mag > _SNAP else 0.0  # _SNAP absorbs round-off in decel * dt
    st.a = 0.0
    return st.u


def _finite(x) -> bool:
    try:
        return math.isfinite(x)
    except TypeError:
        return False


@dataclass
class SafetyLayer:
    """Filters every command. Not re-entrant per call, but thread-safe (set_limits from a callback)."""

    limits: SafetyLimits = field(default_factory=SafetyLimits)

    def __post_init__(self) -> None:
        self.limits.validate()
        self._lock = threading.Lock()
        self._vx = _Axis()
        self._wz = _Axis()
        self._t: float | None = None
        self._estop = False
        self._estop_reason = ""
        self._limits_changed = False
        self.last: SafeCommand = SafeCommand(0.0, 0.0, (R_INIT,), True, 0.0)

    # ---- live configuration / e-stop -------------------------------------------------------------
    def set_limits(self, limits: SafetyLimits) -> None:
        """Replace the limits (validated). If the current state violates the new limits it is clipped
        (the next output reports ``limits_changed``; that step is a hard-limit step, not rate-limited)."""
        limits = dataclasses.replace(limits).validate()
        with self._lock:
            self.limits = limits
            for st, vmax, amax in ((self._vx, limits.max_v, limits.max_acc_v),
                                   (self._wz, limits.max_w, limits.max_acc_w)):
                if abs(st.u) > vmax or abs(st.a) > amax:
                    st.u = min(max(st.u, -vmax), vmax)
                    st.a = 0.0
                    self._limits_changed = True

    def trigger_estop(self, reason: str = "") -> None:
        with self._lock:
            self._estop = True
            self._estop_reason = reason

    def reset_estop(self) -> None:
        with self._lock:
            self._estop = False
            self._estop_reason = ""

    @property
    def estopped(self) -> bool:
        return self._estop

    def reset(self) -> None:
        """Forget the command history and the clock (new episode). The e-stop latch is kept."""
        with self._lock:
            self._vx, self._wz, self._t = _Axis(), _Axis(), None
            self.last = SafeCommand(0.0, 0.0, (R_INIT,), True, 0.0)

    # ---- the filter -------------------------------------------------------------------------------
    def filter(self, cmd_v: float, cmd_w: float, now: float, last_input_time: float | None,
               uncertainty: float = 0.0, collision_risk: float = 0.0,
               goal_reached: bool = False) -> SafeCommand:
        with self._lock:
            out = self._filter(cmd_v, cmd_w, now, last_input_time, uncertainty, collision_risk, goal_reached)
            self.last = out
            return out

    def _hard_stop(self, reasons: list[str]) -> SafeCommand:
        self._vx, self._wz = _Axis(), _Axis()
        return SafeCommand(0.0, 0.0, tuple(reasons), True, 0.0)

    def _filter(self, cmd_v, cmd_w, now, last_input_time, uncertainty, collision_risk, goal) -> SafeCommand:
        L = self.limits
        reasons: list[str] = []
        if self._limits_changed:
            reasons.append(R_LIMITS)
            self._limits_changed = False
        if self._estop:
            reasons.append(R_ESTOP)
            if _finite(now):
                self._t = float(now)
            return self._hard_stop(reasons)
        if not _finite(now):
            reasons.append(R_CLOCK)
            self._t = None          # restart the clock on the next valid time
            return self._hard_stop(reasons)
        now = float(now)
        if self._t is None:
            self._t = now
            reasons.append(R_INIT)
            return self._hard_stop(reasons)
        dt = now - self._t
        if dt < 0.0:
            reasons.append(R_CLOCK)
            self._t = now
            return self._hard_stop(reasons)
        if dt == 0.0:
            reasons.append(R_HOLD)
            last = self.last
            return SafeCommand(self._vx.u, self._wz.u, tuple(reasons), last.emergency, last.speed_scale)
        self._t = now

        # ---- emergency conditions: decelerate at the emergency rate -------------------------------
        stale = (not _finite(last_input_time) or now - last_input_time > L.watchdog_timeout
                 or last_input_time - now > L.watchdog_timeout)
        if stale:
            reasons.append(R_WATCHDOG)
        if not (_finite(collision_risk) and collision_risk < L.collision_stop):
            reasons.append(R_COLLISION)
        if stale or R_COLLISION in reasons:
            v = _emergency_axis(self._vx, dt, L.decel_v)
            w = _emergency_axis(self._wz, dt, L.decel_w)
            return SafeCommand(v, w, tuple(reasons), True, 0.0)

        # ---- normal mode: choose a target, then rate-limit toward it -------------------------------
        unc = uncertainty if _finite(uncertainty) else math.nan
        s = speed_scale(unc, L.uncertainty_slow, L.uncertainty_stop)
        tv = float(cmd_v) if _finite(cmd_v) else math.nan
        tw = float(cmd_w) if _finite(cmd_w) else math.nan
        if math.isnan(tv) or math.isnan(tw):
            reasons.append(R_INVALID)
            tv = tw = 0.0
        if s <= 0.0:
            reasons.append(R_UNC_STOP)
            tv = tw = 0.0
        elif s < 1.0:
            reasons.append(R_UNC_SLOW)
        if goal:
            reasons.append(R_GOAL)
            tv = tw = 0.0
        cap_v, cap_w = L.max_v * s, L.max_w * s
        if abs(tv) > cap_v:
            reasons.append(R_CLAMP_V)
            tv = math.copysign(cap_v, tv)
        if abs(tw) > cap_w:
            reasons.append(R_CLAMP_W)
            tw = math.copysign(cap_w, tw)
        period, gap = L.control_period, L.watchdog_timeout
        v = _limit_axis(self._vx, tv, dt, L.max_v, L.max_acc_v, L.max_jerk_v, period, gap)
        w = _limit_axis(self._wz, tw, dt, L.max_w, L.max_acc_w, L.max_jerk_w, period, gap)
        if v != tv:
            reasons.append(R_RATE_V)
        if w != tw:
            reasons.append(R_RATE_W)
        return SafeCommand(v, w, tuple(reasons), False, s)
