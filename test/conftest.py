"""Test harness: every pytest run gets its own ROS domain, localhost-only discovery and a
temporary writable ROS_LOG_DIR / ROS_HOME, set before anything imports rclpy."""

from __future__ import annotations

import os
import tempfile

import pytest

from sakura_nexus.bringup import FASTDDS_PROFILE, fastdds_profile_env

_tmp = tempfile.mkdtemp(prefix="sakura_test_")
os.environ.setdefault("ROS_DOMAIN_ID", str(110 + os.getpid() % 120))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOG_DIR"] = os.path.join(_tmp, "log")
os.environ["ROS_HOME"] = os.path.join(_tmp, "home")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# the shipped SHM profile under the name the installed Fast DDS reads (2.x: Jazzy, Humble; 3.x: Kilted)
_profile = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", FASTDDS_PROFILE)
os.environ.update(fastdds_profile_env(_profile, os.environ))
for d in (os.environ["ROS_LOG_DIR"], os.environ["ROS_HOME"]):
    os.makedirs(d, exist_ok=True)


def _ros_available() -> str | None:
    try:
        import rclpy  # noqa: F401

        from sakura_nexus.msg import Observation  # noqa: F401
    except ImportError as e:
        return f"ROS 2 (rclpy + the colcon-built sakura_nexus interfaces) not importable: {e}"
    return None


ROS_MISSING = _ros_available()


def pytest_collection_modifyitems(config, items):
    if ROS_MISSING:
        skip = pytest.mark.skip(reason=ROS_MISSING)
        for item in items:
            if "ros" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def rclpy_context():
    """One rclpy context for the whole test session."""
    import rclpy

    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture
def ros_node(rclpy_context, request):
    """A fresh test-side node with its own executor spinning in a background thread."""
    from helpers import SpinningNode

    node = SpinningNode(f"test_{request.node.name[:40].replace('[', '_').replace(']', '_').replace('-', '_')}")
    yield node
    node.close()


@pytest.fixture
def tmp_env(tmp_path):
    return dict(os.environ)
