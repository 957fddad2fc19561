# The two commands of the README. Both set up what they need first (tools/bootstrap.sh, idempotent).
# ROS_DISTRO=kilted (default) or jazzy picks the ROS 2 wheels, the venv and the colcon workspace (tools/distro.sh):
#   make test ROS_DISTRO=jazzy ARGS="test/test_messages.py"
.PHONY: demo test setup lint docs bench

ROS_DISTRO ?= kilted
export ROS_DISTRO

setup:
	@tools/bootstrap.sh

demo: setup
	@tools/in_env.sh python -m sakura_nexus demo $(ARGS)

test: setup
	@tools/in_env.sh tools/run_tests.sh $(ARGS)

lint: setup
	@tools/in_env.sh ruff check .

docs: setup
	@tools/in_env.sh python -m sakura_nexus.params > docs/parameters.md

bench: setup
	@tools/in_env.sh python -m sakura_nexus bench $(ARGS)
