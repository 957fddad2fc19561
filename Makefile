# The two commands of the README (demo, test), and unit, lint, typecheck, docs, bench. Each sets up what it
# needs first (tools/bootstrap.sh, idempotent).
# ROS_DISTRO=kilted (default) or jazzy picks the ROS 2 wheels, the venv and the colcon workspace (tools/distro.sh):
#   make test ROS_DISTRO=jazzy ARGS="test/ros/test_messages.py"
.PHONY: demo test unit setup lint typecheck docs bench

ROS_DISTRO ?= kilted
export ROS_DISTRO

setup:
	@tools/bootstrap.sh

demo: setup
	@tools/in_env.sh python -m sakura_nexus demo $(ARGS)

test: setup
	@tools/in_env.sh tools/run_tests.sh $(ARGS)

# The fast inner loop: every test that needs neither ROS nor more than ~30 s (~75 s on the 2-core VM).
unit: setup
	@tools/in_env.sh python -m pytest -q -p no:cacheprovider -m "not ros and not slow" $(ARGS)

lint: setup
	@tools/in_env.sh ruff check .

typecheck: setup
	@tools/in_env.sh mypy

docs: setup
	@tools/in_env.sh python -m sakura_nexus.params > docs/parameters.md

bench: setup
	@tools/in_env.sh python -m sakura_nexus bench $(ARGS)
