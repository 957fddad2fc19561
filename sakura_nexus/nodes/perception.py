"""perception_node: camera images -> Observation (embedding + quality), latest frame wins.

``image_transport`` selects raw ``sensor_msgs/Image`` on ``image_raw`` or JPEG/PNG
``sensor_msgs/CompressedImage`` on ``image_raw/compressed`` (the resolved, remapped image topic +
``/compressed``, as image_transport names it); both go through the same mailbox, counters and drops.

Thin adapter: decoding and preprocessing live in :mod:`sakura_nexus.vision`, the encoder in
:mod:`sakura_nexus.models`. The image callback only stores the newest frame in a one-slot mailbox;
a dedicated inference thread (not an executor thread, so parameter services stay responsive)
takes the newest frame, skipping and counting any frame that was overwritten before it was used.
"""

from __future__ import annotations

import math
import threading
import time

import cv2
import numpy as np
import torch
from rclpy.lifecycle import State, TransitionCallbackReturn
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from sakura_nexus import vision
from sakura_nexus.models.checkpoint import load_encoder  # manifest-verified, like every loader
from sakura_nexus.models.encoder import ENCODER_ID, encoder_from_bytes, inference_encoder
from sakura_nexus.models.serialization import PayloadError
from sakura_nexus.msg import ModelUpdate, Observation
from sakura_nexus.params import PERCEPTION
from sakura_nexus.paths import models_dir
from sakura_nexus.ros.node import ERROR, OK, WARN, NexusNode, run
from sakura_nexus.ros.qos import describe, model_qos, sensor_qos, state_qos


class _AnySize(torch.nn.Module):
    """Input sizes other than the encoder's native one: pool the conv features to the native grid
    before the linear layer (the architecture is otherwise unchanged, so weights load as they are)."""

    def __init__(self, enc):
        super().__init__()
        self.enc = enc
        self.grid = enc.image_size // 16

    def forward(self, x):
        f = torch.nn.functional.adaptive_avg_pool2d(self.enc.conv(x - 0.5), self.grid)
        return self.enc.norm(self.enc.fc(f.flatten(1)))


class _Encoder:
    """An encoder ready for inference at a given input size (frozen TorchScript, 1 thread)."""

    def __init__(self, enc, version: int):
        for prm in enc.parameters():
            prm.requires_grad_(False)
        self.module = enc.eval()
        self.version = version
        self._compiled: dict[tuple[int, int], torch.nn.Module] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[-2:]
        fn = self._compiled.get((h, w))
        if fn is None:
            fn = self._compiled[(h, w)] = self._compile(h, w)
        with torch.inference_mode():
            return fn(torch.from_numpy(x)[None]).numpy()[0]

    def _compile(self, h: int, w: int) -> torch.nn.Module:
        native = self.module.image_size
        if (h, w) == (native, native):
            return inference_encoder(self.module, "frozen")
        m = _AnySize(self.module).eval()
        with torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(m, torch.zeros(1, 3, h, w)))


