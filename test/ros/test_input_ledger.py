"""The input ledger in one process, without DDS: sim_node's subscription callbacks (as NexusNode wraps them)
fed every kind of malformed message the fuzz test and the soak publish, plus valid ones: every message ends
as exactly one outcome, the garbage as drop reasons, the valid ones accepted."""

import json

import pytest

pytestmark = pytest.mark.ros


def test_sim_node_ledger_counts_every_message_once(rclpy_context):
    from geometry_msgs.msg import PoseStamped, Twist

    from sakura_nexus.nodes.sim import SimNode
    from sakura_nexus.ros.garbage import Garbage

    node = SimNode()
    try:
        node.trigger_configure()
        callbacks = {s.topic_name.lstrip("/"): s.callback for s in node.subscriptions}
        assert {"cmd_vel", "goal_pose", "initialpose"} <= set(callbacks), sorted(callbacks)
        g = Garbage(seed=3)
        for topic in ("cmd_vel", "goal_pose", "initialpose"):
            for _ in range(300):
                callbacks[topic](g.make(topic))
        ok_cmd = Twist()
        ok_cmd.linear.x = 0.2
        ok_goal = PoseStamped()
        ok_goal.header.frame_id, ok_goal.pose.position.x, ok_goal.pose.orientation.w = "odom", 1.0, 1.0
        for _ in range(7):
            callbacks["cmd_vel"](ok_cmd)
            callbacks["goal_pose"](ok_goal)
        kv = {x.key: x.value for x in node.diag.status().values}
        for topic, valid in (("cmd_vel", 7), ("goal_pose", 7), ("initialpose", 0)):
            led = json.loads(kv[f"input/{topic}"])
            assert led["received"] == 300 + valid, led
            assert led.get("accepted", 0) == valid, led  # no garbage accepted
            assert sum(v for k, v in led.items() if k != "received") == led["received"], led
            assert len([k for k in led if k not in ("received", "accepted")]) >= 2, led  # by reason
            for reason in led:
                if reason not in ("received", "accepted"):
                    assert int(kv[f"dropped_{reason}"]) >= led[reason]
    finally:
        node.destroy_node()
