"""ROS-free tests of the MuJoCo factory cell (sakura_nexus.sim)."""

import math
import time

import numpy as np
import pytest

from sakura_nexus.sim import CellConfig, FactoryCell, Obstacle, StepResult, export_sdf, generate_layout, plot_cell
from sakura_nexus.sim.layout import free_distance, point_rect_distance


@pytest.fixture(scope="module")
def cell():
    c = FactoryCell(CellConfig(seed=0))
    yield c
    c.close()


def test_same_seed_same_layout_and_bitwise_first_frame():
    a, b = FactoryCell(CellConfig(seed=7)), FactoryCell(CellConfig(seed=7))
    try:
        assert a.layout == b.layout and a.pose == b.pose and a.goal == b.goal
        fa, fb = a.render(), b.render()
        assert fa.shape == (64, 64, 3) and fa.dtype == np.uint8
        assert np.array_equal(fa, fb)
        # Driving, then reset(): back to the same first frame.
        for _ in range(5):
            a.step(0.5, 0.5)
        assert not np.array_equal(a.render(), fa)
        a.reset()
        assert a.time == 0.0 and np.array_equal(a.render(), fa)
    finally:
        a.close()
        b.close()


def test_different_seeds_differ():
    layouts = [generate_layout(CellConfig(seed=s)) for s in range(8)]
    assert len({lay.obstacles for lay in layouts}) == 8
    assert len({lay.appearance for lay in layouts}) == 8
    for lay in layouts:
        assert 4 <= len(lay.obstacles) <= 8
        assert {o.kind for o in lay.obstacles} == {"pallet", "box", "machine"}
        assert 0.6 <= lay.floor_friction <= 1.0
    a, b = FactoryCell(CellConfig(seed=1)), FactoryCell(CellConfig(seed=2))
    try:
        assert a.layout != b.layout
        assert not np.array_equal(a.render(), b.render())
    finally:
        a.close()
        b.close()


def test_config_overrides_and_reset_to_new_seed():
    c = FactoryCell(CellConfig(seed=3, floor_friction=0.42, n_obstacles=5, light=1.0))
    try:
        assert c.floor_friction == 0.42 and len(c.layout) == 5
        first = c.layout
        c.reset(seed=4)
        assert c.cfg.seed == 4 and c.layout != first and c.floor_friction == 0.42
        c.set_floor_friction(0.1)
        assert c.floor_friction == 0.1 and float(c.model.geom_friction[c._floor, 0]) == 0.1
        # texture_seed changes only the look, not the layout
        d = FactoryCell(CellConfig(seed=4, floor_friction=0.42, n_obstacles=5, light=1.0, texture_seed=99))
        assert tuple(d.layout) == generate_layout(CellConfig(seed=4, n_obstacles=5)).obstacles
        c.reset(seed=4)
        assert not np.array_equal(c.render(), d.render())
        d.close()
    finally:
        c.close()


def test_obstacles_keep_the_gap_and_stay_inside():
    for seed in range(20):
        cfg = CellConfig(seed=seed)
        lay = generate_layout(cfg)
        half = cfg.size / 2
        for i, o in enumerate(lay.obstacles):
            assert np.abs(o.corners()).max() <= half - cfg.obstacle_gap + 1e-6
            for p in lay.obstacles[i + 1:]:
                from sakura_nexus.sim.layout import polygon_distance

                assert polygon_distance(o.corners(), p.corners()) >= cfg.obstacle_gap - 1e-6


def _track(c, v, w, seconds=1.5, settle=0.5):
    c.set_pose(*c.sample_free_pose(np.random.default_rng(11), clearance=0.7))
    vel = []
    for _ in range(int(round(seconds / 0.1))):
        vel.append(c.step(v, w, 0.1).vel)
    vel = np.array(vel)
    return vel, np.abs(vel[int(settle / 0.1):] - [v, w]).mean(0)


