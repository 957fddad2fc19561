#!/usr/bin/env bash
# Run a ROS-free evaluation from a frozen snapshot of a commit, so that editing the working tree
# while a long evaluation runs cannot change the code its worker processes import.
#   tools/snapshot_eval.sh REV ARGS...   (ARGS go to `python -m sakura_nexus evaluate`)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
rev="$1"; shift
snap="$root/out/snapshots/$(git -C "$root" rev-parse --short "$rev")"
if [ ! -d "$snap/sakura_nexus" ]; then
  mkdir -p "$snap"
  git -C "$root" archive "$rev" sakura_nexus models | tar -x -C "$snap"
fi
cd "$root"
# PYTHONSAFEPATH: the working directory (this checkout) must not shadow the snapshot
export PYTHONPATH="$snap" PYTHONSAFEPATH=1 MUJOCO_GL=egl PYOPENGL_PLATFORM=egl SAKURA_NEXUS_MODELS="$snap/models"
exec "$root/.venv/bin/python" -m sakura_nexus evaluate "$@"
