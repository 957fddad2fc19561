"""The whole robot (sim, perception, world model, policy, federated sync) under 10,000 malformed messages on
every input topic, published as fast as one process can: every node stays alive, the loop keeps its rate,
and every message a node received is in its diagnostics ledger (``input/<topic>``: received = accepted +
ignored + the count of each drop reason). DDS may not deliver every message of a flood (reader queues are
bounded; world_state and model_update keep only the newest), so the ledger accounts for what each node
*received*; the share delivered is printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import wait_for

pytestmark = [pytest.mark.ros, pytest.mark.slow]

PER_TOPIC = 10_000


def test_ten_thousand_malformed_messages_per_input_topic(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray

    from sakura_nexus import bringup
    from sakura_nexus.harness.pipeline import Pipeline, models_missing
    from sakura_nexus.ros.garbage import NO_MALFORMED_FORM, TOPICS

    if models_missing():
        pytest.skip(models_missing())
    t_test = time.monotonic()
    # the pipeline joins this pytest process' domain (rclpy is initialised here by the pipeline itself)
    with Pipeline(tmp_path / "run", seed=0, controller="go_to_goal", domain_id=int(os.environ["ROS_DOMAIN_ID"])) \
            as pipe:
        sup, m = pipe.sup, pipe.mission
        sup.start(bringup.FEDERATED_SYNC, {"start_supernode": False, "spool_dir": str(tmp_path / "spool")})
        diags: dict = {}  # node -> newest key/values
        m.node.create_subscription(DiagnosticArray, "/diagnostics", lambda a: diags.update(
            {st.hardware_id: {kv.key: kv.value for kv in st.values} for st in a.status}), 100)
        assert wait_for(lambda: "federated_sync_node" in diags, 60), sup.log_tail("federated_sync_node", 20)
        m.send_goal(*m.pose)  # hold still: a goal at the current pose
        out = tmp_path / "garbage.json"
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", "sakura_nexus.ros.garbage", "--count", str(PER_TOPIC),
                             "--rate", "0", "--out", str(out)], env=pipe.env, timeout=240,
                            capture_output=True, text=True)
        flood_s = time.monotonic() - t0
        assert rc.returncode == 0, rc.stdout + rc.stderr
        assert "unmatched topics: []" in rc.stdout, rc.stdout  # every input had its subscriber(s)
        published = json.loads(out.read_text())["published"]
        assert all(published[t] >= PER_TOPIC for t in TOPICS), published

        # the loop still runs at rate: commands at the control rate, world states flowing
        time.sleep(2.0)  # the queues drain
        c0, w0, t1 = len(m.log.cmd_src), m.world_states, time.monotonic()
        time.sleep(3.0)
        dt = time.monotonic() - t1
        cmd_hz, ws_hz = (len(m.log.cmd_src) - c0) / dt, (m.world_states - w0) / dt
        assert not sup.dead(), {n: sup.log_tail(n, 20) for n in sup.dead()}
        assert cmd_hz >= 15.0, cmd_hz     # control_rate 20 Hz
        assert ws_hz >= 5.0, ws_hz        # camera 30 Hz; perception as fast as the shared cores allow

        # every message each node received is accounted for, by reason
        time.sleep(1.5)  # one more diagnostics period after the rates were measured
        subscribers = {"odom": ("world_model_node", "policy_node"), "cmd_vel": ("world_model_node", "sim_node"),
                       "contacts": ("world_model_node",), "observation": ("world_model_node", "policy_node"),
                       "world_state": ("policy_node",), "goal_pose": ("policy_node", "sim_node"),
                       "map": ("policy_node",), "e_stop": ("policy_node",),
                       "model_update": ("perception_node", "world_model_node", "policy_node"),
                       "model_delta": ("federated_sync_node",), "camera/image_raw": ("perception_node",),
                       "camera/camera_info": ("perception_node",), "initialpose": ("sim_node",)}
        report = []
        for topic, nodes in subscribers.items():
            for node in nodes:
                key = "input/" + topic.removeprefix("camera/")  # perception's topics, remapped under camera/
                assert key in diags.get(node, {}), (node, key, sorted(diags.get(node, {})))
                led = json.loads(diags[node][key])
                outcomes = sum(v for k, v in led.items() if k != "received")
                dropped = sum(v for k, v in led.items() if k not in ("received", "accepted", "ignored"))
                # a callback running while the ledger was read has its receipt counted, not yet its outcome
                assert 0 <= led["received"] - outcomes <= 2, (node, topic, led)
                if topic not in NO_MALFORMED_FORM:
                    assert dropped > 0, (node, topic, led)
                report.append(f"{node:20s} {topic:20s} received {led['received']:6d}, dropped {dropped:6d} "
                              f"({dropped / published[topic]:.0%} of the garbage), "
                              + ", ".join(f"{k} {v}" for k, v in sorted(led.items()) if k != "received"))
        print(f"\nFUZZ: {sum(published.values())} malformed messages on {len(published)} topics in {flood_s:.1f} s; "
              f"afterwards cmd_vel {cmd_hz:.1f} Hz, world_state {ws_hz:.1f} Hz; test {time.monotonic() - t_test:.0f} s")
        print("\n".join(report))
