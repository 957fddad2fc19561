"""Malformed messages for every input of the robot's graph, and a process that publishes them.

Used by the fuzz test (test/e2e/test_fuzz_inputs.py) and the soak (bench/bench_soak.py): every message made
here is malformed in a way a node can tell from the message alone (wrong sizes, NaN/Inf, absurd
magnitudes, wrong frames, stamps from a foreign clock far in the future, unsigned or wrongly signed model
updates, undecodable deltas), so every one must end as a drop reason in the receiving node's
``input/<topic>`` ledger, never as accepted. Two inputs have no malformed form: ``e_stop`` and
``contacts`` are ``std_msgs/Bool`` (no size, no stamp, no frame): they get ``data: false`` (no e-stop,
no contact), which the nodes accept and which changes nothing.

Run as a process::

    python -m sakura_nexus.ros.garbage --count 10000 --rate 0 --out counts.json   # as fast as it goes
    python -m sakura_nexus.ros.garbage --rate 100 --duration 1800                   # 100 msg/s per topic

It writes the number published per topic as JSON (``--out``) when it ends (SIGINT/SIGTERM too).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import sys
import time

FUTURE = 2.1e9  # s: year 2036 (Time.sec is an int32: at most 2.147e9), far ahead of any node clock, sim or wall
NAN, INF = float("nan"), float("inf")
POOL = 200  # distinct messages per topic, published in turn

# topic -> message type name; the topics of sim.launch.py / the demo without a namespace
TOPICS = ("odom", "cmd_vel", "contacts", "observation", "world_state", "goal_pose", "map", "e_stop",
          "model_update", "model_delta", "camera/image_raw", "camera/camera_info", "initialpose")
# topics whose subscribers are transient-local: the publisher must be too, or DDS never matches them
LATCHED = ("map", "model_update")
# inputs that cannot be malformed (their garbage is a harmless "false"): accepted, not dropped
NO_MALFORMED_FORM = ("contacts", "e_stop")


def _stamp(msg_stamp, t: float) -> None:
    ns = int(t * 1e9)
    msg_stamp.sec, msg_stamp.nanosec = ns // 10**9, ns % 10**9


def message_type(topic: str):
    from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, Twist
    from nav_msgs.msg import OccupancyGrid, Odometry
    from sensor_msgs.msg import CameraInfo, Image
    from std_msgs.msg import Bool

    from sakura_nexus.msg import ModelDelta, ModelUpdate, Observation, WorldState

    return {"odom": Odometry, "cmd_vel": Twist, "contacts": Bool, "observation": Observation,
            "world_state": WorldState, "goal_pose": PoseStamped, "map": OccupancyGrid, "e_stop": Bool,
            "model_update": ModelUpdate, "model_delta": ModelDelta, "camera/image_raw": Image,
            "camera/camera_info": CameraInfo, "initialpose": PoseWithCovarianceStamped}[topic]


class Garbage:
    """``make(topic)`` -> one malformed message for that topic (a random kind among the topic's kinds)."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def make(self, topic: str):
        return getattr(self, "_" + topic.replace("/", "_"))(message_type(topic)())

    def _pick(self, n: int) -> int:
        return self.rng.randrange(n)

    def _odom(self, m):
        m.header.frame_id = "odom"
        m.pose.pose.orientation.w = 1.0
        k = self._pick(6)
        if k == 0:
            m.pose.pose.position.x = NAN
        elif k == 1:
            m.twist.twist.angular.z = INF
        elif k == 2:
            m.pose.pose.position.y = self.rng.choice([1e9, -1e38])
        elif k == 3:
            m.pose.pose.orientation.w = 0.0  # not a unit quaternion
        elif k == 4:
            m.header.frame_id = self.rng.choice(["map", "", "base_link"])
        else:
            _stamp(m.header.stamp, FUTURE)  # otherwise valid: a foreign clock
        return m

    def _cmd_vel(self, m):
        k = self._pick(3)
        if k == 0:
            m.linear.x = NAN
        elif k == 1:
            m.angular.z = self.rng.choice([INF, -INF])
        else:
            m.linear.x = self.rng.choice([1e6, -1e30])
        return m

    def _contacts(self, m):
        m.data = False
        return m

    _e_stop = _contacts

    def _observation(self, m):
        m.header.frame_id = "camera_optical_frame"
        m.encoder_id, m.quality = "conv64-v1", 0.9
        k = self._pick(5)
        if k == 0:
            m.embedding = [0.5] * self.rng.choice([0, 3, 63, 65, 4096])
        elif k == 1:
            m.embedding = [NAN] * 64
        elif k == 2:
            m.embedding = [1e9] * 64
        elif k == 3:
            m.embedding = [0.1] * 64
            _stamp(m.header.stamp, FUTURE)
        else:
            m.embedding = [0.1] * self.rng.choice([0, 64])
            m.quality = NAN
        # every kind also carries a malformed range-head part (policy_node reads only that part)
        m.free_range = [self.rng.choice([NAN, 1.0])] * self.rng.choice([1, 7, 1000])
        m.free_range_fov, m.free_range_max = 1.0, 4.0
        return m

    def _world_state(self, m):
        m.header.frame_id = "odom"
        m.latent_dim, m.latent = 32, [0.0] * 32
        m.horizon, m.step_dt = 0, 0.1
        k = self._pick(7)
        if k == 0:
            m.latent_dim = self.rng.choice([0, 7, 33, 10**6])
        elif k == 1:
            m.latent = [0.0] * self.rng.choice([0, 31, 1000])
        elif k == 2:
            m.latent = [NAN] * 32
        elif k == 3:
            m.pose_x = self.rng.choice([NAN, INF])
        elif k == 4:
            m.pose_y, m.collision_risk = 1e30, self.rng.choice([5.0, -1.0])
        elif k == 5:
            m.header.frame_id = "map"
        else:
            _stamp(m.header.stamp, FUTURE)
        return m

    def _bad_pose(self, header, pose) -> None:
        header.frame_id = "odom"
        pose.orientation.w = 1.0
        k = self._pick(4)
        if k == 0:
            pose.position.x = NAN
        elif k == 1:
            pose.position.y = 1e38
        elif k == 2:
            header.frame_id = self.rng.choice(["map", "world", ""])
        else:
            pose.orientation.w = 0.0
            pose.orientation.z = NAN

    def _goal_pose(self, m):
        self._bad_pose(m.header, m.pose)
        return m

    def _initialpose(self, m):
        self._bad_pose(m.header, m.pose.pose)
        return m

    def _map(self, m):
        m.header.frame_id = "odom"
        m.info.resolution, m.info.width, m.info.height = 0.05, 10, 10
        m.info.origin.orientation.w = 1.0
        m.data = [0] * 100
        k = self._pick(5)
        if k == 0:
            m.header.frame_id = "map"
        elif k == 1:
            m.data = [0] * 5  # fewer cells than width x height
        elif k == 2:
            m.info.width = m.info.height = 100_000  # 10^10 cells announced
        elif k == 3:
            m.info.resolution = self.rng.choice([NAN, 0.0, -1.0])
        else:
            m.info.origin.orientation.z, m.info.origin.orientation.w = 0.7071, 0.7071  # rotated
        return m

    def _model_update(self, m):
        m.model_id = self.rng.choice(["world_model", "encoder"])
        m.version = self.rng.choice([2**32 - 1, 10**6, 2])
        m.codec = self.rng.choice(["flat-vector-v1", "state-dict-v1"])
        m.payload = self.rng.randbytes(self.rng.choice([0, 16, 1000]))
        m.sha256 = self.rng.choice(["", "00" * 32])
        k = self._pick(3)
        if k == 1:  # a signature by an unknown key
            m.key_id, m.signature = "0123456789abcdef", self.rng.randbytes(64)
        elif k == 2:  # a malformed signature
            m.key_id, m.signature = "x", self.rng.randbytes(self.rng.choice([1, 63, 65]))
        return m

    def _model_delta(self, m):
        import numpy as np

        from sakura_nexus.federated.common import codecs

        m.model_id, m.base_version, m.sequence = "world_model", 1, 1 + self._pick(10)
        m.codec, m.sample_count, m.dp_delta = "dense-f32-v1", 10, 1e-5
        m.epsilon_spent, m.epsilon_budget = INF, 0.0
        k = self._pick(6)
        if k == 0:
            m.model_id = self.rng.choice(["encoder", "", "x" * 300])
        elif k == 1:
            m.sequence = 0
        elif k == 2:
            m.epsilon_spent = NAN
        elif k == 3:
            m.payload = self.rng.randbytes(self.rng.choice([0, 7, 500]))  # undecodable
        elif k == 4:
            m.payload = codecs.encode(np.ones(10, np.float32), "dense")  # decodes, but not the model's size
        else:
            m.sequence = 2**62  # a jump no robot makes
        if k != 3 and not m.payload:
            m.payload = b"\x00" * 8
        return m

    def _camera_image_raw(self, m):
        r = self.rng
        m.height, m.width = r.choice([0, 1, 7, 240, 2**20]), r.choice([0, 1, 5, 320, 2**20])
        m.encoding = r.choice(["rgb8", "bgr8", "mono8", "16UC1", "yuv422", "", "jpeg", "weird"])
        m.step = r.choice([0, 1, m.width, m.width * 3 + r.randint(-3, 3), 2**31 - 1])
        m.step = max(0, m.step)
        n = r.choice([0, 1, 13, 500])
        if m.step * m.height == n:
            n += 1  # keep it malformed: the size is inconsistent
        m.data = r.randbytes(n)
        return m

    def _camera_camera_info(self, m):
        m.width, m.height, m.distortion_model = 320, 240, "plumb_bob"
        m.k = [100.0, 0.0, 160.0, 0.0, 100.0, 120.0, 0.0, 0.0, 1.0]
        m.d = [0.1, 0.0, 0.0, 0.0, 0.0]
        k = self._pick(3)
        if k == 0:
            m.k[0] = NAN
        elif k == 1:
            m.width = m.height = 10**6
        else:
            m.distortion_model = "made_up"
        return m


def qos_for(topic: str, depth: int = 1000):
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    durability = DurabilityPolicy.TRANSIENT_LOCAL if topic in LATCHED else DurabilityPolicy.VOLATILE
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, durability=durability)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sakura_nexus.ros.garbage", description=__doc__.splitlines()[0])
    ap.add_argument("--topics", nargs="*", default=list(TOPICS))
    ap.add_argument("--namespace", default="")
    ap.add_argument("--rate", type=float, default=100.0, help="messages per second per topic; 0 = as fast as it goes")
    ap.add_argument("--count", type=int, default=0, help="messages per topic, then exit; 0 = until --duration")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds, then exit; 0 = until --count / a signal")
    ap.add_argument("--wait-subscribers", type=float, default=30.0,
                    help="wait up to this long for every topic to have a subscriber before publishing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="JSON file for the counts published per topic")
    args = ap.parse_args(argv)

    import rclpy

    rclpy.init()
    node = rclpy.create_node("garbage_publisher", namespace=args.namespace or None)
    pubs = {t: node.create_publisher(message_type(t), t, qos_for(t)) for t in args.topics}
    gen = Garbage(args.seed)
    # a pool per topic, cycled, serialized once: making a message costs ~0.1 ms and serializing one again
    # on every publish about as much, while publishing the bytes costs a fraction of that; on a 2-core
    # machine shared with the stack under test the attacker's CPU must not be what starves the robot
    from rclpy.serialization import serialize_message

    pool = {t: [serialize_message(gen.make(t)) for _ in range(POOL)] for t in args.topics}
    sent = dict.fromkeys(args.topics, 0)
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))

    def write():
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"published": sent, "rate": args.rate, "t_end": time.time()}, f)

    deadline = time.monotonic() + args.wait_subscribers
    while time.monotonic() < deadline and not stop and not all(p.get_subscription_count() for p in pubs.values()):
        time.sleep(0.1)
    print("unmatched topics: " + str([t for t, p in pubs.items() if not p.get_subscription_count()]), flush=True)
    t0 = time.monotonic()
    end = t0 + args.duration if args.duration > 0 else math.inf
    period = 1.0 / args.rate if args.rate > 0 else 0.0
    k = 0
    while not stop and time.monotonic() < end:
        if args.count and all(n >= args.count for n in sent.values()):
            break
        for t, pub in pubs.items():
            if not args.count or sent[t] < args.count:
                pub.publish(pool[t][sent[t] % POOL])
                sent[t] += 1
        k += 1
        if period:
            lag = t0 + k * period - time.monotonic()
            if lag > 0:
                time.sleep(lag)
        if k % 1000 == 0:
            write()
    write()
    print(json.dumps(sent), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
