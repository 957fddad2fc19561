"""Gazebo (gz sim) with our factory cell + ros_gz_bridge with our bridge config + the nexus nodes.

Needs ros_gz_sim and ros_gz_bridge (apt: ros-$ROS_DISTRO-ros-gz). The bridge maps the gz topics onto
the same ROS topics sim_node publishes, so the nexus nodes cannot tell the two apart.

    ros2 launch sakura_nexus gazebo.launch.py headless:=true
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("sakura_nexus")
    args = [
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "nexus.yaml")),
        DeclareLaunchArgument("world", default_value=os.path.join(share, "worlds", "factory_cell.sdf")),
        DeclareLaunchArgument("headless", default_value="false", description="Run gz sim without its GUI"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("with_sync", default_value="true"),
    ]
    gz_args = PythonExpression(["'-r ' + ('-s ' if '", LaunchConfiguration("headless"), "' == 'true' else '') + '",
                                LaunchConfiguration("world"), "'"])
    gz = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(get_package_share_directory("ros_gz_sim"), "launch",
                                                   "gz_sim.launch.py")),
        launch_arguments={"gz_args": gz_args}.items(),
    )
    bridge = Node(
        package="ros_gz_bridge", executable="parameter_bridge", name="factory_cell_bridge",
        namespace=LaunchConfiguration("namespace"),
        parameters=[{"config_file": os.path.join(share, "config", "gz_bridge.yaml"), "use_sim_time": True}],
        output="screen",
    )
    nexus = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(share, "launch", "nexus.launch.py")),
        launch_arguments={
            "namespace": LaunchConfiguration("namespace"), "use_sim_time": "true",
            "params_file": LaunchConfiguration("params_file"), "log_level": LaunchConfiguration("log_level"),
            "with_sync": LaunchConfiguration("with_sync"),
        }.items(),
    )
    return LaunchDescription([*args, gz, bridge, nexus])
