"""Separate process for test_messages.py: publishes every sample message until killed."""

import sys
import time

import rclpy
from msg_samples import samples
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

rclpy.init()
node = rclpy.create_node("msg_sample_publisher")
qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
msgs = samples()
pubs = {topic: node.create_publisher(type(m), topic, qos) for topic, m in msgs.items()}
for topic, m in msgs.items():
    pubs[topic].publish(m)
print("published", flush=True)
deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
while time.monotonic() < deadline:
    rclpy.spin_once(node, timeout_sec=0.1)
node.destroy_node()
rclpy.try_shutdown()
