"""Camera frames between processes: the shipped Fast DDS profile (config/fastdds_shm.xml) must be in
effect on the Fast DDS generation of the installed ROS distribution.

Without it, Fast DDS sends a 900 KiB frame as ~14 UDP fragments (it does not fit the default 512 KiB
shared-memory segment), and best-effort frames that lose one fragment are dropped: most of them here.
Fast DDS 2.x (Jazzy, Humble) and 3.x (Kilted) read the profile from differently named variables, and a
profile set under the wrong name is silently ignored; so this test runs on every distro CI runs.
"""

import os
import subprocess
import sys
import time

import pytest
from helpers import wait_for

from sakura_nexus.bringup import FASTDDS_PROFILE_VARS, fastdds_generation, fastdds_profile_env

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # test/: the support scripts
FRAMES, RATE_HZ, MIN_DELIVERED = 300, 30.0, 0.95


def test_profile_env_sets_both_fast_dds_names():
    env = fastdds_profile_env("/share/p.xml")
    assert env == {"FASTDDS_DEFAULT_PROFILES_FILE": "/share/p.xml", "FASTRTPS_DEFAULT_PROFILES_FILE": "/share/p.xml"}


@pytest.mark.parametrize("given", FASTDDS_PROFILE_VARS)
def test_profile_env_keeps_a_profile_the_user_chose_under_either_name(given):
    env = fastdds_profile_env("/share/p.xml", {given: "/mine.xml", "PATH": "/bin"})
    assert env == dict.fromkeys(FASTDDS_PROFILE_VARS, "/mine.xml")
    both = {"FASTDDS_DEFAULT_PROFILES_FILE": "/a.xml", "FASTRTPS_DEFAULT_PROFILES_FILE": "/b.xml"}
    assert fastdds_profile_env("/share/p.xml", both) == both
    assert fastdds_profile_env("/share/p.xml", {given: ""}) == dict.fromkeys(FASTDDS_PROFILE_VARS, "/share/p.xml")


def test_profile_env_uses_the_name_of_the_installed_generation(tmp_path):
    overlay, fast2, fast3 = (tmp_path / n for n in ("overlay", "jazzy", "kilted"))
    (overlay / "lib").mkdir(parents=True)
    (fast2 / "lib").mkdir(parents=True)
    (fast2 / "lib" / "libfastrtps.so.2.14").touch()
    (fast3 / "lib").mkdir(parents=True)
    (fast3 / "lib" / "libfastdds.so.3.2").touch()
    env2 = {"AMENT_PREFIX_PATH": os.pathsep.join([str(overlay), str(fast2), str(fast3)])}
    env3 = {"AMENT_PREFIX_PATH": os.pathsep.join([str(overlay), "", str(fast3), str(fast2)])}
    assert (fastdds_generation(env2), fastdds_generation(env3)) == (2, 3)  # the first prefix that has one
    assert fastdds_profile_env("/p.xml", env2) == {"FASTRTPS_DEFAULT_PROFILES_FILE": "/p.xml"}
    assert fastdds_profile_env("/p.xml", env3) == {"FASTDDS_DEFAULT_PROFILES_FILE": "/p.xml"}
    # a profile the user set under the other generation's name is carried over, not replaced
    assert fastdds_profile_env("/p.xml", {**env2, "FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}) == {
        "FASTRTPS_DEFAULT_PROFILES_FILE": "/mine.xml"}
    assert fastdds_generation({"AMENT_PREFIX_PATH": str(overlay)}) is None


@pytest.mark.ros
def test_the_installed_fast_dds_is_recognised():
    """The project environment (tools/dev_env.sh, conftest.py) set the name this install's Fast DDS reads."""
    gen = fastdds_generation(os.environ)
    assert gen in (2, 3), f"no libfastdds/libfastrtps in AMENT_PREFIX_PATH={os.environ.get('AMENT_PREFIX_PATH')}"
    assert os.environ.get(FASTDDS_PROFILE_VARS[0] if gen == 3 else FASTDDS_PROFILE_VARS[1])


@pytest.mark.ros
def test_vga_frames_reach_another_process(ros_node):
    """300 best-effort 640x480 rgb8 frames at 30 Hz from a publisher process: >= 95 % arrive, whole."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from sakura_nexus.ros.qos import sensor_qos

    got: list[bytes] = []
    # raw: the callback only keeps the serialized bytes, so a slow test process cannot be the bottleneck;
    # depth 10 on this side for the same reason (the publisher uses the camera QoS: best effort, depth 1)
    ros_node.create_subscription(Image, "frame_delivery", got.append, sensor_qos(depth=10), raw=True)
    pub = subprocess.Popen([sys.executable, os.path.join(HERE, "frame_publisher.py"), "frame_delivery",
                            str(FRAMES), str(RATE_HZ)], cwd=HERE, env=dict(os.environ),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = pub.communicate(timeout=30 + FRAMES / RATE_HZ + 30)
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait()
    assert pub.returncode == 0, out
    wait_for(lambda: len(got) >= FRAMES, 1.0)
    time.sleep(0.2)

    frames = [deserialize_message(raw, Image) for raw in list(got)]
    ids = [int(f.frame_id) for f in (m.header for m in frames)]
    for m, i in zip(frames, ids, strict=True):
        assert (m.width, m.height, m.encoding, len(m.data)) == (640, 480, "rgb8", 640 * 480 * 3)
        assert m.data[0] == i % 256
    assert ids == sorted(ids) and len(set(ids)) == len(ids), "frames duplicated or out of order"
    profile = {k: os.environ.get(k) for k in FASTDDS_PROFILE_VARS}
    print(f"frame delivery: {len(ids)}/{FRAMES} frames ({out.strip()}), profile {profile}")
    assert len(ids) >= MIN_DELIVERED * FRAMES, (
        f"{len(ids)}/{FRAMES} frames delivered ({out.strip()}); the Fast DDS profile is probably not in effect "
        f"(Fast DDS 2.x reads FASTRTPS_DEFAULT_PROFILES_FILE, 3.x FASTDDS_DEFAULT_PROFILES_FILE): {profile}")
