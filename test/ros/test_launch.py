"""Launch files and parameter files.

- Without ROS launch (this project's own set-up has none): every node started the way the launch files
  and the demo start it (shipped params file + a namespace) has every parameter of that file in place.
- With ROS launch importable (a real ROS install): each launch description is generated and evaluated,
  and nexus.launch.py with params_file + namespace is run for real and the parameters read back.
"""

import asyncio
import importlib.util
import pathlib
import threading

import pytest
import yaml
from helpers import NodeProcess

from sakura_nexus import bringup

ROOT = pathlib.Path(__file__).resolve().parents[2]
PARAMS = ROOT / "config" / "nexus.yaml"
pytestmark = pytest.mark.ros

try:
    import launch  # noqa: F401
    import launch_ros  # noqa: F401

    LAUNCH_MISSING = None
except ImportError as e:
    LAUNCH_MISSING = (f"ROS 2 launch/launch_ros not importable ({e}); they are not on PyPI, so this project's "
                      "own environment has none. A system ROS install runs this test.")


def _expected(node_name: str) -> dict:
    data = yaml.safe_load(PARAMS.read_text())
    return data.get(f"/**/{node_name}", {}).get("ros__parameters", {})


def _check_params(ros_node, fqn: str, expected: dict, sim_time: bool):
    got = ros_node.get_params(fqn, [*expected, "use_sim_time"], timeout=30)
    for k, v in expected.items():
        assert got[k] == pytest.approx(v) if isinstance(v, float) else got[k] == v, (fqn, k, got[k], v)
    assert got["use_sim_time"] is sim_time, fqn


def test_params_file_and_namespace_reach_every_node(ros_node):
    """The demo's way of starting nodes (bringup.ros_args): params file + namespace, read back."""
    ns = "robot7"
    specs = [*bringup.NEXUS, bringup.SIM]
    procs = []
    try:
        for spec in specs:
            module = {"federated_sync_node": "federated_sync"}.get(spec.name, spec.name.removesuffix("_node"))
            p = NodeProcess(module, params={"use_sim_time": True, "autostart": False} if spec.name != "sim_node"
                            else {"use_sim_time": True}, name=spec.name, namespace=ns, params_file=str(PARAMS))
            procs.append(p)
        for spec, p in zip(specs, procs, strict=True):
            assert p.alive(), p.output()
            _check_params(ros_node, f"/{ns}/{spec.name}", _expected(spec.name), sim_time=True)
    finally:
        for p in procs:
            p.stop()


def test_composed_container_keeps_each_node_its_name_namespace_and_parameters(ros_node):
    """Composed mode (nexus_container, as the demo and `composed:=true` start it): the three nodes in one
    process, each under its own name in the namespace with the params file's values; a per-node
    override reaches that node only."""
    ns = "robot8"
    args = bringup.container_args(bringup.COMPOSED, [str(PARAMS)], namespace=ns,
                                  overrides={"policy_node": {"controller": "kinematic_mpc", "autostart": False},
                                             "perception_node": {"autostart": False},
                                             "world_model_node": {"autostart": False}})
    i = args.index("--ros-args")
    p = NodeProcess("container", args=args[:i], namespace=ns, params_file=str(PARAMS),
                    params={"use_sim_time": True})
    try:
        for spec in bringup.COMPOSED:
            expected = _expected(spec.name)
            if spec.name == "policy_node":
                expected["controller"] = "kinematic_mpc"
            _check_params(ros_node, f"/{ns}/{spec.name}", expected, sim_time=True)
            assert ros_node.get_params(f"/{ns}/{spec.name}", ["autostart"], timeout=10)["autostart"] is False
        assert p.alive(), p.output()
    finally:
        assert p.stop() == 0, p.output()


