"""Recording a run as a rosbag2 MCAP bag from an rclpy process (``sakura-nexus demo --record``).

The recorder subscribes to the robot's topics with serialized callbacks (no deserialization: rclpy
hands over the CDR bytes) and writes them with ``rosbags``' rosbag2 Writer, stamped with the node's
clock (sim time under ``use_sim_time``) -- what ``ros2 bag record --use-sim-time`` would write. The
camera is the exception: raw frames (320x240 rgb8 at 30 Hz, ~7 MB/s) are JPEG-compressed into
``camera/image_raw/compressed`` (sensor_msgs/CompressedImage, image_transport's format string), as a
real robot's bag usually holds them; ``raw_camera=True`` keeps them raw instead.
"""

from __future__ import annotations

import pathlib
import threading

# topic (relative) -> message type: what train --bag learns from, plus what helps to look at a run
TOPICS = {
    "camera/image_raw": "sensor_msgs/msg/Image",
    "camera/camera_info": "sensor_msgs/msg/CameraInfo",
    "odom": "nav_msgs/msg/Odometry",
    "cmd_vel": "geometry_msgs/msg/Twist",
    "contacts": "std_msgs/msg/Bool",
    "goal_pose": "geometry_msgs/msg/PoseStamped",
}
COMPRESSED_FORMAT = "rgb8; jpeg compressed bgr8"


def _msg_class(msgtype: str):
    import importlib

    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


class Recorder:
    """``rec = Recorder(path); ...; rec.close()`` -- its own node and executor thread."""

    def __init__(self, path: str | pathlib.Path, namespace: str = "", raw_camera: bool = False,
                 jpeg_quality: int = 90):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        from sakura_nexus.ros.qos import sensor_qos, state_qos

        self.path = pathlib.Path(path)
        self.counts: dict[str, int] = {}
        self.errors = 0
        self._quality = int(jpeg_quality)
        self._lock = threading.Lock()
        self._closed = False
        ts = get_typestore(Stores.ROS2_KILTED)
        self._writer = Writer(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self.node = rclpy.create_node("demo_recorder", parameter_overrides=[Parameter("use_sim_time", value=True)])
        ns = f"/{namespace.strip('/')}/" if namespace else "/"
        self._conns = {}
        for rel, msgtype in TOPICS.items():
            topic = ns + rel
            qos = sensor_qos() if rel.startswith("camera/") else state_qos(50)
            if rel == "camera/image_raw" and not raw_camera:
                out = topic + "/compressed"
                self._conns[out] = self._writer.add_connection(out, "sensor_msgs/msg/CompressedImage", typestore=ts)
                self.node.create_subscription(_msg_class(msgtype), topic, lambda m, t=out: self._on_image(t, m), qos)
                continue
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=ts)
            self.node.create_subscription(_msg_class(msgtype), topic, lambda data, t=topic: self._write(t, data),
                                          qos, raw=True)
        self._ex = SingleThreadedExecutor()
        self._ex.add_node(self.node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name="recorder", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        import rclpy

        while not self._stop.is_set() and rclpy.ok():
            try:
                self._ex.spin_once(timeout_sec=0.1)
            except Exception:  # the context shut down under us: return quietly, else re-raise
                if self._stop.is_set() or not rclpy.ok():
                    return
                raise

    def _write(self, topic: str, data: bytes) -> None:
        t = self.node.get_clock().now().nanoseconds
        if t <= 0:  # no /clock yet
            return
        with self._lock:
            if self._closed:
                return
            self._writer.write(self._conns[topic], t, data)
            self.counts[topic] = self.counts.get(topic, 0) + 1

    def _on_image(self, topic: str, msg) -> None:
        import cv2
        import numpy as np
        from rclpy.serialization import serialize_message
        from sensor_msgs.msg import CompressedImage

        from sakura_nexus import vision

        try:
            rgb = vision.decode(msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian), msg.data)
            ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, self._quality])
            if not ok:
                raise ValueError("JPEG encoding failed")
        except (vision.ImageError, ValueError, cv2.error):
            self.errors += 1
            return
        out = CompressedImage(header=msg.header, format=COMPRESSED_FORMAT)
        out.data = buf.tobytes()
        self._write(topic, serialize_message(out))

    def close(self) -> dict[str, int]:
        """Stop, finish the bag (MCAP summary, metadata.yaml); -> messages written per topic."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.close()
        try:
            self._ex.shutdown(timeout_sec=1.0)
        except Exception:  # noqa: BLE001 - best effort
            pass
        self.node.destroy_node()
        return dict(self.counts)
