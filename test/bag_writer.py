"""Bags written by an independent writer (``rosbags``' rosbag2 Writer, its stock ROS 2 Humble message
schemas): a robot driving a known arc, with a camera whose picture depends on the pose, odometry,
Twist commands and Bool contacts. ``Drive`` keeps the ground truth the tests compare against."""

from __future__ import annotations

import math
import pathlib
import random
from dataclasses import dataclass

import cv2
import numpy as np

NS = 1_000_000_000


@dataclass
class Drive:
    seconds: float = 8.0
    image_hz: float = 30.0
    odom_hz: float = 50.0
    cmd_hz: float = 20.0
    contact_hz: float = 50.0
    width: int = 96
    height: int = 72
    t0: float = 100.0  # header clock at the start [s]

    def cmd(self, t: float) -> tuple[float, float]:
        """Commanded (v, w) at time t: piecewise constant, changes every second."""
        k = int((t - self.t0) // 1.0)
        return 0.2 + 0.05 * (k % 4), 0.3 * math.sin(k)

    def pose(self, t: float) -> tuple[float, float, float, float, float]:
        """x, y, yaw, v, w: the commands integrated exactly (constant-twist arcs, one per second)."""
        x = y = yaw = 0.0
        s = self.t0
        while s < t - 1e-12:
            h = min(math.floor(s - self.t0 + 1e-9) + 1 + self.t0, t) - s
            v, w = self.cmd(s)
            if abs(w) < 1e-9:
                x, y = x + v * math.cos(yaw) * h, y + v * math.sin(yaw) * h
            else:
                x += v / w * (math.sin(yaw + w * h) - math.sin(yaw))
                y -= v / w * (math.cos(yaw + w * h) - math.cos(yaw))
            yaw += w * h
            s += h
        v, w = self.cmd(t)
        return x, y, yaw, v, w

    def contact(self, t: float) -> bool:
        return 3.0 <= t - self.t0 < 3.5

    def frame(self, t: float) -> np.ndarray:
        """RGB picture that changes with the pose (so frames differ)."""
        x, y, yaw, _, _ = self.pose(t)
        img = np.zeros((self.height, self.width, 3), np.uint8)
        img[:] = (int(128 + 100 * math.cos(yaw)), int(128 + 100 * math.sin(yaw)), int(60 + 40 * x) % 256)
        cx = int((t * 40) % self.width)
        cv2.circle(img, (cx, self.height // 2), 9, (250, 250, 20), -1)
        return img


def _types():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def _time(ts, t_ns: int):
    return ts.types["builtin_interfaces/msg/Time"](sec=t_ns // NS, nanosec=t_ns % NS)


def _header(ts, t_ns: int, frame: str):
    return ts.types["std_msgs/msg/Header"](stamp=_time(ts, t_ns), frame_id=frame)


def image_msg(ts, rgb: np.ndarray, t_ns: int, compressed: str = ""):
    if compressed:
        ok, buf = cv2.imencode("." + ("jpg" if compressed == "jpeg" else "png"), rgb[:, :, ::-1])
        assert ok
        fmt = "rgb8; jpeg compressed bgr8" if compressed == "jpeg" else "png"
        return ts.types["sensor_msgs/msg/CompressedImage"](header=_header(ts, t_ns, "camera"), format=fmt,
                                                          data=buf.reshape(-1)), "sensor_msgs/msg/CompressedImage"
    h, w = rgb.shape[:2]
    return ts.types["sensor_msgs/msg/Image"](header=_header(ts, t_ns, "camera"), height=h, width=w, encoding="rgb8",
                                             is_bigendian=0, step=w * 3, data=rgb.reshape(-1)), "sensor_msgs/msg/Image"


def odom_msg(ts, pose, t_ns: int):
    T = ts.types
    x, y, yaw, v, w = pose
    p = T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=x, y=y, z=0.0),
                                    orientation=T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=math.sin(yaw / 2),
                                                                                  w=math.cos(yaw / 2)))
    tw = T["geometry_msgs/msg/Twist"](linear=T["geometry_msgs/msg/Vector3"](x=v, y=0.0, z=0.0),
                                      angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=w))
    return T["nav_msgs/msg/Odometry"](
        header=_header(ts, t_ns, "odom"), child_frame_id="base_link",
        pose=T["geometry_msgs/msg/PoseWithCovariance"](pose=p, covariance=np.zeros(36)),
        twist=T["geometry_msgs/msg/TwistWithCovariance"](twist=tw, covariance=np.zeros(36)))


