"""`sakura-nexus demo`: the MuJoCo factory cell and the sakura_nexus nodes as separate processes,
driven through a sequence of goals, with a progress display and a report (PNG + JSON).

It does not need ROS launch: a small supervisor starts the same executables (lib/sakura_nexus/) with
the same parameter file (config/nexus.yaml) and arguments as launch/sim.launch.py does, via
:mod:`sakura_nexus.bringup`. The mission itself is an in-process rclpy node that only talks ROS
topics: goal_pose out; odom, contacts, world_state, plan, camera_info and sync_status in.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sakura_nexus import bringup
from sakura_nexus.paths import config_file


def _prefix() -> pathlib.Path:
    from ament_index_python.packages import get_package_prefix

    return pathlib.Path(get_package_prefix("sakura_nexus"))


def ros_environment(domain_id: int | None = None, log_dir: str | None = None) -> dict:
    """Environment for child processes: own DDS domain, localhost only, SHM profile, offscreen GL."""
    env = dict(os.environ)
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["ROS_DOMAIN_ID"] = str(domain_id if domain_id is not None else env.get("ROS_DOMAIN_ID",
                                                                                 20 + os.getpid() % 80))
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(config_file("fastdds_shm.xml")))
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONSAFEPATH"] = "1"
    if log_dir:
        env["ROS_LOG_DIR"] = log_dir
        env.setdefault("ROS_HOME", log_dir)
    return env


class Supervisor:
    """Starts node processes like the launch files do, and stops them cleanly (SIGINT, then SIGKILL)."""

    def __init__(self, env: dict, log_dir: pathlib.Path, params_files: list[str], namespace: str = ""):
        self.env, self.log_dir, self.params_files, self.namespace = env, log_dir, params_files, namespace
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: bringup.NodeSpec, overrides: dict | None = None, use_sim_time: bool = True) -> None:
        exe = _prefix() / "lib" / "sakura_nexus" / spec.executable
        args = bringup.ros_args(spec, self.params_files, self.namespace, use_sim_time, overrides=overrides)
        log = open(self.log_dir / f"{spec.name}.log", "wb")
        self.procs[spec.name] = subprocess.Popen([sys.executable, str(exe), *args], env=self.env, stdout=log,
                                                 stderr=subprocess.STDOUT, start_new_session=True)

    def start_command(self, name: str, cmd: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        return {n: p.returncode for n, p in self.procs.items()}

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for n, p in self.procs.items():
            try:
                pids = [p.pid] + [int(x) for x in subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True,
                                                                   text=True).stdout.split() if int(x) != p.pid]
                total = 0.0
                for pid in pids:
                    with open(f"/proc/{pid}/status") as f:
                        total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
                out[n] = round(total, 1)
            except (OSError, StopIteration, ValueError):
                out[n] = float("nan")
        return out


@dataclass
class MissionLog:
    goals: list = field(default_factory=list)          # dicts: goal, reached, time, collisions
    path: list = field(default_factory=list)           # (t, x, y)
    surprise: list = field(default_factory=list)       # (t, surprise, uncertainty, model_version)
    latency_s: list = field(default_factory=list)      # image stamp -> command (wall clock)
    collisions: int = 0
    sync: list = field(default_factory=list)           # (t, global_version, bytes_sent, pending)


class Mission:
    """In-process rclpy node that sends goals and records what the robot does (topics only)."""

    def __init__(self, namespace: str = ""):
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Odometry, Path
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import CameraInfo
        from std_msgs.msg import Bool

        from sakura_nexus.msg import SyncStatus, WorldState
        from sakura_nexus.ros.qos import sensor_qos, state_qos

        ns = f"/{namespace.strip('/')}/" if namespace else ""
        self.node = rclpy.create_node("demo_mission", parameter_overrides=[Parameter("use_sim_time", value=True)])
        self.log = MissionLog()
        self.pose: tuple[float, float, float] | None = None
        self._contact_prev = False
        self._info_wall: dict[int, float] = {}
        self.world_states = 0
        self._goal_pub = self.node.create_publisher(PoseStamped, ns + "goal_pose", state_qos())
        self.node.create_subscription(Odometry, ns + "odom", self._on_odom, state_qos(50))
        self.node.create_subscription(Bool, ns + "contacts", self._on_contact, state_qos(50))
        self.node.create_subscription(WorldState, ns + "world_state", self._on_state, state_qos(10))
        self.node.create_subscription(Path, ns + "plan", self._on_plan, state_qos(10))
        self.node.create_subscription(CameraInfo, ns + "camera/camera_info", self._on_info, sensor_qos())
        self.node.create_subscription(SyncStatus, ns + "sync_status", self._on_sync, state_qos())
        self._ex = SingleThreadedExecutor()
        self._ex.add_node(self.node)
        self._thread = threading.Thread(target=self._ex.spin, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    @staticmethod
    def _key(stamp) -> int:
        return stamp.sec * 10**9 + stamp.nanosec

    def _on_odom(self, m):
        q = m.pose.pose.orientation
        yaw = math.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))
        self.pose = (m.pose.pose.position.x, m.pose.pose.position.y, yaw)
        t = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        if not self.log.path or t - self.log.path[-1][0] >= 0.1:
            self.log.path.append((t, self.pose[0], self.pose[1]))

    def _on_contact(self, m):
        if m.data and not self._contact_prev:
            self.log.collisions += 1
        self._contact_prev = m.data

    def _on_state(self, m):
        self.world_states += 1
        t = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        self.log.surprise.append((t, float(m.surprise), float(m.uncertainty), int(m.model_version)))

    def _on_info(self, m):
        self._info_wall[self._key(m.header.stamp)] = time.monotonic()
        if len(self._info_wall) > 2000:
            for k in sorted(self._info_wall)[:1000]:
                del self._info_wall[k]

    def _on_plan(self, m):
        t0 = self._info_wall.get(self._key(m.header.stamp))
        if t0 is not None:
            self.log.latency_s.append(time.monotonic() - t0)

    def _on_sync(self, m):
        self.log.sync.append((self.now(), int(m.global_version), int(m.bytes_sent), int(m.pending_deltas)))

    def send_goal(self, x: float, y: float, yaw: float = 0.0) -> None:
        from geometry_msgs.msg import PoseStamped

        g = PoseStamped()
        g.header.frame_id = "odom"
        g.header.stamp = self.node.get_clock().now().to_msg()
        g.pose.position.x, g.pose.position.y = float(x), float(y)
        g.pose.orientation.z, g.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        self._goal_pub.publish(g)

    def close(self):
        self._ex.shutdown(timeout_sec=1.0)
        self.node.destroy_node()


def pick_goals(seed: int, n: int, start=None, min_dist: float = 1.5, rng_seed: int = 7) -> list:
    """Free goal poses in the same cell the sim generates for ``seed`` (ROS-free core)."""
    from sakura_nexus.sim import CellConfig, FactoryCell

    cell = FactoryCell(CellConfig(seed=seed), camera_width=16, camera_height=16)
    rng = np.random.default_rng(rng_seed)
    goals, prev = [], start
    while len(goals) < n:
        g = cell.sample_free_pose(rng, clearance=0.45)
        if prev is None or math.hypot(g[0] - prev[0], g[1] - prev[1]) >= min_dist:
            goals.append(g)
            prev = g
    return goals, cell.layout


def drive(mission: Mission, goals: list, goal_timeout: float, tolerance: float, progress: bool = True,
          supervisor: Supervisor | None = None) -> None:
    """Send each goal in turn; wait until reached (odometry within tolerance) or timeout (sim time)."""
    from tqdm import tqdm

    for i, g in enumerate(goals):
        start_t, start_coll = mission.now(), mission.log.collisions
        d0 = math.hypot(g[0] - mission.pose[0], g[1] - mission.pose[1])
        bar = tqdm(total=round(d0, 2), desc=f"goal {i + 1}/{len(goals)}", unit="m", disable=not progress,
                   bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {n:.2f}/{total:.2f} m [{elapsed}] {postfix}")
        reached = False
        while mission.now() - start_t < goal_timeout:
            mission.send_goal(*g)
            time.sleep(0.2)
            if supervisor and supervisor.dead():
                raise RuntimeError(f"node process died: {supervisor.dead()} (logs in {supervisor.log_dir})")
            d = math.hypot(g[0] - mission.pose[0], g[1] - mission.pose[1])
            bar.n = round(max(0.0, d0 - d), 2)
            bar.set_postfix_str(f"dist {d:.2f} m, collisions {mission.log.collisions}")
            if d <= tolerance:
                reached = True
                break
        bar.close()
        mission.log.goals.append({"goal": [round(v, 3) for v in g], "reached": reached,
                                  "time_s": round(mission.now() - start_t, 2),
                                  "collisions": mission.log.collisions - start_coll})


def write_report(out: pathlib.Path, log: MissionLog, layout, summary: dict) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sakura_nexus.sim import plot_cell

    fig = plt.figure(figsize=(15, 5))
    ax = fig.add_subplot(1, 3, 1)
    plot_cell(ax, layout, robot=False, goal=False)
    if log.path:
        p = np.array(log.path)
        ax.plot(p[:, 1], p[:, 2], "-", color="tab:blue", lw=1.5, label="robot path")
        ax.plot(p[0, 1], p[0, 2], "o", color="tab:blue", label="start")
    for i, g in enumerate(log.goals):
        ax.plot(g["goal"][0], g["goal"][1], "*", ms=14, color="tab:green" if g["reached"] else "tab:red")
        ax.annotate(str(i + 1), (g["goal"][0], g["goal"][1]), textcoords="offset points", xytext=(6, 6))
    ax.set_title(f"path: {summary['goals_reached']}/{summary['goals']} goals, {summary['collisions']} collisions")
    ax.legend(loc="lower right", fontsize=8)
    ax = fig.add_subplot(1, 3, 2)
    if log.surprise:
        s = np.array(log.surprise)
        ax.plot(s[:, 0] - s[0, 0], s[:, 1], lw=0.8, label="surprise (1-step latent MSE)")
        ax.plot(s[:, 0] - s[0, 0], s[:, 2], lw=0.8, label="uncertainty (ensemble std)")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    if log.sync:
        ax2 = ax.twinx()
        y = np.array(log.sync)
        t0 = log.surprise[0][0] if log.surprise else y[0, 0]
        ax2.step(y[:, 0] - t0, y[:, 1], where="post", color="tab:purple", label="global model version")
        ax2.set_ylabel("global version")
    ax.set_xlabel("sim time [s]")
    ax.set_title("world model surprise over time")
    ax = fig.add_subplot(1, 3, 3)
    if log.latency_s:
        lat = np.array(log.latency_s) * 1e3
        ax.hist(lat, bins=40, color="tab:orange")
        ax.axvline(np.percentile(lat, 50), color="k", ls="--", label=f"p50 {np.percentile(lat, 50):.1f} ms")
        ax.axvline(np.percentile(lat, 99), color="r", ls="--", label=f"p99 {np.percentile(lat, 99):.1f} ms")
        ax.legend(fontsize=8)
    ax.set_xlabel("image stamp -> command [ms]")
    ax.set_title("closed-loop latency")
    fig.tight_layout()
    png = out / "report.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def summarise(log: MissionLog, extra: dict | None = None) -> dict:
    lat = np.array(log.latency_s) * 1e3
    s = {
        "goals": len(log.goals), "goals_reached": sum(g["reached"] for g in log.goals),
        "collisions": log.collisions,
        "latency_ms": {"n": int(lat.size), "p50": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                       "p99": round(float(np.percentile(lat, 99)), 2) if lat.size else None},
        "world_states": len(log.surprise),
        "surprise_first_last": [round(log.surprise[0][1], 5), round(log.surprise[-1][1], 5)] if log.surprise else None,
        "per_goal": log.goals,
    }
    if log.sync:
        s["federated"] = {"global_version_start": log.sync[0][1], "global_version_end": log.sync[-1][1],
                          "bytes_sent_upstream": log.sync[-1][2], "pending_deltas_end": log.sync[-1][3]}
    s.update(extra or {})
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sakura-nexus demo", description=__doc__.splitlines()[0])
    ap.add_argument("--goals", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="factory layout seed")
    ap.add_argument("--goal-timeout", type=float, default=45.0, help="sim seconds per goal")
    ap.add_argument("--out", default="out/demo", help="report directory")
    ap.add_argument("--controller", default="mpc", choices=("mpc", "go_to_goal"))
    ap.add_argument("--no-fleet", action="store_true", help="without the aggregator and the sync node")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)

    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = ros_environment(log_dir=str(out / "logs"))
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR",
                                           "FASTDDS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION")})
    params = [str(config_file("nexus.yaml"))]
    sup = Supervisor(env, out / "logs", params)
    fleet = not args.no_fleet and _fleet_available()
    print(f"sakura_nexus demo: factory seed {args.seed}, {args.goals} goals, controller {args.controller}"
          f"{', with fleet sync' if fleet else ''}; logs in {out / 'logs'}")
    goals, layout = pick_goals(args.seed, args.goals)
    import rclpy

    rclpy.init()
    mission = None
    t_wall = time.monotonic()
    try:
        sup.start(bringup.SIM, {"seed": args.seed})
        sup.start(bringup.PERCEPTION)
        sup.start(bringup.WORLD_MODEL, {"state_dir": str(out / "state" / "world_model")})
        sup.start(bringup.POLICY, {"controller": args.controller})
        if fleet:
            _start_fleet(sup, out)
        mission = Mission()
        deadline = time.monotonic() + 120
        while (mission.pose is None or mission.world_states < 5) and time.monotonic() < deadline:
            if sup.dead():
                raise RuntimeError(f"node process died during start-up: {sup.dead()} (logs in {out / 'logs'})")
            time.sleep(0.2)
        if mission.pose is None or mission.world_states < 5:
            raise RuntimeError(f"the pipeline did not come up within 120 s (logs in {out / 'logs'})")
        print(f"pipeline up after {time.monotonic() - t_wall:.1f} s: driving")
        drive(mission, goals, args.goal_timeout, tolerance=0.3, progress=not args.quiet, supervisor=sup)
        time.sleep(1.0)
        rss = sup.rss_mb()
    finally:
        codes = sup.stop()
        if mission is not None:
            mission.close()
        rclpy.try_shutdown()
    summary = summarise(mission.log, {"seed": args.seed, "controller": args.controller,
                                      "wall_time_s": round(time.monotonic() - t_wall, 1), "rss_mb": rss,
                                      "exit_codes": codes})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    png = write_report(out, mission.log, layout, summary)
    print()
    print(f"goals reached      : {summary['goals_reached']}/{summary['goals']}")
    print(f"collisions         : {summary['collisions']}")
    lat = summary["latency_ms"]
    print(f"latency image->cmd : p50 {lat['p50']} ms, p99 {lat['p99']} ms ({lat['n']} commands)")
    if "federated" in summary:
        f = summary["federated"]
        print(f"global model       : v{f['global_version_start']} -> v{f['global_version_end']}, "
              f"{f['bytes_sent_upstream']} bytes sent upstream")
    print(f"report             : {png}")
    print(f"summary            : {out / 'summary.json'}")
    return 0 if summary["goals_reached"] > 0 and summary["collisions"] == 0 else 1


def _fleet_available() -> bool:
    try:
        import flwr  # noqa: F401

        from sakura_nexus.nodes import federated_sync  # noqa: F401
    except ImportError:
        return False
    return True


def _start_fleet(sup: Supervisor, out: pathlib.Path) -> None:
    from sakura_nexus.federated.launcher import free_port

    port = free_port()
    sup.start_command("aggregator", [sys.executable, "-m", "sakura_nexus", "aggregator",
                                     "--state-dir", str(out / "state" / "aggregator"), "--fleet-port", str(port)])
    sup.start(bringup.FEDERATED_SYNC, {"superlink": f"127.0.0.1:{port}",
                                       "spool_dir": str(out / "state" / "spool")})


if __name__ == "__main__":
    sys.exit(main())

