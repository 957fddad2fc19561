#!/usr/bin/env bash
# Developer shortcut: (re)build the package into .ws/ (.ws-jazzy/ with ROS_DISTRO=jazzy) with symlinked
# Python sources; serialised by a lock.
set -euo pipefail
_root="$(cd "$(dirname "$0")/.." && pwd)"
. "$_root/tools/distro.sh"
mkdir -p "$sakura_ws/src"; ln -sfn "$_root" "$sakura_ws/src/sakura_nexus"
. "$sakura_venv/bin/activate"
export AMENT_PREFIX_PATH="$sakura_venv" CMAKE_PREFIX_PATH="$sakura_venv"
cd "$sakura_ws"
exec flock "$sakura_ws/.lock" colcon build --symlink-install --event-handlers console_cohesion- summary- \
  --cmake-args -DCMAKE_PROJECT_INCLUDE="$_root/cmake/drop_missing_include_dirs.cmake" \
  -DPython3_EXECUTABLE="$sakura_venv/bin/python" -DBUILD_TESTING=OFF
