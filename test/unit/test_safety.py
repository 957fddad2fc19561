"""Safety layer: property tests (hypothesis) over arbitrary planner outputs and timings, plus unit tests.

Properties (for fixed limits, see sakura_nexus/control/safety.py and docs/control.md):
  P1 output is always finite and |v| <= max_v, |w| <= max_w
  P2 normal-mode steps respect the acceleration limit; consecutive normal steps the jerk limit
  P3 emergency-mode steps never grow the command, never flip its sign and stay within the emergency
     deceleration (or are hard stops to exactly zero)
  P4 after trigger_estop() every command is exactly zero until reset_estop()
  P5 stale input yields exactly zero at every call from last_input + timeout + one control period on
"""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sakura_nexus.control.safety import SafetyLayer, SafetyLimits, goal_reached, speed_scale

N_EXAMPLES = int(os.environ.get("SAKURA_HYPOTHESIS_EXAMPLES", "300"))
PROP = settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-9

# ---- strategies -----------------------------------------------------------------------------------
nasty_float = st.one_of(
    st.floats(-2.0, 2.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-320, 0.0, -0.0]),
)
dts = st.one_of(
    st.just(0.05),
    st.floats(1e-4, 0.3),
    st.floats(1e-9, 1e-4),
    st.just(0.0),
    st.floats(0.3, 100.0),          # forward time jump
    st.floats(-5.0, -1e-6),         # clock runs backwards (sim reset)
)
ages = st.one_of(st.floats(0.0, 0.1), st.floats(0.0, 0.05), st.floats(0.1, 10.0), st.just(None),
                 st.floats(-1.0, 0.0), st.just(math.nan))


@st.composite
def limits_st(draw):
    period = draw(st.sampled_from([0.01, 0.05, 0.1]))
    max_v = draw(st.floats(0.05, 2.0))
    max_w = draw(st.floats(0.1, 6.0))
    slow = draw(st.floats(0.0, 3.0))
    return SafetyLimits(
        max_v=max_v, max_w=max_w,
        max_acc_v=draw(st.floats(0.05, 20.0)), max_acc_w=draw(st.floats(0.05, 50.0)),
        max_jerk_v=draw(st.one_of(st.floats(0.1, 1000.0), st.just(math.inf))),
        max_jerk_w=draw(st.floats(0.1, 1000.0)),
        control_period=period,
        watchdog_timeout=draw(st.floats(0.02, 0.5)),
        emergency_decel_v=draw(st.one_of(st.none(), st.floats(1.0, 5.0).map(lambda k: k * max_v / period))),
        uncertainty_slow=slow, uncertainty_stop=slow + draw(st.floats(0.01, 3.0)),
        collision_stop=draw(st.floats(0.05, 1.0)),
    )


step_st = st.fixed_dictionaries({
    "dt": dts, "v": nasty_float, "w": nasty_float, "age": ages,
    "unc": st.one_of(st.floats(0.0, 1.0), nasty_float), "risk": st.one_of(st.floats(0.0, 0.5), nasty_float),
    "goal": st.booleans(),
    "estop": st.sampled_from([None] * 12 + ["trigger", "reset"]),
})


def _run(limits: SafetyLimits, steps, t0: float = 100.0):
    """Feed the steps; yield (t, step, command, estop_latched_before_call)."""
    layer = SafetyLayer(limits)
    t = t0
    for s in steps:
        t += s["dt"]
        if s["estop"] == "trigger":
            layer.trigger_estop("test")
        elif s["estop"] == "reset":
            layer.reset_estop()
        last_in = None if s["age"] is None else t - s["age"]
        cmd = layer.filter(s["v"], s["w"], t, last_in, s["unc"], s["risk"], s["goal"])
        yield t, s, cmd, layer.estopped


