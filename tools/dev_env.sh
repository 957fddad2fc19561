# Source me (developer shortcut): venv + ROS env + the colcon install in .ws/
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$_root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$_root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_root/.venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_LOG_DIR="${ROS_LOG_DIR:-/tmp/sakura_roslog}" ROS_HOME="${ROS_HOME:-/tmp/sakura_roshome}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export FASTDDS_DEFAULT_PROFILES_FILE="$_root/config/fastdds_shm.xml"
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
# Never let the source tree shadow the installed package (which also holds the generated msg/).
export PYTHONSAFEPATH=1
mkdir -p "$ROS_LOG_DIR" "$ROS_HOME"
[ -f "$_root/.ws/install/setup.bash" ] && . "$_root/.ws/install/setup.bash"
