"""Separate process for test_frame_delivery.py: publishes COUNT camera-sized frames (640x480 rgb8, the
sim camera's size) best-effort at RATE Hz once a subscriber is matched, then exits.

    python frame_publisher.py TOPIC COUNT RATE

Frame i has header.frame_id == str(i) and its first byte == i % 256, so the receiver can tell which
frames arrived and that they arrived whole.
"""

import sys
import time

import rclpy
from sensor_msgs.msg import Image

from sakura_nexus.ros.qos import sensor_qos

WIDTH, HEIGHT = 640, 480

topic, count, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rclpy.init()
node = rclpy.create_node("frame_publisher")
pub = node.create_publisher(Image, topic, sensor_qos())  # what sim_node publishes the camera with
msg = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", is_bigendian=0, step=3 * WIDTH)
msg.data = bytes(3 * WIDTH * HEIGHT)

deadline = time.monotonic() + 30.0
while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
if pub.get_subscription_count() == 0:
    print("no subscriber matched within 30 s", flush=True)
    sys.exit(2)
time.sleep(1.0)  # let discovery settle on both sides (the reader learns about this writer too)

t0 = time.monotonic()
for i in range(count):
    # absolute schedule: frame i leaves at t0 + i / rate, whatever publishing the previous one cost
    time.sleep(max(0.0, t0 + i / rate - time.monotonic()))
    msg.header.frame_id = str(i)
    msg.header.stamp = node.get_clock().now().to_msg()
    msg.data[0] = i % 256
    pub.publish(msg)
elapsed = time.monotonic() - t0
print(f"sent {count} frames in {elapsed:.2f} s", flush=True)
time.sleep(1.0)  # the last frames are still in flight
node.destroy_node()
rclpy.try_shutdown()