# ---- properties ------------------------------------------------------------------------------------
@PROP
@given(limits=limits_st(), steps=st.lists(step_st, min_size=1, max_size=80))
def test_limits_never_exceeded(limits, steps):
    L = limits
    prev = None         # (t, v, w) of the last call with a usable clock
    prev_acc = None     # (av, aw) of the last normal-mode step, None after anything else
    for t, s, c, _ in _run(L, steps):
        assert math.isfinite(c.v) and math.isfinite(c.w)                       # P1 + NaN never escapes
        assert abs(c.v) <= L.max_v * (1 + TOL) and abs(c.w) <= L.max_w * (1 + TOL)
        if prev is None or s["dt"] < 0 or "init" in c.reasons or "estop" in c.reasons:
            if s["dt"] < 0 or "estop" in c.reasons:
                assert c.v == 0.0 and c.w == 0.0                               # hard stops are exact zeros
            prev, prev_acc = (t, c.v, c.w), None
            continue
        dt = t - prev[0]
        if s["dt"] == 0.0:
            assert (c.v, c.w) == (prev[1], prev[2])                            # duplicate stamp: hold
            continue
        dv, dw = c.v - prev[1], c.w - prev[2]
        if c.emergency:                                                        # P3
            for u0, u1, dec in ((prev[1], c.v, L.decel_v), (prev[2], c.w, L.decel_w)):
                assert abs(u1) <= abs(u0) + TOL and u0 * u1 >= 0.0
                assert abs(u1 - u0) <= dec * dt * (1 + TOL) + TOL
            prev_acc = None
        else:                                                                  # P2
            av, aw = dv / dt, dw / dt
            assert abs(av) <= L.max_acc_v * (1 + 1e-7) + 1e-7
            assert abs(aw) <= L.max_acc_w * (1 + 1e-7) + 1e-7
            if prev_acc is not None:
                assert abs(av - prev_acc[0]) <= L.max_jerk_v * dt * (1 + 1e-7) + 1e-6
                assert abs(aw - prev_acc[1]) <= L.max_jerk_w * dt * (1 + 1e-7) + 1e-6
            prev_acc = (av, aw)
        prev = (t, c.v, c.w)


@PROP
@given(steps=st.lists(step_st, min_size=1, max_size=60))
def test_estop_latches_until_reset(steps):
    latched = False
    for _, s, c, estopped in _run(SafetyLimits(), steps):
        if s["estop"] == "trigger":
            latched = True
        elif s["estop"] == "reset":
            latched = False
        assert estopped == latched
        if latched:                                                            # P4
            assert c.v == 0.0 and c.w == 0.0 and "estop" in c.reasons


@PROP
@given(limits=limits_st(),
       before=st.lists(st.tuples(st.floats(1e-3, 0.2), st.floats(-5, 5), st.floats(-10, 10)), min_size=1,
                       max_size=40),
       after=st.lists(st.tuples(st.floats(1e-4, 0.2), nasty_float, nasty_float), min_size=1, max_size=40))
def test_stale_input_zero_within_timeout_plus_period(limits, before, after):
    """Fresh input at full command authority, then the input stops (last stamp t_in) while the planner
    keeps producing arbitrary commands at irregular dt: from t_in + timeout + period on, output is 0."""
    layer = SafetyLayer(limits)
    t = 50.0
    for dt, v, w in before:
        t += dt
        layer.filter(v, w, t, t)
    t_in = t
    deadline = t_in + limits.watchdog_timeout + limits.control_period
    for dt, v, w in after:
        t += dt
        c = layer.filter(v, w, t, t_in)
        if t >= deadline:                                                      # P5
            assert c.v == 0.0 and c.w == 0.0, (t - t_in, c)
        if t - t_in > limits.watchdog_timeout:
            assert "watchdog" in c.reasons and c.emergency


@PROP
@given(limits=limits_st(), v=st.floats(-3, 3), w=st.floats(-8, 8), period=st.floats(0.005, 0.1))
def test_constant_fresh_command_is_reached(limits, v, w, period):
    """Liveness: the limits are not satisfied trivially by never moving."""
    layer = SafetyLayer(limits)
    tv = max(-limits.max_v, min(limits.max_v, v))
    tw = max(-limits.max_w, min(limits.max_w, w))
    t, c = 0.0, None
    horizon = 2 * (2 * limits.max_v / limits.max_acc_v + 2 * limits.max_w / limits.max_acc_w) + 2 + (
        4 * limits.max_acc_v / limits.max_jerk_v + 4 * limits.max_acc_w / limits.max_jerk_w)
    cap = max(limits.watchdog_timeout, 2 * limits.control_period)   # longest dt counted as ramp time
    horizon *= max(1.0, period / cap)
    for _ in range(int(horizon / period) + 2):
        t += period
        c = layer.filter(v, w, t, t)
    assert c.v == pytest.approx(tv, abs=1e-6) and c.w == pytest.approx(tw, abs=1e-6)


