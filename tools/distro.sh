# Sourced by the other tools (needs $_root): which ROS 2 distribution the project environment is for, and
# where its pieces live. ROS_DISTRO=kilted (the default) or jazzy, each from PyPI wheels:
#   kilted: venv .venv/,       colcon workspace .ws/,       requirements/ros-kilted.txt, Fast DDS 3.x
#   jazzy:  venv .venv-jazzy/, colcon workspace .ws-jazzy/, requirements/ros-jazzy.txt,  Fast DDS 2.x
# sakura_fastdds_var: the variable that Fast DDS generation reads its XML profile from (see
# sakura_nexus.bringup.fastdds_profile_env, which does the same for the Python side).
sakura_distro="${ROS_DISTRO:-kilted}"
case "$sakura_distro" in
  kilted) sakura_venv="$_root/.venv" sakura_ws="$_root/.ws" sakura_fastdds_var=FASTDDS_DEFAULT_PROFILES_FILE ;;
  jazzy) sakura_venv="$_root/.venv-jazzy" sakura_ws="$_root/.ws-jazzy" sakura_fastdds_var=FASTRTPS_DEFAULT_PROFILES_FILE ;;
  *)
    echo "ROS_DISTRO=$sakura_distro: the project's own set-up supports kilted (default) and jazzy (ROS 2 from PyPI" \
      "wheels; there are none for other distributions). A sourced ROS install sets ROS_DISTRO: run" \
      "'make test ROS_DISTRO=kilted', or build the package in your own workspace (README)." >&2
    return 1 2>/dev/null || exit 1 ;;
esac
sakura_requirements="$_root/requirements/ros-$sakura_distro.txt"
