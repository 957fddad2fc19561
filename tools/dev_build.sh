#!/usr/bin/env bash
# Developer shortcut: (re)build the package into .ws/ with symlinked Python sources; serialised by a lock.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$root/.ws/src"; ln -sfn "$root" "$root/.ws/src/sakura_nexus"
. "$root/.venv/bin/activate"
export AMENT_PREFIX_PATH="$root/.venv" CMAKE_PREFIX_PATH="$root/.venv"
cd "$root/.ws"
exec flock "$root/.ws/.lock" colcon build --symlink-install --event-handlers console_cohesion- summary- \
  --cmake-args -DCMAKE_PROJECT_INCLUDE="$root/cmake/drop_missing_include_dirs.cmake" \
  -DPython3_EXECUTABLE="$root/.venv/bin/python" -DBUILD_TESTING=OFF
