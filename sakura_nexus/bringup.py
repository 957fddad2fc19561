"""The node set of one robot, in one place: used by the launch files (launch/*.launch.py) and by
the ROS-launch-free demo harness (sakura_nexus.harness), so both start the same executables with the
same parameter files, remappings, Fast DDS profile and environment (:func:`ros_environment`).
ROS-free (it only describes processes)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from sakura_nexus.paths import config_file


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
# composed mode (launch argument composed:=true, `sakura-nexus demo --composed`): the robot stack in one
# process on one executor, each node with its own name, parameters, lifecycle and topics
# (sakura_nexus.ros.container); federated sync stays a process of its own, at idle priority
CONTAINER = NodeSpec("nexus_container", "nexus_container")
COMPOSED = (PERCEPTION, WORLD_MODEL, POLICY)

# Defaults of the remap launch arguments (== the topics sim_node and the Gazebo bridge use).
TOPIC_DEFAULTS = {
    "camera_topic": "camera/image_raw",
    "camera_info_topic": "camera/camera_info",
    "odom_topic": "odom",
    "cmd_vel_topic": "cmd_vel",
    "map_topic": "map",  # nav_msgs/OccupancyGrid, latched (sim_node, or your map_server)
}


# Fast DDS reads its XML profile from a variable whose name changed with 3.0: FASTRTPS_DEFAULT_PROFILES_FILE in
# Fast DDS 2.x (Humble: 2.6, Jazzy: 2.14), FASTDDS_DEFAULT_PROFILES_FILE in 3.x (Kilted). 2.x ignores the new
# name, so a profile set under it only is silently not used there; Kilted's rmw_fastrtps still reads the old
# name too, but warns on every start that it is deprecated. Hence: the name(s) of the installed generation.
FASTDDS_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FASTDDS_PROFILE = "fastdds_shm.xml"  # in config/: shared memory with a segment large enough for camera frames


def fastdds_generation(environ: Mapping[str, str]) -> int | None:
    """2 or 3: the major version of the Fast DDS that the ROS install in AMENT_PREFIX_PATH uses (its library
    is libfastrtps in 2.x, libfastdds in 3.x); None when neither library is found there."""
    for prefix in filter(None, environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        lib = pathlib.Path(prefix) / "lib"
        if any(lib.glob("libfastdds.*")):
            return 3
        if any(lib.glob("libfastrtps.*")):
            return 2
    return None


def fastdds_profile_env(profile: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment variables that make the installed Fast DDS load `profile`: the one name its generation
    reads (fastdds_generation(environ)), or both names when the generation is not known.

    A profile already chosen in `environ` under either name is kept rather than replaced by `profile`.
    """
    environ = environ or {}
    gen = fastdds_generation(environ)
    by_generation: dict[int | None, tuple[str, ...]] = {3: FASTDDS_PROFILE_VARS[:1], 2: FASTDDS_PROFILE_VARS[1:]}
    names = by_generation.get(gen, FASTDDS_PROFILE_VARS)
    chosen = next((environ[k] for k in FASTDDS_PROFILE_VARS if environ.get(k)), str(profile))
    return {k: environ.get(k) or chosen for k in names}


def ros_environment(domain_id: int | None = None, log_dir: str | None = None) -> dict:
    """Environment for child processes: own DDS domain, localhost only, SHM profile, offscreen GL."""
    env = dict(os.environ)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else env.get("ROS_DOMAIN_ID",
                                                                                 20 + os.getpid() % 80))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.update(fastdds_profile_env(str(config_file(FASTDDS_PROFILE)), env))
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONSAFEPATH"] = "1"
    if log_dir:
        env["ROS_LOG_DIR"] = log_dir
        env.setdefault("ROS_HOME", log_dir)
    return env


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


def container_args(specs, params_files: list[str], namespace: str = "", use_sim_time: bool = True,
                   log_level: str = "info", overrides: dict | None = None, topics: dict | None = None) -> list[str]:
    """The arguments of ``nexus_container`` running ``specs`` like separate processes would run with
    :func:`ros_args`: ``overrides`` is node name -> {parameter: value}, applied to that node only; the
    parameter files, namespace and topic remaps are global (each remapped topic means the same for
    every node that uses it)."""
    topics = {**TOPIC_DEFAULTS, **(topics or {})}
    args: list[str] = []
    for spec in specs:
        args += ["--node", spec.name]
        for k, v in ((overrides or {}).get(spec.name) or {}).items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            args += ["--param", f"{spec.name}:{k}:={v}"]
    args += ["--ros-args", "--log-level", log_level]
    if namespace:
        args += ["-r", f"__ns:=/{namespace.strip('/')}"]
    remaps = {}
    for spec in specs:
        for topic, arg in spec.remaps.items():
            if topics[arg] != topic:
                remaps[topic] = topics[arg]
    for topic, target in remaps.items():
        args += ["-r", f"{topic}:={target}"]
    for f in params_files:
        args += ["--params-file", f]
    args += ["-p", f"use_sim_time:={'true' if use_sim_time else 'false'}"]
    return args
