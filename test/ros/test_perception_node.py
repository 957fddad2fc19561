"""perception_node as a separate process: encodings, undistortion, overrides, fuzzing, live
parameters and encoder hot-swap, through real DDS."""

import hashlib
import random
import time

import cv2
import numpy as np
import pytest
from helpers import NodeProcess, diag_values, signed_update, wait_for

pytestmark = pytest.mark.ros

# Tolerance for "same embedding as the rgb8 frame": the embedding is layer-normalised (entries ~N(0,1));
# 16UC1/32FC1 depth quantise grey levels by <= 1/255, which moves entries by ~1e-3. 0.02 is 20x that
# and still far below the distance between embeddings of different images (checked below: > 0.1).
EMB_TOL = 0.02


@pytest.fixture(scope="module")
def encoder_files(tmp_path_factory):
    import torch

    from sakura_nexus.models.encoder import ConvEncoder, encoder_to_bytes

    d = tmp_path_factory.mktemp("enc")
    torch.manual_seed(1)
    v1 = ConvEncoder(version=1)
    (d / "v1.bin").write_bytes(encoder_to_bytes(v1))
    torch.manual_seed(2)
    v2 = encoder_to_bytes(ConvEncoder(), version=2)
    return d / "v1.bin", v2


def _scene(h=240, w=320, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def _image(arr: np.ndarray, encoding: str, stamp_ns: int, pad: int = 0, bigendian=False):
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.header.frame_id = "camera_optical_frame"
    msg.height, msg.width = arr.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = int(bigendian)
    rows = np.ascontiguousarray(arr).reshape(arr.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.hstack([rows, np.zeros((rows.shape[0], pad), np.uint8)])
    msg.step = rows.shape[1]
    msg.data = rows.tobytes()
    return msg


class Rig:
    def __init__(self, ros_node, params, name="perception_node"):
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image

        from sakura_nexus.msg import ModelUpdate, Observation

        self.ros = ros_node
        self.name = name
        rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.img_pub = ros_node.create_publisher(Image, "image_raw", rel)
        self.info_pub = ros_node.create_publisher(CameraInfo, "camera_info", rel)
        self.model_pub = ros_node.create_publisher(ModelUpdate, "model_update", QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.obs = ros_node.collect(Observation, "observation", 100)
        self.proc = NodeProcess("perception", {"sensor_reliability": "reliable", "max_image_age": 0.0, **params})
        self._t = time.time_ns()

    def stamp(self):
        # unique, increasing and never ahead of the wall clock (the node drops stamps > 1 s ahead of
        # its clock as a foreign clock: a burst of fuzz frames must not drift into that)
        self._t = max(self._t + 1_000_000, time.time_ns())
        return self._t

    def embed(self, arr, encoding="rgb8", **kw):
        """Publish one frame and return the Observation for it (matched by stamp)."""
        s = self.stamp()
        msg = _image(arr, encoding, s, **kw)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.img_pub.publish(msg)
            if wait_for(lambda: any(self._ns(o) == s for o in self.obs), 1.0):
                return next(o for o in self.obs if self._ns(o) == s)
        raise AssertionError(f"no observation for stamp {s}; node output:\n{self.proc.output()[-3000:]}")

    @staticmethod
    def _ns(o):
        return o.header.stamp.sec * 10**9 + o.header.stamp.nanosec

    def diagnostics(self):
        from diagnostic_msgs.msg import DiagnosticArray

        got = self.ros.collect(DiagnosticArray, "/diagnostics", 10)
        assert wait_for(lambda: any(self.name in s.name for a in got for s in a.status), 5)
        st = [s for a in got for s in a.status if self.name in s.name][-1]
        return {kv.key: kv.value for kv in st.values}


def test_every_encoding_gives_the_rgb8_embedding(ros_node, encoder_files):
    rig = Rig(ros_node, {"checkpoint": str(encoder_files[0]), "undistort": False, "depth_max": 10.0})
    try:
        rgb = _scene()
        ref = np.array(rig.embed(rgb).embedding)
        other = np.array(rig.embed(_scene(seed=5)).embedding)
        assert np.abs(other - ref).max() > 5 * EMB_TOL  # the tolerance separates different images
        h, w = rgb.shape[:2]
        colour = {
            "bgr8": (rgb[:, :, ::-1], {}), "rgba8": (np.dstack([rgb, np.full((h, w), 255, np.uint8)]), {}),
            "bgra8": (np.dstack([rgb[:, :, ::-1], np.full((h, w), 9, np.uint8)]), {"pad": 64}),
            "rgb8": (rgb, {"pad": 12}),
        }
        for enc, (arr, kw) in colour.items():
            got = np.array(rig.embed(arr, enc, **kw).embedding)
            assert np.abs(got - ref).max() < EMB_TOL, enc
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        gref = np.array(rig.embed(np.dstack([grey] * 3)).embedding)
        mono = {
            "mono8": (grey, {"pad": 3}), "mono16": ((grey.astype(np.uint16) * 257).astype(">u2"),
                                                    {"bigendian": True, "pad": 4}),
            "16UC1": (np.rint(grey / 255.0 * 10000).astype("<u2"), {}),
            "32FC1": ((grey / 255.0 * 10.0).astype("<f4"), {"pad": 8}),
        }
        for enc, (arr, kw) in mono.items():
            got = np.array(rig.embed(arr, enc, **kw).embedding)
            assert np.abs(got - gref).max() < EMB_TOL, enc
        # mislabelled driver: bgr8 bytes announced as rgb8; the override restores the colours
        wrong = np.array(rig.embed(rgb[:, :, ::-1], "rgb8").embedding)
        assert np.abs(wrong - ref).max() > 5 * EMB_TOL
        res = rig.ros.set_params("perception_node", {"input_encoding": "bgr8"})
        assert res[0].successful
        fixed = np.array(rig.embed(rgb[:, :, ::-1], "rgb8").embedding)
        assert np.abs(fixed - ref).max() < EMB_TOL
    finally:
        assert rig.proc.stop() == 0


def test_camera_info_undistortion_is_applied(ros_node, encoder_files):
    from sensor_msgs.msg import CameraInfo

    rig = Rig(ros_node, {"checkpoint": str(encoder_files[0])})
    try:
        rgb = _scene()
        plain = np.array(rig.embed(rgb).embedding)
        info = CameraInfo(width=320, height=240, distortion_model="plumb_bob")
        info.k = [250.0, 0.0, 160.0, 0.0, 250.0, 120.0, 0.0, 0.0, 1.0]
        info.d = [-0.45, 0.25, 0.0, 0.0, 0.0]
        rig.info_pub.publish(info)
        assert wait_for(lambda: "undistortion maps updated" in rig.proc.output(), 10)
        undist = np.array(rig.embed(rgb).embedding)
        expected = cv2.remap(rgb, *cv2.initUndistortRectifyMap(np.array(info.k).reshape(3, 3), np.array(info.d),
                                                                None, np.array(info.k).reshape(3, 3), (320, 240),
                                                                cv2.CV_16SC2), cv2.INTER_LINEAR)
        info.d = [0.0] * 5
        rig.info_pub.publish(info)
        assert wait_for(lambda: rig.proc.output().count("undistortion maps updated") >= 2, 10)
        manual = np.array(rig.embed(expected).embedding)
        assert np.abs(undist - plain).max() > 5 * EMB_TOL  # it changed the input
        assert np.abs(undist - manual).max() < EMB_TOL  # ... exactly as the CameraInfo model says
    finally:
        rig.proc.stop()


def test_fuzzed_images_never_kill_the_node_and_are_all_counted(ros_node, encoder_files):
    # reliable + a deep reader history so every malformed message is delivered (the default, depth 1,
    # would let DDS overwrite unread ones before the node sees them: those are never "received")
    rig = Rig(ros_node, {"checkpoint": str(encoder_files[0]), "sensor_depth": 200})
    rng = random.Random(7)
    encodings = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "yuv422", "", "jpeg"]
    try:
        rig.embed(_scene())  # node up
        n_bad, valid_stamps = 0, []
        from sensor_msgs.msg import Image

        for i in range(2100):
            if i % 100 == 50:  # a valid frame between malformed ones must still be processed
                s = rig.stamp()
                valid_stamps.append(s)
                rig.img_pub.publish(_image(_scene(seed=i), "rgb8", s))
                time.sleep(0.05)
                continue
            m = Image()
            m.height, m.width = rng.choice([0, 1, 7, 240, 2**20]), rng.choice([0, 1, 5, 320, 2**20])
            m.encoding = rng.choice(encodings)
            m.step = max(0, rng.choice([0, 1, m.width, m.width * 3 + rng.randint(-3, 3), 2**31 - 1]))
            m.is_bigendian = rng.randint(0, 1)
            n = rng.choice([0, 1, 13, 1000, m.step * m.height - 1 if 0 < m.step * m.height < 10**6 else 5])
            data = bytes(rng.getrandbits(8) for _ in range(min(n, 2000)))
            if m.step * m.height == len(data) and m.encoding in encodings[:8]:
                data += b"\x00"  # keep it malformed: the size is inconsistent
            m.data = data
            rig.img_pub.publish(m)
            n_bad += 1
            time.sleep(0.001)
        assert wait_for(lambda: sum(1 for o in rig.obs if rig._ns(o) in valid_stamps) >= len(valid_stamps) - 2, 20)
        rig.embed(_scene(seed=99))  # still alive and processing
        assert rig.proc.alive()
        d = rig.diagnostics()
        # every malformed message is counted once; a valid frame the rig re-sent (no observation within 1 s on
        # a loaded machine) is dropped as a duplicate, which is not one of ours
        dropped = sum(int(v) for k, v in d.items() if k.startswith("dropped_") and k != "dropped_duplicate_image")
        assert dropped == n_bad, d
    finally:
        rig.proc.stop()


def _compressed(arr: np.ndarray, stamp_ns: int, ext: str = ".png", fmt: str | None = None, data: bytes | None = None):
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 10**9)
    msg.format = fmt if fmt is not None else ("png" if ext == ".png" else "bgr8; jpeg compressed bgr8")
    if data is None:
        ok, buf = cv2.imencode(ext, arr[:, :, ::-1])
        data = buf.tobytes()
    msg.data = data
    return msg


def _header_claims(data: bytes, w: int, h: int) -> bytes:
    """A valid PNG / JPEG whose header announces w x h pixels."""
    import zlib

    b = bytearray(data)
    if data.startswith(b"\x89PNG"):
        b[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
        b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")
    else:
        i = data.index(b"\xff\xc0")
        b[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(b)


def test_compressed_images_embed_like_raw_and_fuzzed_ones_are_all_counted(ros_node, encoder_files):
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    rig = Rig(ros_node, {"checkpoint": str(encoder_files[0]), "undistort": False, "image_transport": "compressed",
                         "sensor_depth": 200})
    pub = ros_node.create_publisher(CompressedImage, "image_raw/compressed",
                                    QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))

    def embed(msg):
        s = rig._ns(msg)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pub.publish(msg)
            if wait_for(lambda: any(rig._ns(o) == s for o in rig.obs), 1.0):
                return np.array(next(o for o in rig.obs if rig._ns(o) == s).embedding)
        raise AssertionError(f"no observation for stamp {s}; node output:\n{rig.proc.output()[-3000:]}")

    try:
        rgb = _scene()
        png = embed(_compressed(rgb, rig.stamp()))
        jpg = embed(_compressed(rgb, rig.stamp(), ".jpg"))
        other = embed(_compressed(_scene(seed=5), rig.stamp()))
        assert "image_raw/compressed QoS" in rig.proc.output()
        assert np.abs(other - png).max() > 5 * EMB_TOL
        assert np.abs(jpg - png).max() < 5 * EMB_TOL  # lossy, but the same picture
        before = rig.diagnostics()
        base = sum(int(v) for k, v in before.items() if k.startswith("dropped_"))
        rng = random.Random(11)
        ok_png = _compressed(rgb, 0).data.tobytes()
        ok_jpg = _compressed(rgb, 0, ".jpg").data.tobytes()
        n_bad, valid = 0, []
        for i in range(600):
            if i % 60 == 30:
                s = rig.stamp()
                valid.append(s)
                pub.publish(_compressed(_scene(seed=i), s, ".jpg"))
                time.sleep(0.05)
                continue
            kind = i % 6
            if kind == 0:  # garbage bytes
                junk = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 50, 900])))
                m = _compressed(rgb, rig.stamp(), data=junk)
            elif kind == 1:  # wrong format string for the bytes
                m = _compressed(rgb, rig.stamp(), fmt=rng.choice(["jpeg", "rgb8", "", "16UC1; compressedDepth png",
                                                                   "h264"]), data=ok_png)
            elif kind in (2, 3):  # huge dimensions in a valid header
                base_data = ok_png if kind == 2 else ok_jpg
                huge = _header_claims(base_data, rng.choice([60000, 5000, 65535]), rng.choice([60000, 4000]))
                m = _compressed(rgb, rig.stamp(), ".png" if kind == 2 else ".jpg", data=huge)
            elif kind == 4:  # png bytes cut in the header
                m = _compressed(rgb, rig.stamp(), data=ok_png[:rng.randint(8, 23)])
            else:  # jpeg without a frame header
                no_sof = b"\xff\xd8\x00" + bytes(rng.getrandbits(8) for _ in range(40))
                m = _compressed(rgb, rig.stamp(), ".jpg", data=no_sof)
            pub.publish(m)
            n_bad += 1
            time.sleep(0.001)
        assert wait_for(lambda: sum(1 for o in rig.obs if rig._ns(o) in valid) >= len(valid) - 1, 20)
        embed(_compressed(_scene(seed=99), rig.stamp()))  # still alive and processing
        assert rig.proc.alive()
        d = rig.diagnostics()
        dropped = sum(int(v) for k, v in d.items() if k.startswith("dropped_"))
        assert dropped - base == n_bad, d
        assert int(d.get("dropped_size", 0)) >= 150  # the 60000x60000 headers were refused as too large
    finally:
        ros_node.destroy_publisher(pub)
        assert rig.proc.stop() == 0


