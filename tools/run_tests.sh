#!/usr/bin/env bash
# The test suite: lint, type check, then pytest (unit, cross-process ROS integration, MuJoCo end-to-end).
set -eo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
echo "== ruff"
ruff check .
echo "== mypy (the ROS-free core, pyproject.toml [tool.mypy])"
mypy
echo "== docs/parameters.md is up to date"
python -m sakura_nexus.params | diff -u docs/parameters.md - >/dev/null || {
  echo "docs/parameters.md is stale: run 'make docs'"; exit 1; }
echo "== pytest"
exec python -m pytest -q -p no:cacheprovider "$@"