def test_command_tracking_nominal_vs_low_friction():
    """Tolerances: the wheel loop is a torque-limited (0.5 N m -> ~2.2 m/s^2) proportional speed loop
    without load, so after the 0.3 s ramp the only error is the soft-contact creep of the tyres (<1 %).
    0.02 m/s / 0.05 rad/s is ~4 % of the commands, well above creep, far below the error at mu=0.03,
    where traction (mu*g*share on the wheels ~ 0.15 m/s^2) cannot follow in 1 s."""
    nominal = FactoryCell(CellConfig(seed=1, floor_friction=0.8))
    icy = FactoryCell(CellConfig(seed=1, floor_friction=0.03))
    try:
        for v, w in [(0.5, 0.0), (0.3, 1.0), (0.0, 1.5), (0.6, -0.5)]:
            vel, err = _track(nominal, v, w)
            assert err[0] < 0.02 and err[1] < 0.05, (v, w, err)
            assert abs(vel[-1][0] - v) < 0.01 and abs(vel[-1][1] - w) < 0.02
            _, err_icy = _track(icy, v, w)
            assert err_icy.sum() > 5 * err.sum() and err_icy.sum() > 0.1, (v, w, err, err_icy)
        # limits are enforced
        vel, _ = _track(nominal, 2.0, 0.0)
        assert abs(vel[-1][0] - 0.6) < 0.01
        vel, _ = _track(nominal, 0.0, -5.0)
        assert abs(vel[-1][1] + 1.5) < 0.03
    finally:
        nominal.close()
        icy.close()


def test_odometry_integrates_to_pose(cell):
    """The reported body velocities are consistent with the pose change (frames/units check)."""
    cell.set_pose(*cell.sample_free_pose(np.random.default_rng(3), clearance=0.8))
    x, y, yaw = cell.pose
    for _ in range(100):
        r = cell.step(0.3, 0.4, 0.01)
        v, w = r.vel
        x += v * math.cos(yaw) * 0.01
        y += v * math.sin(yaw) * 0.01
        yaw += w * 0.01
    px, py, pyaw = cell.pose
    assert math.hypot(px - x, py - y) < 0.01 and abs(math.remainder(pyaw - yaw, 2 * math.pi)) < 0.01