def test_live_parameters_and_hot_swap(ros_node, encoder_files):
    from sakura_nexus.federated.common.signing import Signer, generate_keys

    keydir = encoder_files[0].parent / "keys_hot_swap"
    signer, trusted = Signer.load(generate_keys(str(keydir))[0]), str(keydir / "fleet_keys.pub")
    attacker = Signer.load(generate_keys(str(keydir / "attacker"))[0])
    rig = Rig(ros_node, {"checkpoint": str(encoder_files[0]), "trusted_keys": trusted})
    try:
        rgb = _scene()
        a = rig.embed(rgb)
        assert a.model_version == 1
        res = rig.ros.set_params("perception_node", {"input_width": 96, "input_height": 96})
        assert all(r.successful for r in res)
        b = rig.embed(rgb)
        assert len(b.embedding) == len(a.embedding)
        assert np.abs(np.array(b.embedding) - np.array(a.embedding)).max() > 1e-3  # new size in effect
        bad = rig.ros.set_params("perception_node", {"input_width": 5})
        assert not bad[0].successful and "range" in bad[0].reason
        bad = rig.ros.set_params("perception_node", {"device": "cuda"})
        assert not bad[0].successful  # read-only
        # rate limit: 30 Hz in, <= 2 Hz out
        rig.ros.set_params("perception_node", {"rate_limit": 2.0})
        n0 = len(rig.obs)
        for _ in range(60):
            rig.img_pub.publish(_image(rgb, "rgb8", rig.stamp() + 23_333_333))
            rig._t += 23_333_333
            time.sleep(1 / 30)
        time.sleep(0.5)
        assert 1 <= len(rig.obs) - n0 <= 5
        rig.ros.set_params("perception_node", {"rate_limit": 0.0})

        # unsigned and foreign-key updates are refused, the encoder kept
        payload = encoder_files[1]
        rig.model_pub.publish(signed_update(None, "encoder", 2, payload))
        assert wait_for(lambda: "dropped input (model_update_unsigned)" in rig.proc.output(), 10)
        rig.model_pub.publish(signed_update(attacker, "encoder", 2, payload))
        assert wait_for(lambda: "dropped input (model_update_unknown_key)" in rig.proc.output(), 10)
        assert rig.embed(rgb).model_version == 1
        # hot swap mid-stream (signed): every frame gets an observation, the version switches v1 -> v2
        stamps, versions = [], []
        for i in range(30):
            if i == 10:
                rig.model_pub.publish(signed_update(signer, "encoder", 2, payload))
            o = rig.embed(_scene(seed=i % 3))
            stamps.append(o.header.stamp)
            versions.append(o.model_version)
            time.sleep(0.03)
        assert versions[0] == 1 and versions[-1] == 2
        first2 = versions.index(2)
        assert all(v == 2 for v in versions[first2:])
        # a corrupt update (bad sha) is refused; the old model keeps running
        rig.model_pub.publish(signed_update(signer, "encoder", 3, payload,
                                            tamper={"sha256": hashlib.sha256(b"other").hexdigest()}))
        assert wait_for(lambda: "dropped input (model_update_sha256_mismatch)" in rig.proc.output(), 10)
        assert rig.embed(rgb).model_version == 2
    finally:
        rig.proc.stop()


