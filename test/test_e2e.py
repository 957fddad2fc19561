"""End to end: sim_node (MuJoCo factory cell) + perception + world_model + policy as separate processes,
started like the launch files start them (installed executables, config/nexus.yaml), driven only
through ROS topics (goal_pose out; odom, contacts, world_state, plan, cmd_vel in): the robot reaches
a goal without touching anything, with the shipped checkpoint (models/).

The goal is one the robot can reach on an obstacle-free straight line from its start pose (with a
margin around its footprint), so the test checks the closed loop and not the planner's skill at
routing around obstacles (that is evaluated ROS-free by ``sakura-nexus evaluate``).

SAKURA_E2E_CONTROLLER=go_to_goal runs the same test with the baseline controller. The ROS-free
tests below cover the demo's goal picking, control-gap accounting and report.
"""

from __future__ import annotations

import json
import math
import os
import time

import numpy as np
import pytest

CONTROLLER = os.environ.get("SAKURA_E2E_CONTROLLER", "mpc")
SEED = 0
GOAL_TIMEOUT = 30.0  # sim seconds
TOLERANCE = 0.3      # m


@pytest.fixture(scope="module")
def models():
    from sakura_nexus.demo import models_missing

    reason = models_missing()
    if reason:
        pytest.skip(f"end-to-end test needs the shipped checkpoint: {reason}")


@pytest.mark.ros
@pytest.mark.slow
def test_closed_loop_reaches_goal_without_collision(models, rclpy_context, tmp_path):
    from sakura_nexus import demo

    t0 = time.monotonic()
    with demo.Pipeline(tmp_path / "e2e", seed=SEED, controller=CONTROLLER, startup_timeout=60.0) as pipe:
        m = pipe.mission
        goals, _ = demo.pick_goals(SEED, 1, start=m.pose, straight=True, min_dist=1.0, max_dist=2.0, margin=0.2)
        demo.drive(m, goals, GOAL_TIMEOUT, TOLERANCE, progress=False, supervisor=pipe.sup)
        m.hold()
        time.sleep(0.5)
    log = m.log
    s = demo.summarise(log)
    logs = {n: pipe.sup.log_tail(n, 6) for n in pipe.sup.procs}
    detail = f"summary {s}\nstart-up {pipe.startup_s:.1f} s, total {time.monotonic() - t0:.1f} s\nlogs {logs}"
    assert s["goals_reached"] == 1, detail
    assert s["collisions"] == 0, detail
    # the whole chain ran: camera -> perception -> world_model -> policy -> cmd_vel -> sim
    assert s["world_states"] > 10 and s["latency_ms"]["n"] > 10, detail
    assert len(log.path) > 5, detail
    # every process shut down cleanly on SIGINT
    assert all(code == 0 for code in pipe.exit_codes.values()), f"exit codes {pipe.exit_codes}\n{detail}"


# --- ROS-free parts of the demo -------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 3, 5])
def test_straight_goals_have_a_clear_line_and_are_deterministic(seed):
    pytest.importorskip("mujoco")
    from sakura_nexus.demo import pick_goals, segment_clearance
    from sakura_nexus.sim import CellConfig, FactoryCell

    cell = FactoryCell(CellConfig(seed=seed), camera_width=16, camera_height=16)
    start, radius, size = cell.pose, cell.cfg.robot.radius, cell.size[0]
    cell.close()
    goals, layout = pick_goals(seed, 4, straight=True, min_dist=1.0, margin=0.15)
    assert goals == pick_goals(seed, 4, straight=True, min_dist=1.0, margin=0.15)[0]
    prev = start
    for g in goals:
        assert math.hypot(g[0] - prev[0], g[1] - prev[1]) >= 1.0
        assert segment_clearance(layout, size, prev, g) >= radius + 0.15
        assert g[2] == pytest.approx(math.atan2(g[1] - prev[1], g[0] - prev[0]))
        prev = g


def test_control_gaps_count_missed_ticks():
    from sakura_nexus.demo import cmd_gaps

    period = 0.05
    t = list(np.arange(0, 2.0, period))          # 40 ticks at 20 Hz
    t = t[:10] + t[13:]                           # 3 ticks missing -> one gap of 4 periods
    c = cmd_gaps([int(x * 1e9) for x in t], period)
    assert c["gaps_over_1.5_periods"] == 1 and c["missed_ticks"] == 3
    assert c["max_gap_ms"] == pytest.approx(200.0, abs=1e-6)
    assert cmd_gaps([], period)["missed_ticks"] == 0


def test_report_and_summary_from_a_mission_log(tmp_path):
    pytest.importorskip("matplotlib")
    from sakura_nexus.demo import MissionLog, summarise, write_report
    from sakura_nexus.sim import CellConfig
    from sakura_nexus.sim.layout import generate_layout

    log = MissionLog(t0=10.0)
    rng = np.random.default_rng(0)
    for i in range(300):
        t = 10.0 + i / 30
        log.path.append((t, -2 + i / 100, 0.5 * math.sin(i / 50)))
        log.surprise.append((t, float(rng.uniform(1e-5, 1e-3)), float(rng.uniform(1e-4, 1e-3)), 0))
        k = int(t * 1e9)
        log.info_src[k] = 1_000_000_000 + i * 33_000_000
        log.plan_rx[k] = log.info_src[k] + int(rng.uniform(4e6, 12e6))
        log.plan_src[k] = log.plan_rx[k] - 200_000
    log.cmd_src = [1_000_000_000 + i * 33_000_000 for i in range(300)]
    log.goals = [{"goal": [1.0, 0.5, 0.0], "reached": True, "time_s": 5.0, "t_end": 15.0, "collisions": 0},
                 {"goal": [-1.0, -2.0, 0.0], "reached": False, "time_s": 5.0, "t_end": 20.0, "collisions": 1}]
    log.collisions, log.collision_at = 1, [(18.0, 0.5, 0.2)]
    s = summarise(log, {"seed": 0, "controller": "mpc"})
    assert s["goals"] == 2 and s["goals_reached"] == 1 and s["collisions"] == 1
    assert s["latency_ms"]["n"] == 300 and 4.0 <= s["latency_ms"]["p50"] <= 12.0
    assert s["control"]["missed_ticks"] == 0
    json.dumps(s)
    png = write_report(tmp_path, log, list(generate_layout(CellConfig(seed=0)).obstacles), s)
    assert png.is_file() and png.stat().st_size > 20_000