def _face_obstacle(c, ob: Obstacle, standoff: float = 0.7):
    """Pose at ``standoff`` m from the obstacle's face, looking at its centre (collision-free)."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = rng.uniform(-math.pi, math.pi)
        d = rng.uniform(0.5, 2.0)
        x, y = ob.x + d * math.cos(a), ob.y + d * math.sin(a)
        if abs(point_rect_distance(x, y, ob) - standoff) < 0.05 and \
                free_distance(x, y, c.layout, c.size[0]) >= standoff - 0.06:
            return x, y, math.atan2(ob.y - y, ob.x - x)
    raise AssertionError("no approach pose found")


def test_driving_into_obstacle_and_wall_reports_collision():
    c = FactoryCell(CellConfig(seed=5))
    try:
        for ob in c.layout[:3]:
            c.set_pose(*_face_obstacle(c, ob))
            assert not c.in_collision
            hit = None
            for k in range(40):
                r = c.step(0.4, 0.0, 0.1)
                assert isinstance(r, StepResult)
                if r.collided:
                    hit = k
                    break
            # 0.7 m gap minus the robot's half length (0.2) at <= 0.4 m/s: not before ~1.2 s
            assert hit is not None and hit >= 8, (ob.kind, hit)
            assert c.in_collision
            r = c.step(0.4, 0.0, 0.2)  # keep pushing: still in contact
            assert r.collided and c.in_collision
            r = c.step(-0.4, 0.0, 0.6)  # back off
            assert not c.in_collision
        # a wall
        c.set_pose(*c.sample_free_pose(np.random.default_rng(1), clearance=0.3))
        x, y, _ = c.pose
        c.set_pose(x, y, 0.0 if x > 0 else math.pi)  # face the nearer x wall
        collided = False
        for _ in range(120):
            if c.step(0.6, 0.0, 0.1).collided:
                collided = True
                break
        assert collided, c.pose  # may first hit an obstacle on the way: also a collision
    finally:
        c.close()


def test_sample_free_pose_is_collision_free(cell):
    rng = np.random.default_rng(42)
    for _ in range(100):
        x, y, yaw = cell.sample_free_pose(rng, clearance=0.2)
        assert free_distance(x, y, cell.layout, cell.size[0]) >= cell.cfg.robot.radius + 0.2 - 1e-9
        assert -math.pi <= yaw <= math.pi
        cell.set_pose(x, y, yaw)
        assert not cell.in_collision
        assert not cell.step(0.0, 0.0, 0.05).collided
    # reproducible from a seed
    assert cell.sample_free_pose(5, 0.3) == cell.sample_free_pose(5, 0.3)
    with pytest.raises(RuntimeError):
        cell.sample_free_pose(rng, clearance=2.5)


def test_render_any_size_not_blank(cell):
    cell.reset()
    for w, h in [(64, 64), (128, 128), (320, 240), (640, 480)]:
        img = cell.render(w, h)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert img.std() > 5  # floor, walls and obstacles, not a blank frame
    fx, fy, cx, cy = cell.camera_intrinsics(320, 240)
    assert fx == fy and cx == 159.5 and cy == 119.5
    assert fy == pytest.approx(120 / math.tan(math.radians(cell.cfg.robot.camera_fovy) / 2))


def test_state_accessors(cell):
    cell.reset()
    cell.set_goal(1.0, -1.0, 0.3)
    assert cell.goal == (1.0, -1.0, 0.3)
    assert cell.size == (6.0, 6.0)
    a0 = cell.wheel_angles
    r = cell.step(0.4, 0.0, dt=0.5)
    assert r.time == pytest.approx(0.5) and cell.time == r.time
    a1 = cell.wheel_angles
    assert a1[0] > a0[0] + 2 and a1[1] > a0[1] + 2  # forward = positive wheel rotation
    assert cell.wheel_rates[0] == pytest.approx(0.4 / cell.cfg.robot.wheel_radius, rel=0.03)
    assert cell.step(float("nan"), 0.0, 0.005).time == pytest.approx(0.505)  # NaN = stop, 1 step


def test_physics_is_fast(cell):
    """Target >= 2000 steps/s (bench/bench_sim.py measures ~10-20k); loose bound on a shared CI box."""
    cell.reset()
    n = 400
    t = time.perf_counter()
    cell.step(0.3, 0.5, dt=n * cell.cfg.timestep)
    rate = n / (time.perf_counter() - t)
    assert rate > 1000, rate


def test_plot_and_sdf_use_the_same_layout(cell, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3)
    plot_cell(axs[0], cell, legend=True)
    plot_cell(axs[1], generate_layout(cell.cfg))
    plot_cell(axs[2], cell.layout, size=6.0)
    n_obs = len(cell.layout)
    assert len(axs[0].patches) == 4 + n_obs + 1  # walls, obstacles, robot
    assert len(axs[2].patches) == 4 + n_obs
    fig.savefig(tmp_path / "map.png")
    plt.close(fig)
    sdf = export_sdf(cell.cfg)
    for i, o in enumerate(cell.layout):
        assert f'<model name="obstacle_{i}_{o.kind}">' in sdf
        assert f"<size>{o.sx:.6g} {o.sy:.6g} {o.sz:.6g}</size>" in sdf


def test_render_from_another_thread_gives_the_same_frame():
    import threading

    c = FactoryCell(CellConfig(seed=2))
    try:
        main = c.render()
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("img", c.render()))
        t.start()
        t.join(30)
        assert np.array_equal(out["img"], main)
        assert np.array_equal(c.render(), main)  # and back in this thread
    finally:
        c.close()
