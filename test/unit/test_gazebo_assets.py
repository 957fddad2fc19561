"""Gazebo assets: worlds/factory_cell.sdf (SDF 1.9, generated from the core) and config/gz_bridge.yaml."""

import pathlib
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml

from sakura_nexus.sim import BRIDGED_TOPICS, TOPICS, CellConfig, export_sdf, generate_layout
from sakura_nexus.sim.sdf import GZ_TOPICS

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORLD = ROOT / "worlds" / "factory_cell.sdf"
BRIDGE = ROOT / "config" / "gz_bridge.yaml"


def _ign():
    for exe in ("gz", "ign"):
        path = shutil.which(exe)
        if path:
            probe = subprocess.run([path, "sdf", "--help"], capture_output=True, text=True)
            if probe.returncode == 0:
                return path
    return None


def test_world_is_checked_in_and_matches_the_core():
    assert WORLD.read_text() == export_sdf(CellConfig(seed=0)), \
        "worlds/factory_cell.sdf is stale: run `python -m sakura_nexus.sim sdf`"


@pytest.mark.parametrize("seed", [0, 3])
def test_sdf_validates_with_gz_sdf(tmp_path, seed):
    exe = _ign()
    if exe is None:
        pytest.skip("neither `gz sdf` nor `ign sdf` available (apt-get install ignition-tools libsdformat-dev)")
    path = WORLD if seed == 0 else tmp_path / f"cell_{seed}.sdf"
    if seed:
        path.write_text(export_sdf(CellConfig(seed=seed)))
    out = subprocess.run([exe, "sdf", "-k", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Valid" in out.stdout, out.stdout + out.stderr


def test_sdf_version_layout_and_plugins():
    root = ET.parse(WORLD).getroot()
    assert root.tag == "sdf" and root.get("version") == "1.9"
    world = root.find("world")
    models = {m.get("name"): m for m in world.findall("model")}
    lay = generate_layout(CellConfig(seed=0))
    for i, ob in enumerate(lay.obstacles):
        m = models[f"obstacle_{i}_{ob.kind}"]
        pose = [float(v) for v in m.find("pose").text.split()]
        assert pose[0] == pytest.approx(ob.x) and pose[1] == pytest.approx(ob.y)
        assert pose[5] == pytest.approx(ob.yaw, abs=1e-5)
        size = [float(v) for v in m.find("link/collision/geometry/box/size").text.split()]
        assert size == pytest.approx([ob.sx, ob.sy, ob.sz], abs=1e-4)
    assert sum(name.startswith("wall_") for name in models) == 4
    floor_mu = float(models["floor"].find("link/collision/surface/friction/ode/mu").text)
    assert floor_mu == pytest.approx(lay.floor_friction)
    world_plugins = {p.get("filename") for p in world.findall("plugin")}
    assert {"gz-sim-physics-system", "gz-sim-sensors-system", "gz-sim-scene-broadcaster-system",
            "gz-sim-contact-system"} <= world_plugins
    robot = models["sakura_robot"]
    plugins = {p.get("filename"): p for p in robot.findall("plugin")}
    dd = plugins["gz-sim-diff-drive-system"]
    assert dd.find("topic").text == GZ_TOPICS["cmd_vel"] and dd.find("odom_topic").text == GZ_TOPICS["odom"]
    assert (dd.find("frame_id").text, dd.find("child_frame_id").text) == ("odom", "base_link")
    assert plugins["gz-sim-joint-state-publisher-system"].find("topic").text == GZ_TOPICS["joint_states"]
    touch = plugins["gz-sim-touchplugin-system"]
    assert f"/{touch.find('namespace').text}/touched" == GZ_TOPICS["contacts"]
    assert all(re.search(touch.find("target").text, n) for n in models if n.startswith(("wall_", "obstacle_")))
    cam = robot.find("link/sensor[@type='camera']")
    assert cam.find("topic").text == GZ_TOPICS["image"]
    assert GZ_TOPICS["camera_info"] == GZ_TOPICS["image"].rsplit("/", 1)[0] + "/camera_info"  # gz-sensors rule
    joints = {j.get("name") for j in robot.findall("joint")}
    assert joints == {"left_wheel_joint", "right_wheel_joint"}


def test_bridge_topics_match_sim_node():
    entries = yaml.safe_load(BRIDGE.read_text())
    assert isinstance(entries, list)
    by_ros = {e["ros_topic_name"]: e for e in entries}
    # every bridged ROS topic is one sim_node publishes/subscribes, with the same name ...
    assert set(by_ros) == {TOPICS[k] for k in BRIDGED_TOPICS}
    # ... and the same message type and direction as sim_node
    expected = {
        "image": ("sensor_msgs/msg/Image", "gz.msgs.Image", "GZ_TO_ROS"),
        "camera_info": ("sensor_msgs/msg/CameraInfo", "gz.msgs.CameraInfo", "GZ_TO_ROS"),
        "odom": ("nav_msgs/msg/Odometry", "gz.msgs.Odometry", "GZ_TO_ROS"),
        "joint_states": ("sensor_msgs/msg/JointState", "gz.msgs.Model", "GZ_TO_ROS"),
        "clock": ("rosgraph_msgs/msg/Clock", "gz.msgs.Clock", "GZ_TO_ROS"),
        "contacts": ("std_msgs/msg/Bool", "gz.msgs.Boolean", "GZ_TO_ROS"),
        "cmd_vel": ("geometry_msgs/msg/Twist", "gz.msgs.Twist", "ROS_TO_GZ"),
    }
    for key in BRIDGED_TOPICS:
        e = by_ros[TOPICS[key]]
        assert (e["ros_type_name"], e["gz_type_name"], e["direction"]) == expected[key], key
        assert e["gz_topic_name"] == GZ_TOPICS[key], key


def test_bridge_types_are_the_ones_sim_node_uses():
    try:
        from sakura_nexus.nodes.sim import MESSAGE_TYPES
    except ImportError as e:
        pytest.skip(f"rclpy / ROS messages not importable: {e}")
    by_ros = {e["ros_topic_name"]: e for e in yaml.safe_load(BRIDGE.read_text())}
    for key in BRIDGED_TOPICS:
        t = MESSAGE_TYPES[key]
        assert by_ros[TOPICS[key]]["ros_type_name"] == f"{t.__module__.split('.')[0]}/msg/{t.__name__}", key