# ---- unit tests ------------------------------------------------------------------------------------
def _drive(layer, v, w, n, t=0.0, period=0.05, **kw):
    c = None
    for _ in range(n):
        t += period
        c = layer.filter(v, w, t, t, **kw)
    return t, c


def test_first_call_is_zero_and_ramps():
    layer = SafetyLayer()
    c = layer.filter(0.5, 1.0, 0.0, 0.0)
    assert (c.v, c.w) == (0.0, 0.0) and "init" in c.reasons
    c = layer.filter(0.5, 1.0, 0.05, 0.05)
    assert 0.0 < c.v <= 1.0 * 0.05 + 1e-12 and "rate_limited_v" in c.reasons


def test_default_limits_match_parameter_schema():
    lim = SafetyLimits()
    assert (lim.max_v, lim.max_w, lim.watchdog_timeout) == (0.5, 1.2, 0.1)
    assert lim.decel_v == pytest.approx(10.0) and lim.decel_w == pytest.approx(24.0)


def test_invalid_limits_rejected():
    with pytest.raises(ValueError):
        SafetyLimits(max_v=-1.0)
    with pytest.raises(ValueError):
        SafetyLimits(emergency_decel_v=1.0)   # cannot stop 0.5 m/s within 0.05 s
    with pytest.raises(ValueError):
        SafetyLimits(uncertainty_slow=2.0, uncertainty_stop=1.0)
    with pytest.raises(ValueError):
        SafetyLimits(max_acc_v=math.nan)


def test_uncertainty_scaling():
    assert speed_scale(0.2, 0.5, 2.0) == 1.0
    assert speed_scale(1.25, 0.5, 2.0) == pytest.approx(0.5)
    assert speed_scale(2.0, 0.5, 2.0) == 0.0
    assert speed_scale(math.nan, 0.5, 2.0) == 0.0
    layer = SafetyLayer()
    _, c = _drive(layer, 0.5, 1.2, 60, uncertainty=1.25)
    assert c.v == pytest.approx(0.25) and c.w == pytest.approx(0.6) and "uncertainty_slow" in c.reasons
    _, c = _drive(layer, 0.5, 1.2, 60, t=10.0, uncertainty=5.0)
    assert (c.v, c.w) == (0.0, 0.0) and "uncertainty_stop" in c.reasons and not c.emergency


def test_collision_risk_is_protective_stop():
    layer = SafetyLayer()
    t, _ = _drive(layer, 0.5, 0.0, 40)
    c = layer.filter(0.5, 0.0, t + 0.05, t + 0.05, collision_risk=0.9)
    assert c.emergency and "collision_risk" in c.reasons and c.v == 0.0     # 0.5 m/s - 10 m/s^2 * 0.05 s
    c = layer.filter(0.5, 0.0, t + 0.1, t + 0.1, collision_risk=math.nan)
    assert c.v == 0.0 and "collision_risk" in c.reasons


def test_goal_reached_controlled_stop():
    layer = SafetyLayer()
    t, _ = _drive(layer, 0.5, 0.5, 40)
    t, c = _drive(layer, 0.5, 0.5, 1, t=t, goal_reached=True)
    assert 0.0 < c.v < 0.5 and not c.emergency and "goal_reached" in c.reasons
    _, c = _drive(layer, 0.5, 0.5, 40, t=t, goal_reached=True)
    assert (c.v, c.w) == (0.0, 0.0)
    lim = SafetyLimits(goal_tolerance=0.2, goal_yaw_tolerance=0.3)
    assert goal_reached((1.0, 1.0, 0.0), (1.1, 1.1, 0.2), lim)
    assert not goal_reached((1.0, 1.0, 0.0), (1.1, 1.1, 1.0), lim)
    assert goal_reached((1.0, 1.0, 0.0), (1.1, 1.1, 1.0), SafetyLimits(goal_tolerance=0.2))
    assert not goal_reached((1.0, 1.0, 0.0), (1.3, 1.1, 0.0), lim)


