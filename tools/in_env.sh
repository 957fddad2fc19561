#!/usr/bin/env bash
# Run a command inside the project environment (venv + ROS wheels + the colcon install space).
set -eo pipefail
. "$(cd "$(dirname "$0")" && pwd)/dev_env.sh"
exec "$@"
