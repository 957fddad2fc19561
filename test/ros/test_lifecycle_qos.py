"""Lifecycle and QoS overrides as ROS users expect them (in-process nodes, no other process).

- configure -> cleanup -> configure -> activate works for every node and creates each publisher,
  subscription, timer, service and client once (cleanup undoes configure, as in ros2/demos and Nav2).
- A ``qos_overrides.*`` entry in a params file changes the QoS of the sensor subscription and of a state
  publisher (rclpy's QoSOverridingOptions).
"""

from __future__ import annotations

import collections
import time

import pytest

pytestmark = pytest.mark.ros


def _entities(node) -> dict[str, collections.Counter]:
    return {
        "publishers": collections.Counter(p.topic_name for p in node.publishers),
        "subscriptions": collections.Counter(s.topic_name for s in node.subscriptions),
        "timers": collections.Counter(round(t.timer_period_ns) for t in node.timers),
        "services": collections.Counter(s.srv_name for s in node.services),
        "clients": collections.Counter(c.srv_name for c in node.clients),
    }


def _node(name: str, tmp_path):
    from rclpy.parameter import Parameter

    if name == "perception":
        from sakura_nexus.nodes.perception import PerceptionNode as cls
        params = {}
    elif name == "world_model":
        from sakura_nexus.nodes.world_model import WorldModelNode as cls
        params = {"state_dir": str(tmp_path / "wm")}
    elif name == "policy":
        from sakura_nexus.nodes.policy import PolicyNode as cls
        params = {}
    elif name == "federated_sync":
        from sakura_nexus.nodes.federated_sync import FederatedSyncNode as cls
        params = {"spool_dir": str(tmp_path / "spool"), "start_supernode": False}
    else:
        from sakura_nexus.nodes.sim import SimNode as cls
        params = {}
    return cls(namespace=f"/lc_{name}", parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


@pytest.mark.parametrize("name", ["perception", "world_model", "policy", "federated_sync", "sim"])
def test_configure_cleanup_configure_activate_creates_each_entity_once(rclpy_context, tmp_path, name):
    from rclpy.lifecycle import TransitionCallbackReturn as R

    node = _node(name, tmp_path)
    try:
        base = _entities(node)
        assert node.trigger_configure() == R.SUCCESS
        configured = _entities(node)
        assert configured != base  # it did create its entities
        assert node.trigger_cleanup() == R.SUCCESS
        assert _entities(node) == base  # cleanup undid configure
        assert node.trigger_configure() == R.SUCCESS
        assert _entities(node) == configured  # each entity once, not twice
        assert not node.is_active
        assert node.trigger_activate() == R.SUCCESS
        assert node.is_active
        assert _entities(node) == configured
        assert node.trigger_deactivate() == R.SUCCESS
        assert not node.is_active
        assert node.trigger_cleanup() == R.SUCCESS
        assert _entities(node) == base
    finally:
        node.destroy_node()


def _endpoint(node, topic: str, kind: str, timeout: float = 10.0):
    fn = node.get_subscriptions_info_by_topic if kind == "subscription" else node.get_publishers_info_by_topic
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        infos = [i for i in fn(topic) if i.node_name == node.get_name()]
        if infos:
            return infos[0].qos_profile
        time.sleep(0.05)
    raise AssertionError(f"no {kind} of {node.get_name()} on {topic}")


def test_params_file_qos_override_changes_reliability(rclpy_context, tmp_path):
    from rclpy.qos import ReliabilityPolicy

    from sakura_nexus.nodes.perception import PerceptionNode

    ns = "/qos_robot"
    params = tmp_path / "qos.yaml"
    params.write_text(
        "/**/perception_node:\n"
        "  ros__parameters:\n"
        "    qos_overrides:\n"
        f"      {ns}/image_raw:\n"
        "        subscription:\n"
        "          reliability: reliable\n"
        "          depth: 3\n"
        f"      {ns}/observation:\n"
        "        publisher:\n"
        "          reliability: best_effort\n")
    plain = PerceptionNode(namespace="/qos_plain")
    node = PerceptionNode(namespace=ns, cli_args=["--ros-args", "--params-file", str(params)])
    try:
        plain.trigger_configure()
        node.trigger_configure()
        # the defaults: sensor best-effort depth 1, state reliable
        q = _endpoint(plain, "/qos_plain/image_raw", "subscription")
        assert q.reliability == ReliabilityPolicy.BEST_EFFORT
        assert _endpoint(plain, "/qos_plain/observation", "publisher").reliability == ReliabilityPolicy.RELIABLE
        # the overrides from the params file
        q = _endpoint(node, f"{ns}/image_raw", "subscription")
        assert q.reliability == ReliabilityPolicy.RELIABLE
        assert node.get_parameter(f"qos_overrides.{ns}/image_raw.subscription.depth").value == 3
        assert _endpoint(node, f"{ns}/observation", "publisher").reliability == ReliabilityPolicy.BEST_EFFORT
        # a reconfigure keeps applying them
        node.trigger_cleanup()
        node.trigger_configure()
        assert _endpoint(node, f"{ns}/image_raw", "subscription").reliability == ReliabilityPolicy.RELIABLE
    finally:
        node.destroy_node()
        plain.destroy_node()