def test_invalid_command_stops_smoothly():
    layer = SafetyLayer()
    t, _ = _drive(layer, 0.5, 0.0, 40)
    c = layer.filter(math.nan, 0.0, t + 0.05, t + 0.05)
    assert "invalid_command" in c.reasons and 0.0 < c.v < 0.5 and not c.emergency


def test_estop_latched_and_reset():
    layer = SafetyLayer()
    t, _ = _drive(layer, 0.5, 1.0, 40)
    layer.trigger_estop("button")
    for k in range(10):
        c = layer.filter(0.5, 1.0, t + 0.05 * k, t + 0.05 * k)
        assert (c.v, c.w) == (0.0, 0.0) and "estop" in c.reasons
    layer.reset_estop()
    _, c = _drive(layer, 0.5, 1.0, 1, t=t + 1.0)
    # a long gap counts as at most max(2 periods, 2*acc/jerk) = 0.1 s of ramp time
    assert 0.0 < c.v <= 1.0 * 0.1 + 1e-12 and "estop" not in c.reasons


def test_clock_backwards_and_nonfinite_are_hard_stops():
    layer = SafetyLayer()
    t, _ = _drive(layer, 0.5, 1.0, 40)
    c = layer.filter(0.5, 1.0, t - 1.0, t - 1.0)
    assert (c.v, c.w) == (0.0, 0.0) and "clock_invalid" in c.reasons
    c = layer.filter(0.5, 1.0, math.nan, t)
    assert (c.v, c.w) == (0.0, 0.0) and "clock_invalid" in c.reasons


def test_watchdog_exact_timing_at_control_rate():
    """20 Hz loop, input stops: zero at the first call after timeout (here at most one period later)."""
    layer = SafetyLayer()
    t, c = _drive(layer, 0.5, 1.2, 60)
    assert c.v == pytest.approx(0.5)
    t_in = t
    seen_zero_at = None
    for k in range(1, 10):
        now = t_in + 0.05 * k
        c = layer.filter(0.5, 1.2, now, t_in)
        if c.v == 0.0 and c.w == 0.0 and seen_zero_at is None:
            seen_zero_at = now - t_in
    assert seen_zero_at is not None and seen_zero_at <= 0.1 + 0.05 + 1e-9


def test_set_limits_live():
    layer = SafetyLayer()
    t, c = _drive(layer, 0.5, 1.2, 60)
    assert c.v == pytest.approx(0.5)
    layer.set_limits(SafetyLimits(max_v=0.2, max_w=0.5))
    c = layer.filter(0.5, 1.2, t + 0.05, t + 0.05)
    assert abs(c.v) <= 0.2 and abs(c.w) <= 0.5 and "limits_changed" in c.reasons
    _, c = _drive(layer, 0.5, 1.2, 20, t=t + 0.05)
    assert c.v == pytest.approx(0.2) and c.w == pytest.approx(0.5)
    layer.set_limits(SafetyLimits(max_v=0.6))          # raising limits: ordinary rate-limited ramp
    _, c2 = _drive(layer, 0.6, 1.2, 1, t=t + 5.0)
    assert c2.v <= 0.2 + 1.0 * 0.1 + 1e-9
    bad = SafetyLimits()
    bad.max_v = -1.0                                    # mutated after construction: re-validated
    with pytest.raises(ValueError):
        layer.set_limits(bad)


def test_deterministic():
    seq = [(0.05 * (k % 7), (-1) ** k * 0.3 * k, 0.01 * k) for k in range(200)]

    def run():
        layer = SafetyLayer()
        out, t = [], 0.0
        for dt, v, w in seq:
            t += dt
            c = layer.filter(v, w, t, t - 0.02 * (k := len(out) % 9), 0.3 * (k % 4), 0.1)
            out.append((c.v, c.w, c.reasons))
        return out

    assert run() == run()
