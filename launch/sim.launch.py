"""MuJoCo factory cell (sim_node) + the sakura_nexus nodes, all on sim time.

    ros2 launch sakura_nexus sim.launch.py namespace:=robot1 seed:=3
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, SetEnvironmentVariable
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

from sakura_nexus.bringup import FASTDDS_PROFILE, fastdds_profile_env
from sakura_nexus.params import FEDERATED_SYNC, SIM


def generate_launch_description():
    share = get_package_share_directory("sakura_nexus")
    args = [
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "nexus.yaml")),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("seed", default_value=str(SIM["seed"].default), description="Factory layout seed"),
        DeclareLaunchArgument("with_sync", default_value="true"),
        DeclareLaunchArgument("superlink", default_value=FEDERATED_SYNC["superlink"].default),
        DeclareLaunchArgument("trusted_keys", default_value="", description="Trusted fleet keys file"),
        DeclareLaunchArgument("composed", default_value="true",
                              description="perception, world model and policy in one process (nexus_container)"),
    ]
    # a lifecycle node that configures and activates itself (the robot stand-in is up before the nodes)
    sim = LifecycleNode(
        package="sakura_nexus", executable="sim_node", name="sim_node", namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), {"seed": LaunchConfiguration("seed")}],
        arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
        output="screen",
    )
    nexus = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "nexus.launch.py")),
        launch_arguments={
            "namespace": LaunchConfiguration("namespace"), "use_sim_time": "true",
            "params_file": LaunchConfiguration("params_file"), "log_level": LaunchConfiguration("log_level"),
            "with_sync": LaunchConfiguration("with_sync"), "superlink": LaunchConfiguration("superlink"),
            "trusted_keys": LaunchConfiguration("trusted_keys"), "composed": LaunchConfiguration("composed"),
        }.items(),
    )
    # the shipped SHM profile (unless one is set already), under the name the installed Fast DDS reads
    profile = fastdds_profile_env(os.path.join(share, "config", FASTDDS_PROFILE), os.environ)
    env = [SetEnvironmentVariable("MUJOCO_GL", "egl"), *(SetEnvironmentVariable(k, v) for k, v in profile.items())]
    return LaunchDescription([*args, *env, sim, nexus])
