"""Cross-process round trip of every custom message type (separate interpreters, real DDS)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import wait_for
from msg_samples import as_dict, samples

pytestmark = pytest.mark.ros


def test_every_custom_message_round_trips_exactly(ros_node):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    expected = samples()
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    got = {topic: ros_node.collect(type(m), topic, qos) for topic, m in expected.items()}
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # test/: msg_publisher.py
    pub = subprocess.Popen([sys.executable, os.path.join(here, "msg_publisher.py"), "20"], cwd=here,
                           env={**os.environ, "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: all(got.values()), 20), {t: len(v) for t, v in got.items()}
    finally:
        pub.kill()
        pub.wait()
    for topic, msg in expected.items():
        received = got[topic][0]
        a, b = as_dict(received), as_dict(msg)
        # float32 fields: compare with the value as float32 (exact, not approximate)
        for field in ("embedding", "latent", "predicted"):
            if field in b:
                np.testing.assert_array_equal(np.asarray(a.pop(field), np.float32),
                                              np.asarray(b.pop(field), np.float32))
        for k in list(b):
            if isinstance(b[k], float):
                assert np.float32(a.pop(k)) == np.float32(b.pop(k)), (topic, k)
        assert a == b, topic
