"""The node set of one robot, in one place: used by the launch files (launch/*.launch.py) and by
the ROS-launch-free demo supervisor (sakura_nexus.demo), so both start the same executables with the
same parameter files and remappings. ROS-free (it only describes processes)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeSpec:
    executable: str            # in lib/sakura_nexus/
    name: str                  # node name (parameter files match it with /**/<name>)
    remaps: dict = field(default_factory=dict)  # our topic -> launch-argument name that overrides it


# The robot-facing topics (camera, odom, cmd_vel, map) can be remapped from the launch files; the rest are
# sakura_nexus' own, relative, so a namespace puts a whole robot in its own space.
PERCEPTION = NodeSpec("perception_node", "perception_node",
                      {"image_raw": "camera_topic", "camera_info": "camera_info_topic"})
WORLD_MODEL = NodeSpec("world_model_node", "world_model_node", {"odom": "odom_topic", "cmd_vel": "cmd_vel_topic"})
POLICY = NodeSpec("policy_node", "policy_node", {"cmd_vel": "cmd_vel_topic", "odom": "odom_topic", "map": "map_topic"})
FEDERATED_SYNC = NodeSpec("federated_sync_node", "federated_sync_node")
SIM = NodeSpec("sim_node", "sim_node")

NEXUS = (PERCEPTION, WORLD_MODEL, POLICY, FEDERATED_SYNC)

# Defaults of the remap launch arguments (== the topics sim_node and the Gazebo bridge use).
TOPIC_DEFAULTS = {
    "camera_topic": "camera/image_raw",
    "camera_info_topic": "camera/camera_info",
    "odom_topic": "odom",
    "cmd_vel_topic": "cmd_vel",
    "map_topic": "map",  # nav_msgs/OccupancyGrid, latched (sim_node, or your map_server)
}


def ros_args(spec: NodeSpec, params_files: list[str], namespace: str = "", use_sim_time: bool = True,
             log_level: str = "info", overrides: dict | None = None, topics: dict | None = None) -> list[str]:
    """The `--ros-args ...` a process needs to be configured exactly like the launch files do it."""
    topics = {**TOPIC_DEFAULTS, **(topics or {})}
    args = ["--ros-args", "-r", f"__node:={spec.name}", "--log-level", log_level]
    if namespace:
        args += ["-r", f"__ns:=/{namespace.strip('/')}"]
    for topic, arg in spec.remaps.items():
        if topics[arg] != topic:
            args += ["-r", f"{topic}:={topics[arg]}"]
    for f in params_files:
        args += ["--params-file", f]
    args += ["-p", f"use_sim_time:={'true' if use_sim_time else 'false'}"]
    for k, v in (overrides or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        args += ["-p", f"{k}:={v}"]
    return args
