"""A fleet on one host: N simulated robots in namespaces robot1..robotN (each its own MuJoCo cell with
its own seed, i.e. its own factory) + the fleet aggregator (Flower SuperLink + ServerApp).

    ros2 launch sakura_nexus fleet.launch.py robots:=4

Each robot's federated_sync_node starts and supervises that robot's Flower SuperNode.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, OpaqueFunction
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration


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
                "log_level": LaunchConfiguration("log_level"),
            }.items(),
        ))
    return actions


def generate_launch_description():
    share = get_package_share_directory("sakura_nexus")
    prefix = os.path.dirname(os.path.dirname(share))
    args = [
        DeclareLaunchArgument("robots", default_value="2", description="Number of simulated robots"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "nexus.yaml")),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("superlink", default_value="127.0.0.1:9092"),
        DeclareLaunchArgument("with_aggregator", default_value="true",
                              description="Start the aggregator here (false: it runs on another host)"),
        DeclareLaunchArgument("aggregator_dir", default_value="/tmp/sakura_nexus_aggregator"),
    ]
    aggregator = ExecuteProcess(
        cmd=[os.path.join(prefix, "lib", "sakura_nexus", "sakura-nexus"), "aggregator",
             "--state-dir", LaunchConfiguration("aggregator_dir")],
        condition=IfCondition(LaunchConfiguration("with_aggregator")), output="screen",
    )
    return LaunchDescription([*args, aggregator, OpaqueFunction(function=_robots)])