def test_container_arguments_parse_per_node_and_global():
    from sakura_nexus.ros.container import DEFAULT_NODES, parse

    args = bringup.container_args(bringup.COMPOSED, [str(PARAMS)], namespace="r1",
                                  overrides={"policy_node": {"controller": "learned_mpc", "twist_stamped": True}},
                                  topics={"camera_topic": "/cam/img"})
    names, local, ros = parse(args)
    assert names == [s.name for s in bringup.COMPOSED] == list(DEFAULT_NODES)
    assert local["policy_node"] == ["--ros-args", "-p", "controller:=learned_mpc", "-p", "twist_stamped:=true"]
    assert local["perception_node"] == ["--ros-args"]
    assert ros[0] == "--ros-args" and "__ns:=/r1" in ros and "image_raw:=/cam/img" in ros
    assert "__node:=" not in " ".join(ros)      # a global node-name remap would rename every node
    for bad in (["--node", "sim_node"], ["--param", "policy_node:controller"], ["--node"],
                ["--node", "policy_node", "--param", "perception_node:x:=1"], ["stray"]):
        with pytest.raises(ValueError):
            parse(bad)


def test_bringup_ros_args_match_the_launch_file_remaps():
    args = bringup.ros_args(bringup.PERCEPTION, [str(PARAMS)], namespace="r1", topics={"camera_topic": "/cam/img"})
    assert ["-r", "__ns:=/r1"] == args[args.index("__ns:=/r1") - 1: args.index("__ns:=/r1") + 1]
    assert "image_raw:=/cam/img" in args and "camera_info:=camera/camera_info" in args
    assert "use_sim_time:=true" in args


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem.replace(".", "_"), path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(LAUNCH_MISSING is not None, reason=LAUNCH_MISSING or "")
@pytest.mark.parametrize("name", ["nexus", "sim", "fleet", "gazebo"])
def test_launch_description_evaluates(name):
    from ament_index_python.packages import PackageNotFoundError
    from launch import LaunchContext, LaunchDescription
    from launch.actions import DeclareLaunchArgument

    try:
        ld = _load(ROOT / "launch" / f"{name}.launch.py").generate_launch_description()
    except PackageNotFoundError as e:
        pytest.skip(f"{name}.launch.py needs {e} (ros_gz), not installed here")
    assert isinstance(ld, LaunchDescription)
    ctx = LaunchContext()
    for entity in ld.entities:
        if isinstance(entity, DeclareLaunchArgument):
            ctx.launch_configurations[entity.name] = "".join(s.perform(ctx) for s in entity.default_value)
    declared = {a.name for a in ld.get_launch_arguments()}
    assert {"namespace", "params_file", "log_level"} <= declared or name == "fleet"
    if name == "nexus":
        assert {"use_sim_time", "camera_topic", "odom_topic", "cmd_vel_topic", "autostart"} <= declared


@pytest.mark.skipif(LAUNCH_MISSING is not None, reason=LAUNCH_MISSING or "")
def test_nexus_launch_puts_params_in_place_under_a_namespace(ros_node):
    from launch import LaunchDescription, LaunchService
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    ls = LaunchService()
    ls.include_launch_description(LaunchDescription([IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch" / "nexus.launch.py")),
        launch_arguments={"namespace": "fleet_a", "params_file": str(PARAMS), "use_sim_time": "true",
                          "autostart": "false", "with_sync": "true"}.items())]))
    # LaunchService must run in the main thread (launch >= 3.x checks it): the parameter read-back runs
    # in a helper thread and shuts the launch down when it is done.
    loop = asyncio.new_event_loop()
    failure: list[BaseException] = []

    def check():
        try:
            for spec in bringup.NEXUS:
                _check_params(ros_node, f"/fleet_a/{spec.name}", _expected(spec.name), sim_time=True)
        except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
            failure.append(e)
        finally:
            ls.shutdown()  # thread-safe; called inside the loop it would only return a coroutine

    t = threading.Thread(target=check, daemon=True)
    t.start()
    loop.run_until_complete(ls.run_async())
    t.join(30)
    assert not t.is_alive()
    if failure:
        raise failure[0]
