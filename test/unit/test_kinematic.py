"""Physics-prior dynamics, the learned residual, the obstacle memory and the suite's task geometry."""

import math

import numpy as np
import pytest
import torch

from sakura_nexus.control.kinematic import ResidualUnicycle, UnicycleConfig, UnicycleModel, rollout_poses
from sakura_nexus.control.planner import MPPIConfig, MPPIPlanner
from sakura_nexus.models.obstacles import ObstacleMemory, RangeConfig, RangeHead, true_ranges


def test_unicycle_respects_acceleration_limits_and_integrates_a_circle():
    m = UnicycleModel(UnicycleConfig(max_acc_v=1.0, max_acc_w=3.0, dt=0.1))
    z = m.encode_state((0.0, 0.0, 0.0), (0.0, 0.0))[None]
    zs, sigma = m.rollout(z, torch.tensor([[[0.5, 1.0]] * 40]))
    v, w = zs[0, :, 3], zs[0, :, 4]
    assert torch.all(torch.diff(torch.cat([torch.zeros(1), v])) <= 0.1 + 1e-6)
    assert torch.all(torch.diff(torch.cat([torch.zeros(1), w])) <= 0.3 + 1e-6)
    assert float(v[-1]) == pytest.approx(0.5) and float(w[-1]) == pytest.approx(1.0)
    assert torch.all(sigma == 0)
    # steady state: a circle of radius v / w = 0.5 m (chord per step / yaw per step)
    xy, yaw = zs[0, 10:, :2].numpy(), zs[0, 10:, 2].numpy()
    chord = np.hypot(*np.diff(xy, axis=0).T)
    dyaw = np.abs(np.angle(np.exp(1j * np.diff(yaw))))
    np.testing.assert_allclose(chord / dyaw, 0.5, rtol=0.01)


def test_residual_starts_as_the_kinematic_model_and_learns_a_curvature_bias():
    cfg = UnicycleConfig()
    kin, res = UnicycleModel(cfg), ResidualUnicycle(cfg)
    cmds = np.tile([0.4, 0.0], (15, 1))
    a = rollout_poses(kin, (0, 0, 0), (0.4, 0.0), cmds)
    b = rollout_poses(res, (0, 0, 0), (0.4, 0.0), cmds)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # a robot whose right wheel runs slow: w_exec = w_cmd - 0.5 v_cmd (turns right when told straight)
    rng = np.random.default_rng(0)
    v = w = 0.0
    for _ in range(600):
        cmd = (rng.uniform(0.0, 0.5), rng.uniform(-1.0, 1.0))
        uv, uw = res.rate_limit(v, w, cmd)
        nv, nw = uv, uw - 0.5 * uv
        res.observe((v, w), cmd, (nv, nw))
        v, w = nv, nw
    c = rollout_poses(res, (0, 0, 0), (0.4, -0.2), cmds)
    truth_w = -0.2
    assert abs(c[-1, 2] - truth_w * 1.5) < 0.1               # learned: yaw follows the biased turn rate
    assert abs(a[-1, 2] - truth_w * 1.5) > 0.2               # the kinematic model does not


def test_residual_ignores_non_finite_and_standstill_samples():
    res = ResidualUnicycle()
    res.observe((0.0, 0.0), (0.0, 0.0), (0.0, 0.0))
    res.observe((math.nan, 0.0), (0.3, 0.0), (0.3, 0.0))
    assert res.samples == 0
    np.testing.assert_array_equal(res.weights, res.w0)


def test_true_ranges_see_a_box_ahead_and_nothing_behind():
    from sakura_nexus.sim.layout import Obstacle

    box = Obstacle(1.5, 0.0, 0.4, 2.0, 0.0, "box", 0.5)
    r = true_ranges([box], 10.0, (0.0, 0.0, 0.0))
    front = 1.5 - 0.2 - 0.19
    assert np.all(np.abs(r[6:10] - front / np.cos(RangeConfig().bearings()[6:10])) < 0.05)
    r_back = true_ranges([box], 10.0, (0.0, 0.0, math.pi))
    assert np.all(r_back == RangeConfig().max_range)