def test_future_stamps_clock_jumps_and_backward_camera_stamps_never_stall_it(ros_node, encoder_files):
    """Sim time: one frame stamped on the wall clock, a sim reset (clock back), a clock step forward and a
    burst of frames stamped 100 s in the past (a second camera driver on an old timeline): each is dropped or
    reset and counted, and observations resume within 1 s of sane input (with the rate limiter on, whose
    reference a bad stamp must not become)."""
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from sakura_nexus.msg import Observation

    diags = ros_node.collect(DiagnosticArray, "/diagnostics", 10)
    clock_pub = ros_node.create_publisher(Clock, "/clock", 10)
    rel = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    img_pub = ros_node.create_publisher(Image, "image_raw", rel)
    received = []  # (monotonic receive time, stamp s)
    ros_node.create_subscription(Observation, "observation", lambda m: received.append(
        (time.monotonic(), m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)), 100)
    proc = NodeProcess("perception", {"checkpoint": str(encoder_files[0]), "use_sim_time": True,
                                      "sensor_reliability": "reliable", "sensor_depth": 5, "rate_limit": 10.0})
    frame = _scene(120, 160)

    def stamp(t):
        return Time(sec=int(round(t * 1e9)) // 10**9, nanosec=int(round(t * 1e9)) % 10**9)

    def image(t):
        m = _image(frame, "rgb8", 0)
        m.header.stamp = stamp(t)
        img_pub.publish(m)

    def run(t, seconds, camera_offset=0.0):
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            t += 1 / 30
            clock_pub.publish(Clock(clock=stamp(t)))
            image(t + camera_offset)
            time.sleep(1 / 30)
        return t

    def resumed_after(t_wall, below=None, above=None):
        return next((rx - t_wall for rx, st in list(received) if rx > t_wall and (below is None or st < below)
                     and (above is None or st > above)), None)

    try:
        assert wait_for(lambda: ros_node.count_subscribers("image_raw") > 0, 30), proc.output()
        t = 100.0
        for _ in range(60):  # until the node is configured and publishing
            t = run(t, 0.5)
            if received:
                break
        assert received, proc.output()[-2000:]
        # 1. one frame on the wall clock (~1.7e9 s) while the graph runs on sim time
        image(time.time())
        t_fault = time.monotonic()
        time.sleep(0.3)  # latest frame wins: the next frame must not replace it before inference takes it
        t = run(t, 1.5)
        dt1 = resumed_after(t_fault + 0.05, below=1e6)
        assert dt1 is not None and dt1 < 1.0, (dt1, proc.output()[-2000:])
        assert all(st < 1e6 for _, st in received), "the foreign-clock frame was published"
        # 2. sim reset: the clock (and the camera) go back from ~105 s to 5 s
        t_fault = time.monotonic()
        t = run(5.0, 1.5)
        dt2 = resumed_after(t_fault, below=50.0)
        assert dt2 is not None and dt2 < 1.0, (dt2, proc.output()[-2000:])
        # 3. the clock steps forward by 1000 s
        t_fault = time.monotonic()
        t = run(t + 1000.0, 1.5)
        dt3 = resumed_after(t_fault, above=1000.0)
        assert dt3 is not None and dt3 < 1.0, (dt3, proc.output()[-2000:])
        # 4. camera stamps 100 s behind the node's clock for 1 s, then sane again
        t = run(t, 1.0, camera_offset=-100.0)
        t_fault = time.monotonic()
        run(t, 1.5)
        dt4 = resumed_after(t_fault, above=t)
        assert dt4 is not None and dt4 < 1.0, (dt4, proc.output()[-2000:])
        print(f"\nPERCEPTION: observations resumed {dt1 * 1e3:.0f} / {dt2 * 1e3:.0f} / {dt3 * 1e3:.0f} / "
              f"{dt4 * 1e3:.0f} ms after the foreign stamp / clock back / clock forward / old camera stamps")

        def counted():
            kv = diag_values(diags, "perception_node")
            return (kv.get("dropped_future_stamp_image") == "1" and int(kv.get("clock_jumps_backward", 0)) >= 1
                    and int(kv.get("clock_jumps_forward", 0)) >= 1
                    and int(kv.get("dropped_out_of_order_image", 0)) + int(kv.get("dropped_stale", 0)) >= 10)

        assert wait_for(counted, 5), sorted(diag_values(diags, "perception_node").items())
    finally:
        proc.stop()
