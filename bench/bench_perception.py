"""Perception benchmark: 640x480 rgb8 camera at 30 Hz -> perception_node (separate processes).

Reports image-stamp -> Observation-publish latency p50/p99 (Observation.latency, taken by the node
on the same clock as the publisher's stamp) and the share of it spent in the node's preprocessing +
encoder (Observation.compute_time) vs ROS transport (image hop + hand-off to the inference thread);
also stamp -> Observation received back here, skipped frames at 30 Hz, frames/s at saturation and the
node's RSS. The same is measured for the picture as a JPEG sensor_msgs/CompressedImage (image_transport=compressed:
decoding is part of the node's compute) under ``compressed_jpeg``. Writes out/bench/perception.json and
perception.png.

    python bench/bench_perception.py [--frames 600] [--rate 30]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common


def frame(h=480, w=640, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)


def _session(transport: str, args, checkpoint: str) -> dict | None:
    """One perception_node process fed at ``args.rate`` with raw Image or JPEG CompressedImage frames
    (the same picture; JPEG encoding is done once, before timing)."""
    import cv2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    from sakura_nexus.msg import Observation

    node = subprocess.Popen([sys.executable, "-m", "sakura_nexus.nodes.perception", "--ros-args",
                             "-p", f"checkpoint:={checkpoint}", "-p", "max_image_age:=0.0",
                             "-p", f"image_transport:={transport}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    n = rclpy.create_node(f"bench_camera_{transport}")
    results: dict[int, tuple[float, float]] = {}

    def on_obs(o):
        t = time.time_ns()
        s = o.header.stamp.sec * 10**9 + o.header.stamp.nanosec
        results[s] = (o.latency, o.compute_time, (t - s) * 1e-9)

    n.create_subscription(Observation, "observation", on_obs, 100)
    ex = SingleThreadedExecutor()
    ex.add_node(n)
    threading.Thread(target=ex.spin, daemon=True).start()
    if transport == "compressed":
        pub = n.create_publisher(CompressedImage, "image_raw/compressed", qos_profile_sensor_data)
        img = CompressedImage(format="rgb8; jpeg compressed bgr8")
        img.data = cv2.imencode(".jpg", frame()[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    else:
        pub = n.create_publisher(Image, "image_raw", qos_profile_sensor_data)
        img = Image(height=480, width=640, encoding="rgb8", step=640 * 3)
        img.data = frame().tobytes()
    img.header.frame_id = "camera_optical_frame"

    def send():
        t = time.time_ns()
        img.header.stamp.sec, img.header.stamp.nanosec = divmod(t, 10**9)
        pub.publish(img)
        return t

    try:
        # wait for the node to come up (discovery + model load)
        deadline = time.monotonic() + 60
        while not results and time.monotonic() < deadline:
            send()
            time.sleep(0.2)
        if not results:
            print(f"perception node ({transport}) did not answer", file=sys.stderr)
            return None
        time.sleep(1.0)
        results.clear()
        sent = []
        period = 1.0 / args.rate
        t_next = time.monotonic()
        for _ in range(args.frames):
            sent.append(send())
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
        time.sleep(0.5)
        rss = common.rss_mb(node.pid)
        got = [results[s] for s in sent if s in results]
        # saturation: publish back-to-back (the node skips what it cannot take: latest frame wins)
        results.clear()
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.saturation_seconds:
            send()
            time.sleep(0.001)
        time.sleep(0.3)
        sat_fps = len(results) / args.saturation_seconds
        return {"sent": sent, "got": got, "rss": rss, "sat_fps": sat_fps, "bytes_per_frame": len(img.data)}
    finally:
        node.send_signal(2)
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()
        ex.shutdown()
        n.destroy_node()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--saturation-seconds", type=float, default=5.0)
    args = ap.parse_args(argv)

    import rclpy


    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    checkpoint = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bench_enc_{os.getpid()}.bin")
    import torch

    from sakura_nexus.models.encoder import ConvEncoder, encoder_to_bytes

    torch.manual_seed(0)
    with open(checkpoint, "wb") as f:
        f.write(encoder_to_bytes(ConvEncoder()))
    rclpy.init()
    raw = _session("raw", args, checkpoint)
    comp_run = _session("compressed", args, checkpoint)
    rclpy.try_shutdown()
    os.unlink(checkpoint)
    if raw is None or comp_run is None:
        return 1
    sent, got, rss, sat_fps = raw["sent"], raw["got"], raw["rss"], raw["sat_fps"]
    lat = [g[0] for g in got]  # image stamp -> Observation publish (node clock = this clock)
    comp = [g[1] for g in got]
    received = [g[2] for g in got]  # ... -> Observation received here (one more hop)

    lat_s, comp_s = common.summary_ms(lat), common.summary_ms(comp)
    transport = [g[0] - g[1] for g in got]
    data = {
        "what": "640x480 rgb8 camera -> perception_node -> Observation, separate processes, Fast DDS SHM profile",
        "rate_hz": args.rate, "frames_sent": len(sent), "observations": len(got),
        "skipped_frames": len(sent) - len(got),
        "latency_stamp_to_observation_publish": lat_s,
        "latency_stamp_to_observation_received": common.summary_ms(received),
        "compute_preprocess_encoder": comp_s,
        "transport": common.summary_ms(transport),
        "transport_share_of_total_p50": float(np.median(transport) / np.median(lat)) if lat else None,
        "transport_share_of_total_mean": float(np.mean(transport) / np.mean(lat)) if lat else None,
        "saturation_fps": sat_fps,
        "node_rss_mb": rss,
        "targets": {"p99_ms": 8.0, "transport_share": 0.25, "skipped_frames": 0},
    }
    cg = comp_run["got"]
    data["compressed_jpeg"] = {
        "what": "the same 640x480 picture as JPEG (quality 90) sensor_msgs/CompressedImage, image_transport=compressed",
        "bytes_per_frame": comp_run["bytes_per_frame"], "raw_bytes_per_frame": raw["bytes_per_frame"],
        "frames_sent": len(comp_run["sent"]), "observations": len(cg),
        "skipped_frames": len(comp_run["sent"]) - len(cg),
        "latency_stamp_to_observation_publish": common.summary_ms([g[0] for g in cg]),
        "compute_decode_preprocess_encoder": common.summary_ms([g[1] for g in cg]),
        "saturation_fps": comp_run["sat_fps"], "node_rss_mb": comp_run["rss"],
    }
    common.write("perception", data)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
        ax[0].hist(np.array(lat) * 1e3, bins=50, alpha=0.7, label="stamp -> Observation")
        ax[0].hist(np.array(comp) * 1e3, bins=50, alpha=0.7, label="preprocess + encoder")
        ax[0].axvline(8.0, color="r", ls="--", label="p99 target")
        ax[0].set_xlabel("ms")
        ax[0].legend()
        ax[1].plot(np.array(lat) * 1e3, lw=0.7)
        ax[1].set_xlabel("frame")
        ax[1].set_ylabel("latency ms")
        fig.suptitle(f"perception: p50 {lat_s['p50_ms']:.2f} ms, p99 {lat_s['p99_ms']:.2f} ms, "
                     f"{len(sent) - len(got)} skipped @ {args.rate:g} Hz")
        fig.tight_layout()
        fig.savefig(common.out_dir() / "perception.png", dpi=100)
    except Exception as e:  # noqa: BLE001
        print(f"plot failed: {e}")
    print({k: data[k] for k in ("observations", "skipped_frames", "saturation_fps", "node_rss_mb")})
    print("latency", lat_s)
    print("compute", comp_s)
    c = data["compressed_jpeg"]
    print("compressed latency", c["latency_stamp_to_observation_publish"])
    print("compressed compute", c["compute_decode_preprocess_encoder"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