def test_obstacle_memory_keeps_unseen_points_and_clears_seen_through_ones():
    cfg = RangeConfig()
    mem = ObstacleMemory(cfg, memory_s=10.0)
    ranges = np.full(cfg.bins, cfg.max_range)
    ranges[8] = 0.8                                           # something 0.8 m ahead, slightly left
    mem.update((0.0, 0.0, 0.0), ranges, 0.0)
    assert len(mem) == 0                                      # one frame is not enough: confirmed by the next
    mem.update((0.0, 0.0, 0.0), ranges, 0.05)
    assert len(mem) == 1
    p = mem.points[0]
    assert 0.8 < p[0] < 1.05 and abs(p[1]) < 0.1
    # turned away: out of view, still remembered
    mem.update((0.0, 0.0, math.pi / 2), np.full(cfg.bins, cfg.max_range), 1.0)
    assert len(mem) == 1
    assert float(mem.clearance(torch.tensor([[0.99, 0.0]]))[0]) < 0.1
    # facing it again and seeing free space through it: cleared
    mem.update((0.0, 0.0, 0.0), np.full(cfg.bins, cfg.max_range), 2.0)
    assert len(mem) == 0
    assert float(mem.clearance(torch.tensor([[0.0, 0.0]]))[0]) > 100
    # a clock that ran backwards empties the memory
    mem.update((0.0, 0.0, 0.0), ranges, 3.0)
    mem.update((0.0, 0.0, 0.0), ranges, 3.05)
    assert len(mem) >= 1
    mem.update((0.0, 0.0, 0.0), np.full(cfg.bins, cfg.max_range), 0.5)
    assert len(mem) == 0


def test_obstacle_memory_flags_what_appears_in_seen_free_space_as_moving():
    cfg = RangeConfig()
    mem = ObstacleMemory(cfg)
    free = np.full(cfg.bins, cfg.max_range)
    for k in range(6):                                         # 0.5 s of free view ahead
        mem.update((0.0, 0.0, 0.0), free, 0.1 * k)
    ranges = free.copy()
    ranges[8] = 0.8                                            # then something is 0.8 m ahead
    mem.update((0.0, 0.0, 0.0), ranges, 0.6)
    mem.update((0.0, 0.0, 0.0), ranges, 0.7)
    assert len(mem) == 1 and mem.moving.all()
    p = torch.as_tensor(mem.points[0], dtype=torch.float32)
    # the moving point's clearance shrinks along a rollout (it keeps moving) ...
    c = mem.clearance(p.expand(1, 15, 2).contiguous() + torch.tensor([0.6, 0.0]))
    assert float(c[0, 0]) > float(c[0, -1]) and float(c[0, 0]) < 0.6
    # ... it is not routed round (the route marks static points only)
    assert mem.mark(np.zeros((40, 40), np.int16), 0.05, (0.0, -1.0)).max() == 0
    # a static obstacle seen from the start is not moving
    mem2 = ObstacleMemory(cfg)
    mem2.update((0.0, 0.0, 0.0), ranges, 0.0)
    mem2.update((0.0, 0.0, 0.0), ranges, 0.1)
    assert len(mem2) == 1 and not mem2.moving.any()


def test_obstacle_memory_marks_an_occupancy_grid():
    cfg = RangeConfig()
    mem = ObstacleMemory(cfg)
    ranges = np.full(cfg.bins, cfg.max_range)
    ranges[7] = 0.8
    mem.update((0.0, 0.0, 0.0), ranges, 0.0)
    mem.update((0.0, 0.0, 0.0), ranges, 0.05)
    grid = mem.mark(np.zeros((40, 40), np.int16), 0.05, (0.0, -1.0))
    assert grid.max() == 100 and (grid > 0).sum() >= 1


def test_planner_with_seen_obstacles_steers_round_them():
    """The same planner and unicycle: with the memory as the model's obstacles the plan leaves the
    straight line through a remembered obstacle; without it, it drives straight at it."""
    cfg = RangeConfig()
    mem = ObstacleMemory(cfg)
    ranges = np.full(cfg.bins, cfg.max_range)
    ranges[6:10] = 0.45
    mem.update((0.0, 0.0, 0.0), ranges, 0.0)
    mem.update((0.0, 0.0, 0.0), ranges, 0.05)
    blind, seeing = UnicycleModel(), UnicycleModel(obstacles=mem)
    res = {}
    for name, m in (("blind", blind), ("seeing", seeing)):
        p = MPPIPlanner(m, MPPIConfig(samples=256, seed=1))
        z = m.encode_state((0.0, 0.0, 0.0), (0.3, 0.0))
        for _ in range(8):
            r = p.plan(z, (3.0, 0.0, math.nan), prev_action=(0.3, 0.0))
        res[name] = r
    assert res["blind"].info["risk_max"] == 0.0
    def closest(r):
        return float(mem.clearance(torch.as_tensor(r.predicted_poses[:, :2], dtype=torch.float32)).min())

    assert closest(res["seeing"]) > 0.262 and closest(res["blind"]) < 0.262


