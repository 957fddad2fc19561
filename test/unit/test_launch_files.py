"""The launch files, read as Python source (ROS launch is not installed here; test_launch.py evaluates them
where it is): the sakura_nexus nodes are started as lifecycle nodes, and nexus.launch.py's autostart
drives configure -> activate with ChangeState events (works on Humble, Jazzy and Kilted) instead of a
launch_ros ``autostart`` argument that older distributions lack."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = sorted((ROOT / "launch").glob("*.launch.py"))


def _calls(tree, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == name]


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


@pytest.mark.parametrize("path", LAUNCH, ids=lambda p: p.name)
def test_sakura_nodes_are_lifecycle_nodes(path):
    tree = ast.parse(path.read_text())
    for call in _calls(tree, "Node"):
        pkg, exe = _kw(call, "package"), _kw(call, "executable")
        # the one plain Node allowed is the composed container (a process, like an rclcpp component
        # container): the lifecycle nodes run inside it
        container = isinstance(exe, ast.Attribute) and getattr(exe.value, "id", "") == "CONTAINER"
        assert container or not (isinstance(pkg, ast.Constant) and pkg.value == "sakura_nexus"), \
            f"{path.name}:{call.lineno}: sakura_nexus nodes are lifecycle nodes (LifecycleNode)"
    for call in _calls(tree, "LifecycleNode"):
        # Humble's LifecycleNode needs both
        assert _kw(call, "name") is not None and _kw(call, "namespace") is not None, f"{path.name}:{call.lineno}"


def test_nexus_launch_autostart_emits_configure_then_activate():
    src = (ROOT / "launch" / "nexus.launch.py").read_text()
    tree = ast.parse(src)
    assert _calls(tree, "LifecycleNode")
    transitions = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and
                   getattr(n.value, "id", "") == "Transition"}
    assert {"TRANSITION_CONFIGURE", "TRANSITION_ACTIVATE"} <= transitions
    handler = _calls(tree, "OnStateTransition")
    assert handler, "activate is emitted once the node is configured"
    assert ast.literal_eval(_kw(handler[0], "start_state")) == "configuring"  # not again after a deactivate
    assert ast.literal_eval(_kw(handler[0], "goal_state")) == "inactive"
    # the node's own autostart is off when launch drives the transitions (no double configure); only the
    # composed container's nodes, which launch cannot transition, run their own autostart
    extra = [d.values[[getattr(k, "value", None) for k in d.keys].index("autostart")] for d in ast.walk(tree)
             if isinstance(d, ast.Dict) and any(isinstance(k, ast.Constant) and k.value == "autostart" for k in d.keys)]
    assert any(isinstance(v, ast.Constant) and v.value is False for v in extra)
    assert all((isinstance(v, ast.Constant) and v.value is False) or getattr(v, "id", "") == "autostart" for v in extra)
    assert "autostart=" not in src.replace("_lifecycle_autostart", "")  # no launch_ros-only argument
