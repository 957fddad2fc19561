"""A fleet on one host: N simulated robots in namespaces robot1..robotN (each its own MuJoCo cell with
its own seed, i.e. its own factory) + the fleet aggregator (Flower SuperLink + FedBuff ServerApp).

    ros2 launch sakura_nexus fleet.launch.py robots:=4

Each robot's federated_sync_node (robot_id = its namespace, spool in $ROS_HOME/sakura_nexus/spool/robotN)
starts and supervises that robot's Flower SuperNode, which connects to ``superlink``. With
``with_aggregator:=true`` the aggregator is started here, listening on the port of ``superlink`` and
starting from the world-model checkpoint the robots run (``checkpoint``, empty = the shipped models/),
so the initial global model equals the robots' base weights and version:

    sakura-nexus aggregator --store-dir <aggregator_dir> --host <host of superlink> --port <its port>
        --buffer-size <buffer_size> --clip-norm 10.0 --sync-interval 2.0 --init-world-model <checkpoint|shipped>

(robots, buffer_size, superlink, clip norm and sync interval: sakura_nexus.federated.fleet.fleet_defaults.FLEET).

Its state (checkpoints, de-dup table, status.json, logs) persists in ``aggregator_dir``: a relaunch
resumes the global model and version from there. The fleet's model-signing key pair is
``<aggregator_dir>/keys`` (generated on the first launch, kept afterwards): the aggregator signs every
global model with it and every robot node gets its public half as ``trusted_keys``.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

from sakura_nexus.federated.common.signing import PRIVATE_NAME, PUBLIC_NAME, generate_keys
from sakura_nexus.federated.fleet.fleet_defaults import FLEET
from sakura_nexus.federated.fleet.superlink import aggregator_command


def _fleet_keys(context) -> tuple[str, str]:
    """(private key, trusted keys file) of this fleet; generated once in <aggregator_dir>/keys."""
    d = os.path.join(LaunchConfiguration("aggregator_dir").perform(context), "keys")
    priv, pub = os.path.join(d, PRIVATE_NAME), os.path.join(d, PUBLIC_NAME)
    if not (os.path.exists(priv) and os.path.exists(pub)):
        priv, pub = generate_keys(d, "fleet.launch.py")
    return priv, pub


def _robots(context, *args, **kwargs):
    share = get_package_share_directory("sakura_nexus")
    n = int(LaunchConfiguration("robots").perform(context))
    actions = []
    for i in range(1, n + 1):
        actions.append(IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "sim.launch.py")),
            launch_arguments={
                "namespace": f"robot{i}", "seed": str(i),
                "params_file": LaunchConfiguration("params_file"),
                "superlink": LaunchConfiguration("superlink"),
                "trusted_keys": _fleet_keys(context)[1],
                "log_level": LaunchConfiguration("log_level"),
            }.items(),
        ))
    return actions


def _aggregator(context, *args, **kwargs):
    if LaunchConfiguration("with_aggregator").perform(context).strip().lower() not in ("true", "1", "yes"):
        return []
    host, _, port = LaunchConfiguration("superlink").perform(context).rpartition(":")
    share = get_package_share_directory("sakura_nexus")
    script = os.path.join(os.path.dirname(os.path.dirname(share)), "lib", "sakura_nexus", "sakura-nexus")
    cmd = aggregator_command(
        LaunchConfiguration("aggregator_dir").perform(context), port=int(port), host=host or "127.0.0.1",
        init_world_model=LaunchConfiguration("checkpoint").perform(context) or "shipped",
        buffer_size=int(LaunchConfiguration("buffer_size").perform(context)),
        signing_key=_fleet_keys(context)[0],
        executable=[script] if os.path.exists(script) else None)
    # SIGINT first: the aggregator stops its ServerApp and SuperLink (needs a few seconds)
    return [ExecuteProcess(cmd=cmd, name="aggregator", output="screen", sigterm_timeout="30",
                           sigkill_timeout="10")]


def generate_launch_description():
    args = [
        DeclareLaunchArgument("robots", default_value=str(FLEET.robots), description="Number of simulated robots"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(
            get_package_share_directory("sakura_nexus"), "config", "nexus.yaml")),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("superlink", default_value=FLEET.superlink,
                              description="host:port of the aggregator (Flower SuperLink, one HTTP port)"),
        DeclareLaunchArgument("with_aggregator", default_value="true",
                              description="Start the aggregator here (false: it runs on another host)"),
        DeclareLaunchArgument("aggregator_dir", default_value="/tmp/sakura_nexus_aggregator",
                              description="Aggregator state (--store-dir)"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="World-model checkpoint the robots run (= the world_model_node and "
                                          "federated_sync_node checkpoint in params_file; empty = shipped models/)"),
        DeclareLaunchArgument("buffer_size", default_value=str(FLEET.buffer_size),
                              description="FedBuff K: aggregate every K robot deltas"),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_aggregator), OpaqueFunction(function=_robots)])