def test_planner_measures_seen_clearance_once_per_rollout_with_the_same_decisions():
    """The planner measures a rollout's clearance to the seen obstacles once (contact probability +
    clearance critic). The plans are the same, bit for bit, as on the dynamics that only offers
    ``collision`` (where the clearance is measured twice), moving points included."""
    cfg = RangeConfig()
    mem = ObstacleMemory(cfg, confirm_radius=0.0)
    ranges = np.full(cfg.bins, cfg.max_range)
    ranges[5:11] = 0.6
    mem.update((0.0, 0.0, 0.0), ranges, 0.0)
    mem.moving[:2] = True                                   # two growing discs along the horizon
    mem.update((0.0, 0.0, 0.0), ranges, 0.05)
    assert len(mem) and mem.moving.any()

    class CollisionOnly:                                    # the contract without contact_probability
        def __init__(self, inner):
            self.inner, self.obstacles = inner, inner.obstacles

        def rollout(self, z, a, members=None):
            return self.inner.rollout(z, a)

        def pose(self, z):
            return self.inner.pose(z)

        def collision(self, z):
            return self.inner.collision(z)

    calls = []
    clearance = mem.clearance
    mem.clearance = lambda xy: (calls.append(tuple(xy.shape)), clearance(xy))[1]
    once, twice = UnicycleModel(obstacles=mem), CollisionOnly(UnicycleModel(obstacles=mem))
    plans = {}
    for name, m in (("once", once), ("twice", twice)):
        calls.clear()
        p = MPPIPlanner(m, MPPIConfig(samples=64, seed=3, evaluate_plan=False))
        z = once.encode_state((0.0, 0.0, 0.0), (0.2, 0.0))
        plans[name] = [p.plan(z, (2.5, 0.3, math.nan), prev_action=(0.2, 0.0)) for _ in range(5)]
        plans[name + "_calls"] = sum(1 for s in calls if s[0] == 64)
    assert plans["once_calls"] == 5 and plans["twice_calls"] == 10
    for a, b in zip(plans["once"], plans["twice"], strict=True):
        assert np.array_equal(a.actions, b.actions) and a.info["risk0"] == b.info["risk0"]


def test_range_head_shapes_and_mirror_order():
    head = RangeHead(RangeConfig(bins=16), members=3).eval()
    out = head(torch.rand(2, 3, 64, 64))
    assert out.shape == (3, 2, 16)
    r, s = head.predict(torch.rand(1, 3, 64, 64))
    assert r.shape == (16,) and np.isfinite(s)


def test_mover_path_crosses_the_route_at_the_arrival_time():
    from sakura_nexus.experiments.suite import MOVER_SPEED, _mover_xy

    plan = {"centre": [1.0, 2.0], "normal": [0.0, 1.0], "amplitude": 1.6, "arrive": 5.0, "phase": 0.0}
    x, y = _mover_xy(plan, 5.0)
    assert (x, y) == pytest.approx((1.0, 2.0), abs=1e-9)
    x2, y2 = _mover_xy(plan, 5.0 + 1.0)
    assert abs(y2 - y) == pytest.approx(MOVER_SPEED, abs=1e-6)
    ys = [_mover_xy(plan, t)[1] for t in np.linspace(0, 60, 600)]
    assert max(ys) <= 3.6 + 1e-9 and min(ys) >= 0.4 - 1e-9


def test_residual_learns_a_torque_limited_response():
    """A heavy robot on weak motors: each wheel's ground speed changes by at most 0.03 m/s per step.
    The wheel-space hinges make that saturation learnable; the kinematic model overshoots it."""
    cfg = UnicycleConfig()
    h = cfg.half_track
    res, kin = ResidualUnicycle(cfg), UnicycleModel(cfg)

    def truth(v, w, cmd):
        uv, uw = res.rate_limit(v, w, cmd)
        wheels = np.array([v - h * w, v + h * w])
        target = np.array([uv - h * uw, uv + h * uw])
        wheels = wheels + np.clip(target - wheels, -0.03, 0.03)
        return (wheels[0] + wheels[1]) / 2, (wheels[1] - wheels[0]) / (2 * h)

    rng = np.random.default_rng(1)
    v = w = 0.0
    for k in range(1500):
        if k % 10 == 0:
            cmd = (rng.uniform(0.0, 0.5), rng.uniform(-1.2, 1.2))
        nv, nw = truth(v, w, cmd)
        res.observe((v, w), cmd, (nv, nw), refit=False)
        v, w = nv, nw
    res.fit()
    cmds = np.tile([0.5, 0.6], (15, 1))
    pose, vel, path = np.zeros(3), (0.0, 0.0), []
    for c in cmds:
        vel = truth(*vel, c)
        mid = pose[2] + 0.5 * vel[1] * cfg.dt
        pose = pose + (vel[0] * math.cos(mid) * cfg.dt, vel[0] * math.sin(mid) * cfg.dt, vel[1] * cfg.dt)
        path.append(pose.copy())
    err_learned = np.hypot(*(rollout_poses(res, (0, 0, 0), (0, 0), cmds)[-1, :2] - path[-1][:2]))
    err_kin = np.hypot(*(rollout_poses(kin, (0, 0, 0), (0, 0), cmds)[-1, :2] - path[-1][:2]))
    assert err_kin > 0.1
    assert err_learned < 0.2 * err_kin
