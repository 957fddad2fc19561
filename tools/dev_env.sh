# Source me (developer shortcut): venv + ROS env + the colcon install in .ws/ (ROS_DISTRO=jazzy: .venv-jazzy/
# and .ws-jazzy/, see tools/distro.sh)
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$_root/tools/distro.sh" || return 1
. "$sakura_venv/bin/activate"
export AMENT_PREFIX_PATH="$sakura_venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$sakura_venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_LOG_DIR="${ROS_LOG_DIR:-/tmp/sakura_roslog}" ROS_HOME="${ROS_HOME:-/tmp/sakura_roshome}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# The SHM profile under the name this distro's Fast DDS reads: FASTDDS_DEFAULT_PROFILES_FILE (3.x, Kilted) or
# FASTRTPS_DEFAULT_PROFILES_FILE (2.x, Jazzy; 2.x ignores the new name, Kilted warns about the old one).
export "$sakura_fastdds_var=$_root/config/fastdds_shm.xml"
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
# Never let the source tree shadow the installed package (which also holds the generated msg/).
export PYTHONSAFEPATH=1
mkdir -p "$ROS_LOG_DIR" "$ROS_HOME"
[ -f "$sakura_ws/install/setup.bash" ] && . "$sakura_ws/install/setup.bash"