def twist_msg(ts, v: float, w: float):
    T = ts.types
    return T["geometry_msgs/msg/Twist"](linear=T["geometry_msgs/msg/Vector3"](x=v, y=0.0, z=0.0),
                                        angular=T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=w))


def write_bag(path: pathlib.Path, drive: Drive | None = None, storage: str = "mcap", compressed: str = "",
              jitter: float = 0.0, shuffle: bool = False, camera_gap: tuple | None = None,
              image_stamp_shift: dict | None = None, topics: dict | None = None, contacts: bool = True,
              extra=None) -> dict:
    """Write a bag; returns {topic: messages written}. ``jitter``: random delivery delay up to this
    many seconds (log time = stamp + delay, so log order differs from stamp order); ``shuffle``: write
    the messages to the file in random order; ``camera_gap``: (start, end) seconds without frames;
    ``image_stamp_shift``: {frame index: seconds added to that frame's header stamp};
    ``extra(writer, ts)``: add more connections / messages."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    d = drive or Drive()
    ts = _types()
    rng = random.Random(3)
    names = {"image": "/camera/image_raw" + ("/compressed" if compressed else ""), "odom": "/odom",
             "cmd": "/cmd_vel", "contacts": "/contacts", **(topics or {})}
    out: list[tuple[str, str, int, bytes]] = []

    def add(role, msg, msgtype, t_ns):
        log = t_ns + int((0.002 + rng.random() * jitter) * NS)
        out.append((names[role], msgtype, log, ts.serialize_cdr(msg, msgtype)))

    end = d.t0 + d.seconds
    for i in range(int(d.seconds * d.image_hz)):
        t = d.t0 + i / d.image_hz
        if camera_gap and camera_gap[0] <= t - d.t0 < camera_gap[1]:
            continue
        stamp = int(round((t + (image_stamp_shift or {}).get(i, 0.0)) * NS))
        msg, mt = image_msg(ts, d.frame(t), stamp, compressed)
        add("image", msg, mt, int(round(t * NS)))
    for i in range(int(d.seconds * d.odom_hz)):
        t = d.t0 + i / d.odom_hz
        add("odom", odom_msg(ts, d.pose(t), int(round(t * NS))), "nav_msgs/msg/Odometry", int(round(t * NS)))
    for i in range(int(d.seconds * d.cmd_hz)):
        t = d.t0 + i / d.cmd_hz
        add("cmd", twist_msg(ts, *d.cmd(t)), "geometry_msgs/msg/Twist", int(round(t * NS)))
    if contacts:
        for i in range(int(d.seconds * d.contact_hz)):
            t = d.t0 + i / d.contact_hz
            add("contacts", ts.types["std_msgs/msg/Bool"](data=d.contact(t)), "std_msgs/msg/Bool",
                int(round(t * NS)))
    assert max(o[2] for o in out) < (end + 1) * NS
    if shuffle:
        rng.shuffle(out)
    else:
        out.sort(key=lambda o: o[2])
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    counts: dict[str, int] = {}
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {}
        for topic, mt, log, raw in out:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, mt, typestore=ts)
            w.write(conns[topic], log, raw)
            counts[topic] = counts.get(topic, 0) + 1
        if extra:
            extra(w, ts)
    return counts


def storage_file(bag_dir: pathlib.Path) -> pathlib.Path:
    return next(p for p in bag_dir.iterdir() if p.suffix in (".mcap", ".db3"))
