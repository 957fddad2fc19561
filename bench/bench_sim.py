"""Simulation benchmark: MuJoCo physics steps/s, camera render ms/frame, sim_node real-time factor.

- physics: ``FactoryCell.step`` (diff-drive + per-step contact check) in 0.1 s chunks, steps/s;
- render: ``FactoryCell.render`` at 64x64, 128x128, 320x240 and 640x480, ms/frame (p50/p90);
- sim_node: a separate process pinned to one core (``taskset -c 0``) with real_time_factor 0
  (as fast as possible), 30 Hz camera; the achievable real-time factor is sim seconds of /clock per
  wall second, measured by a subscriber here; also whether real_time_factor 1 holds real time.

Writes JSON (default out/bench/sim.json) and a PNG next to it.

    python bench/bench_sim.py [OUT.json] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common


def bench_physics(seconds: float) -> dict:
    from sakura_nexus.sim import CellConfig, FactoryCell

    cell = FactoryCell(CellConfig(seed=0))
    rng = np.random.default_rng(0)
    steps, t0 = 0, time.perf_counter()
    per_call = round(0.1 / cell.cfg.timestep)
    while time.perf_counter() - t0 < seconds:
        r = cell.step(float(rng.uniform(-0.2, 0.6)), float(rng.uniform(-1.5, 1.5)), 0.1)
        steps += per_call
        if r.collided:
            cell.set_pose(*cell.sample_free_pose(rng, 0.3))
    dt = time.perf_counter() - t0
    cell.close()
    return {"steps_per_s": steps / dt, "timestep_s": cell.cfg.timestep, "sim_seconds_per_wall_s": steps / dt *
            cell.cfg.timestep}


def bench_render(frames: int) -> dict:
    from sakura_nexus.sim import CellConfig, FactoryCell

    cell = FactoryCell(CellConfig(seed=0))
    out = {}
    for w, h in [(64, 64), (128, 128), (320, 240), (640, 480)]:
        for _ in range(5):
            cell.render(w, h)
        ts = []
        for i in range(frames):
            cell.step(0.3, 0.5, 0.02)  # the scene changes between frames
            t = time.perf_counter()
            cell.render(w, h)
            ts.append(time.perf_counter() - t)
            if i % 50 == 49:
                cell.reset()
        out[f"{w}x{h}"] = common.summary_ms(ts)
    cell.close()
    return out


def _clock_rate(seconds: float, params: dict, pin: bool) -> dict:
    """Run sim_node with ``params``; sim seconds per wall second of /clock over ``seconds``."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    cmd = [sys.executable, "-m", "sakura_nexus.nodes.sim", "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    if pin and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    node = rclpy.create_node(f"bench_sim_{os.getpid()}")
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    clocks, frames = [], []
    node.create_subscription(Clock, "/clock", lambda m: clocks.append(
        (time.monotonic(), m.clock.sec + m.clock.nanosec * 1e-9)), 100)
    node.create_subscription(Image, "camera/image_raw", lambda m: frames.append(time.monotonic()),
                             qos_profile_sensor_data)
    try:
        deadline = time.monotonic() + 30
        while not clocks and time.monotonic() < deadline:
            ex.spin_once(timeout_sec=0.1)
        t_warm = time.monotonic() + 1.0
        while time.monotonic() < t_warm:
            ex.spin_once(timeout_sec=0.05)
        i0, f0 = len(clocks), len(frames)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        if len(clocks) - i0 < 2:
            return {"error": "no /clock received"}
        (w0, s0), (w1, s1) = clocks[i0], clocks[-1]
        return {"real_time_factor": (s1 - s0) / (w1 - w0), "camera_frames_per_wall_s": (len(frames) - f0) /
                (w1 - w0), "camera_frames_per_sim_s": (len(frames) - f0) / max(s1 - s0, 1e-9),
                "node_rss_mb": common.rss_mb(proc.pid)}
    finally:
        proc.send_signal(2)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()


def bench_node(seconds: float) -> dict:
    try:
        import rclpy
    except ImportError as e:
        return {"skipped": f"rclpy not importable: {e}"}
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    rclpy.init()
    try:
        out = {}
        for name, params in [
            ("max_rtf_320x240", {"real_time_factor": 0.0, "camera_rate": 30.0}),
            ("max_rtf_640x480", {"real_time_factor": 0.0, "camera_rate": 30.0, "camera_width": 640,
                                 "camera_height": 480}),
            ("rtf1_320x240", {"real_time_factor": 1.0, "camera_rate": 30.0}),
        ]:
            out[name] = _clock_rate(seconds, params, pin=True)
            print(name, json.dumps(out[name]))
        out["pinned_to"] = "taskset -c 0" if shutil.which("taskset") else "not pinned (no taskset)"
        return out
    finally:
        rclpy.try_shutdown()


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 3, figsize=(11, 3.2))
    axs[0].bar(["physics"], [data["physics"]["steps_per_s"]], color="tab:blue")
    axs[0].axhline(2000, color="r", ls="--", label="target 2000")
    axs[0].set_ylabel("steps / s")
    axs[0].legend()
    r = data["render"]
    names = list(r)
    axs[1].bar(names, [r[n]["p50_ms"] for n in names], yerr=[[0] * len(names), [r[n]["p90_ms"] - r[n]["p50_ms"]
                                                                                 for n in names]],
               color="tab:orange")
    axs[1].set_ylabel("render ms / frame (p50, p90)")
    node = {k: v for k, v in data.get("sim_node", {}).items() if isinstance(v, dict) and "real_time_factor" in v}
    axs[2].bar(list(node), [v["real_time_factor"] for v in node.values()], color="tab:green")
    axs[2].axhline(1.0, color="r", ls="--")
    axs[2].set_ylabel("sim_node real-time factor (1 core)")
    axs[2].tick_params(axis="x", labelsize=7)
    fig.suptitle("sakura_nexus sim (MuJoCo, EGL offscreen)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=str(common.out_dir() / "sim.json"))
    ap.add_argument("--seconds", type=float, default=8.0, help="measurement time per sim_node run")
    ap.add_argument("--frames", type=int, default=150, help="frames per render size")
    ap.add_argument("--no-node", action="store_true", help="skip the sim_node runs")
    a = ap.parse_args(argv)
    data = {"physics": bench_physics(3.0)}
    print("physics", json.dumps(data["physics"]))
    data["render"] = bench_render(a.frames)
    print("render", json.dumps({k: round(v["p50_ms"], 2) for k, v in data["render"].items()}))
    if not a.no_node:
        data["sim_node"] = bench_node(a.seconds)
    out = pathlib.Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": common.machine(), **data}, indent=2))
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