class PerceptionNode(NexusNode):
    def __init__(self, **kwargs):
        super().__init__("perception_node", PERCEPTION, **kwargs)
        self._slot: Image | CompressedImage | None = None
        self._slot_lock = threading.Condition()
        self.run_while_active("inference", self._loop, wake=self._wake, join_timeout=2.0)
        self._encoder: _Encoder | None = None
        self._undistort = vision.Undistorter()
        self._cfg = vision.PreprocessConfig()
        self._last_publish = -1e18   # stamp of the last published frame (the rate limiter's reference)
        self._last_stamp: float | None = None  # stamp of the newest frame taken (duplicates, order)
        self.diag.track_rate("received", "input_rate_hz")
        self.diag.track_rate("published", "output_rate_hz")
        self._pub = None
        self.params.on_change(lambda _changed: self._apply_params())
        self._apply_params()

    # --- parameters -------------------------------------------------------------------------
    def _apply_params(self) -> None:
        p = self.params
        crop = tuple(float(v) for v in p.crop)
        self._cfg = vision.PreprocessConfig(
            width=p.input_width, height=p.input_height, crop=crop if len(crop) == 4 else (0, 0, 1, 1),
            mean=tuple(p.normalize_mean[:3]), std=tuple(v if v else 1.0 for v in p.normalize_std[:3]),
            blur_ref=p.quality_blur_ref)

    # --- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.params
        torch.set_num_threads(p.threads)
        cv2.setNumThreads(p.threads)  # OpenCV's pool would otherwise oversubscribe the 2 cores
        if p.device == "cuda" and not torch.cuda.is_available():
            self.get_logger().warning("device=cuda requested but CUDA is not available: using cpu")
        try:
            enc = load_encoder(p.checkpoint)
        except Exception as e:  # noqa: BLE001 - report any load failure as a failed configure
            self.get_logger().error(f"cannot load encoder checkpoint {p.checkpoint!r}: {e}")
            return TransitionCallbackReturn.FAILURE
        self._encoder = _Encoder(enc, p.encoder_version or enc.version)
        self._range_head = None
        if p.range_head != "none":
            from sakura_nexus.models.obstacles import load_range_head

            try:
                self._range_head = load_range_head(p.range_head or models_dir() / "range_head.bin")
            except Exception as e:  # noqa: BLE001 - the embedding still works without it
                self.get_logger().warning(f"no range head ({e}): Observation.free_range stays empty")
        self.diag.set("range_head", "loaded" if self._range_head is not None else "off")
        self._pub = self.create_lifecycle_publisher(Observation, "observation", state_qos())
        sqos = sensor_qos(p.sensor_reliability, p.sensor_depth)
        if p.image_transport == "compressed":  # image_transport's naming: <base topic>/compressed
            image_topic = self.resolve_topic_name("image_raw") + "/compressed"
            self.create_subscription(CompressedImage, image_topic, self._on_compressed, sqos)
        else:
            image_topic = "image_raw"
            self.create_subscription(Image, image_topic, self._on_image, sqos)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, sensor_qos(p.sensor_reliability))
        self.create_subscription(ModelUpdate, "model_update", self._on_model_update, model_qos())
        self.get_logger().info(f"encoder {ENCODER_ID} v{self._encoder.version}; {image_topic} QoS {describe(sqos)}")
        self.diag.set("encoder_version", self._encoder.version)
        self.diag.level_from(self._level)
        self.watch_clock(self._reset_time_state)
        return TransitionCallbackReturn.SUCCESS

    def _reset_time_state(self) -> None:
        self._last_publish = -1e18
        self._last_stamp = None

    def _wake(self) -> None:
        with self._slot_lock:
            self._slot_lock.notify_all()

    def _level(self):
        c = self.diag.counters
        if self._encoder is None:
            return ERROR, "no encoder"
        dropped = sum(v for k, v in c.items() if k.startswith("dropped_"))
        if dropped and dropped >= c.get("published", 0):
            return WARN, f"{dropped} frames dropped, {c.get('published', 0)} published"
        return OK, f"encoder v{self._encoder.version}, {c.get('published', 0)} observations"

    # --- inputs -----------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        self.diag.count("received")
        try:  # cheap structural check here, so every malformed frame is counted, even if superseded
            vision.check(self.params.input_encoding or msg.encoding, msg.height, msg.width, msg.step,
                         len(msg.data))
        except vision.ImageError as e:
            self.drop(e.reason, str(e))
            return
        self._hand_off(msg)

    def _on_compressed(self, msg: CompressedImage) -> None:
        self.diag.count("received")
        try:  # header-only check (format, magic bytes, announced size): nothing is decoded here
            vision.compressed_header(msg.format, msg.data, self.params.max_image_pixels)
        except vision.ImageError as e:
            self.drop(e.reason, str(e))
            return
        self._hand_off(msg)

    def _hand_off(self, msg) -> None:
        """To the inference thread: the latest frame wins (one that was still waiting is counted)."""
        with self._slot_lock:
            if self._slot is not None:
                self.diag.count("skipped_latest_wins")
            self._slot = msg
            self._slot_lock.notify()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        k, d = np.asarray(msg.k, np.float64), np.asarray(msg.d, np.float64)
        if not (np.all(np.isfinite(k)) and np.all(np.isfinite(d))):
            self.drop("nan_camera_info")
            return
        if msg.width * msg.height > self.params.max_image_pixels or d.size > 14 \
                or msg.distortion_model not in ("", "plumb_bob", "rational_polynomial", "equidistant"):
            self.drop("bad_camera_info", f"{msg.width}x{msg.height} px (at most {self.params.max_image_pixels}), "
                                         f"{d.size} distortion coefficients, model '{msg.distortion_model}'")
            return
        try:
            if self._undistort.update(msg.width, msg.height, list(msg.k), list(msg.d), msg.distortion_model):
                self.get_logger().info(f"undistortion maps updated ({msg.distortion_model}, "
                                       f"{'active' if self._undistort.active else 'no distortion'})")
        except Exception as e:  # noqa: BLE001 - a broken CameraInfo must not kill the node
            self.drop("camera_info", str(e))

    def _on_model_update(self, msg: ModelUpdate) -> None:
        current = self._encoder
        if current is None:
            self.ignore("no_encoder")
            return
        if not self.accept_model_update(msg, "encoder", current.version if current else -1):
            return
        try:
            enc = encoder_from_bytes(bytes(msg.payload), expected_sha256=msg.sha256,
                                     like=current.module if current else None)
            new = _Encoder(enc, int(msg.version))
            new(np.zeros((3, self._cfg.height, self._cfg.width), np.float32))  # compile before the swap
        except (PayloadError, ValueError, RuntimeError, KeyError) as e:
            self.drop("model_update_invalid", f"encoder update v{msg.version}: {e}; the current encoder is kept",
                      level="error")
            return
        self._encoder = new  # atomic reference swap: the next frame uses it, the current one finishes
        self.diag.count("model_update_applied")
        self.diag.set("encoder_version", new.version)
        self.get_logger().info(f"encoder hot-swapped to v{new.version}")

    # --- inference thread -------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._slot_lock:
                while self._slot is None and not self._stop.is_set():
                    self._slot_lock.wait(0.5)
                msg, self._slot = self._slot, None
            if msg is not None:
                try:
                    self._process(msg)
                except Exception as e:  # noqa: BLE001 - never let one frame kill the thread
                    self.drop("error", repr(e))

    def _process(self, msg: Image | CompressedImage) -> None:
        p = self.params
        t0 = time.perf_counter()
        now = self.checked_now()  # a backward jump resets the rate limiter's reference
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if self.future_stamp(stamp, now, "image"):  # a foreign clock must not become the reference
            return
        last = self._last_stamp
        if last is not None and stamp <= last:
            if last - stamp > p.max_clock_offset and abs(now - stamp) <= p.max_clock_offset:
                # the camera's stamps stepped back onto the node's own clock (a driver restarted on it):
                # the old timeline is the foreign one now, so the references follow the camera
                self.diag.count("image_stamp_jumps_backward")
                self.log_throttled("image_stamp_back", f"image stamps jumped back {last - stamp:.3f} s onto the "
                                   "node's clock: rate limiter and frame order reset", "info")
                self._last_publish = -1e18
            else:
                self.drop("duplicate_image" if stamp == last else "out_of_order_image",
                          f"stamp {stamp:.3f} s, the newest frame taken was {last:.3f} s")
                return
        self._last_stamp = stamp
        if p.rate_limit > 0 and stamp - self._last_publish < 1.0 / p.rate_limit - 1e-6:
            self.diag.count("skipped_rate_limit")
            return
        if p.max_image_age > 0 and now - stamp > p.max_image_age:
            self.drop("stale", f"image {now - stamp:.3f} s old")
            return
        try:
            if isinstance(msg, CompressedImage):
                rgb = vision.decode_compressed(msg.format, msg.data, p.max_image_pixels)
            else:
                rgb = vision.decode(p.input_encoding or msg.encoding, msg.height, msg.width, msg.step,
                                    bool(msg.is_bigendian), msg.data, depth_max=p.depth_max)
            if p.undistort:
                rgb = self._undistort.apply(rgb)
        except vision.ImageError as e:
            self.drop(e.reason, str(e))
            return
        cfg = self._cfg
        small = vision.crop_resize(rgb, cfg)
        q = vision.quality(small, cfg.blur_ref)
        if q < p.quality_min:
            self.drop("quality", f"quality {q:.2f} < {p.quality_min}")
            return
        encoder = self._encoder
        x = vision.normalise(small, cfg)
        emb = encoder(x)
        if not np.all(np.isfinite(emb)):
            self.drop("nan_embedding")
            return
        out = Observation()
        out.header = msg.header
        out.encoder_id = ENCODER_ID
        out.model_version = encoder.version
        out.embedding = emb.astype(np.float32)
        out.quality = q
        head = self._range_head
        if head is not None:
            ranges, unc = head.predict(torch.from_numpy(x)[None])
            if np.all(np.isfinite(ranges)) and math.isfinite(unc):
                rc = head.range_config
                out.free_range = ranges.astype(np.float32)
                out.free_range_fov, out.free_range_max, out.free_range_uncertainty = rc.hfov, rc.max_range, unc
            else:
                self.diag.count("nan_free_range")
        out.compute_time = time.perf_counter() - t0
        out.latency = self.get_clock().now().nanoseconds * 1e-9 - stamp
        self._pub.publish(out)
        self.diag.sample("latency_ms", out.latency * 1e3)  # mean / p99 over the last 300 frames
        self.diag.sample("inference_ms", out.compute_time * 1e3)
        self._last_publish = stamp
        self.diag.count("published")


def main(args=None) -> int:
    return run(PerceptionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
