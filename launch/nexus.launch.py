"""The four sakura_nexus nodes of one robot (perception, world model, policy, federated sync).

Include it from your own launch file:

    IncludeLaunchDescription(PythonLaunchDescriptionSource(
        [FindPackageShare('sakura_nexus'), '/launch/nexus.launch.py']),
        launch_arguments={'namespace': 'robot1', 'use_sim_time': 'true',
                          'camera_topic': '/front_camera/image_raw'}.items())

The nodes are lifecycle nodes (launch_ros LifecycleNode); with autostart:=true (default) this file configures
and then activates each one through ChangeState events, on every ROS 2 distribution; autostart:=false leaves
them unconfigured for a lifecycle manager (``ros2 lifecycle set``).

Arguments: namespace, use_sim_time, params_file, log_level, autostart, with_sync, trusted_keys (the
fleet's public keys that model updates must be signed with; given here it overrides params_file) and the topic remaps
camera_topic, camera_info_topic, odom_topic, cmd_vel_topic, map_topic. The same use_sim_time goes to every node.
composed (default true): perception_node, world_model_node and policy_node run in one process on one executor
(nexus_container; each keeps its name, parameters, lifecycle and topics); false: one process each.
federated_sync_node is always a process of its own.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.parameter_descriptions import ParameterValue
from lifecycle_msgs.msg import Transition

from sakura_nexus.bringup import COMPOSED, CONTAINER, FASTDDS_PROFILE, NEXUS, TOPIC_DEFAULTS, fastdds_profile_env
from sakura_nexus.params import FEDERATED_SYNC


def _lifecycle_autostart(node, condition) -> list:
    """configure now, activate once configured: launch drives the transitions (ChangeState events), as the
    ros2/launch_ros lifecycle examples do on Humble, Jazzy and Kilted alike (launch_ros' own ``autostart``
    argument exists only on newer distributions)."""
    def change(transition_id):
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition_id),
                         condition=condition)

    return [
        RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                               goal_state="inactive",
                                               entities=[change(Transition.TRANSITION_ACTIVATE)]),
                             condition=condition),
        change(Transition.TRANSITION_CONFIGURE),
    ]


def _nodes(context, *args, **kwargs):
    use_sim_time = ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool)
    autostart = LaunchConfiguration("autostart").perform(context).strip().lower() in ("true", "1", "yes")
    trusted_keys = LaunchConfiguration("trusted_keys").perform(context)
    actions = []
    composed = LaunchConfiguration("composed").perform(context).lower() in ("true", "1", "yes")
    specs = [s for s in NEXUS if s not in COMPOSED] if composed else list(NEXUS)
    if composed:
        # one process, one executor: launch_ros cannot drive the lifecycle of nodes inside a container
        # (a LifecycleNode action is one node per process), so the contained nodes run their own
        # autostart (configure + activate on start) or wait for a lifecycle manager (autostart:=false)
        extra = {"use_sim_time": use_sim_time, "autostart": autostart}
        if trusted_keys:
            extra["trusted_keys"] = trusted_keys
        remaps = {topic: arg for spec in COMPOSED for topic, arg in spec.remaps.items()}
        container_args = [a for spec in COMPOSED for a in ("--node", spec.name)]
        actions.append(Node(
            package="sakura_nexus", executable=CONTAINER.executable,  # no name=: the nodes keep their own
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), extra],
            remappings=[(topic, LaunchConfiguration(arg)) for topic, arg in remaps.items()],
            arguments=[*container_args, "--ros-args", "--log-level", LaunchConfiguration("log_level")],
            output="screen", emulate_tty=True,
        ))
    for spec in specs:
        # the node's own autostart is off: this launch file configures and activates it (or leaves it
        # unconfigured for a lifecycle manager when autostart:=false)
        extra = {"use_sim_time": use_sim_time, "autostart": False}
        if trusted_keys:  # every node that applies (or publishes) model updates checks their signatures
            extra["trusted_keys"] = trusted_keys
        if spec.name == "federated_sync_node":
            extra["superlink"] = LaunchConfiguration("superlink")
        condition = IfCondition(LaunchConfiguration("with_sync")) if spec.name == "federated_sync_node" else None
        node = LifecycleNode(
            package="sakura_nexus", executable=spec.executable, name=spec.name,
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), extra],
            remappings=[(topic, LaunchConfiguration(arg)) for topic, arg in spec.remaps.items()],
            arguments=["--ros-args", "--log-level", LaunchConfiguration("log_level")],
            condition=condition, output="screen", emulate_tty=True,
        )
        actions.append(node)
        if autostart:
            actions += _lifecycle_autostart(node, condition)
    return actions


def generate_launch_description():
    share = get_package_share_directory("sakura_nexus")
    args = [
        DeclareLaunchArgument("namespace", default_value="", description="Namespace of this robot"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="Use /clock (sim) time"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "nexus.yaml"),
                              description="Parameters of the nodes (use /**/<node> keys)"),
        DeclareLaunchArgument("log_level", default_value="info", description="Log level of every node"),
        DeclareLaunchArgument("autostart", default_value=str(FEDERATED_SYNC["autostart"].default).lower(),
                              description="Configure + activate the lifecycle nodes on start-up"),
        DeclareLaunchArgument("with_sync", default_value="true", description="Start federated_sync_node"),
        DeclareLaunchArgument("composed", default_value="true",
                              description="perception, world model and policy in one process (nexus_container)"),
        DeclareLaunchArgument("superlink", default_value=FEDERATED_SYNC["superlink"].default,
                              description="Fleet aggregator (Flower SuperLink Fleet API) address"),
        DeclareLaunchArgument("trusted_keys", default_value="",
                              description="Trusted fleet keys file (model updates are signed); empty = as in "
                                          "params_file"),
    ] + [DeclareLaunchArgument(k, default_value=v, description=f"Remap of {v}") for k, v in TOPIC_DEFAULTS.items()]

    # the shipped SHM profile (unless one is set already), under the name the installed Fast DDS reads
    profile = fastdds_profile_env(os.path.join(share, "config", FASTDDS_PROFILE), os.environ)
    env = [SetEnvironmentVariable(k, v) for k, v in profile.items()]
    return LaunchDescription([*args, *env, OpaqueFunction(function=_nodes)])
