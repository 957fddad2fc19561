"""ROS topic names of the simulated robot: the single source for sim_node and config/gz_bridge.yaml.

Relative names resolve in the node's namespace (multi-robot: one namespace per robot).
"""

TOPICS = {
    "image": "camera/image_raw",          # sensor_msgs/Image rgb8, best-effort depth 1 (default)
    "camera_info": "camera/camera_info",  # sensor_msgs/CameraInfo, same QoS as the image
    "odom": "odom",                        # nav_msgs/Odometry, frame odom -> base_link, twist in base frame
    "joint_states": "joint_states",        # sensor_msgs/JointState (left/right wheel joints)
    "clock": "/clock",                     # rosgraph_msgs/Clock (sim time)
    "contacts": "contacts",                # std_msgs/Bool: chassis touched a wall/obstacle since last msg
    "cmd_vel": "cmd_vel",                  # geometry_msgs/Twist (subscribed)
    "initialpose": "initialpose",          # geometry_msgs/PoseWithCovarianceStamped: teleport (subscribed)
    "goal_pose": "goal_pose",              # geometry_msgs/PoseStamped: set the sim's goal (subscribed)
    "map": "map",                          # nav_msgs/OccupancyGrid of the static cell, frame odom, latched
}

# Topics that the Gazebo world provides through ros_gz_bridge (config/gz_bridge.yaml).
BRIDGED_TOPICS = ("image", "camera_info", "odom", "joint_states", "clock", "contacts", "cmd_vel")
