"""`sakura-nexus demo`: the MuJoCo factory cell and the sakura_nexus nodes as separate processes,
driven through a sequence of goals, with a progress display and a report (PNG + JSON).

It does not need ROS launch: a small supervisor starts the same executables (lib/sakura_nexus/) with
the same parameter file (config/nexus.yaml) and arguments as launch/sim.launch.py does, via
:mod:`sakura_nexus.bringup`. The mission itself is an in-process rclpy node that only talks ROS
topics: goal_pose out; odom, contacts, world_state, plan, cmd_vel, camera_info and sync_status in.

The pieces are reusable (test/test_e2e.py, bench/bench_closed_loop.py)::

    with Pipeline(out_dir, seed=0, controller="mpc") as pipe:   # processes up, mission node spinning
        goals, layout = pick_goals(0, 2, start=pipe.mission.pose, straight=True)
        drive(pipe.mission, goals, goal_timeout=30, tolerance=0.3, supervisor=pipe.sup)
    summary = summarise(pipe.mission.log)

Latency is measured with DDS sample timestamps (rclpy MessageInfo), not with callback times of this
process: from the *source* timestamp of the camera_info that sim_node publishes right after the image
(rendering is before it and excluded) to the *reception* timestamp of the cmd_vel planned from that
image. cmd_vel (Twist) has no stamp: it is matched through the ``plan`` with the image's stamp, which
policy_node publishes from the same callback right after the command (``MissionLog.commands``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import pathlib
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from sakura_nexus import bringup
from sakura_nexus.geometry import set_yaw, yaw_of
from sakura_nexus.params import POLICY
from sakura_nexus.paths import config_file

NODE_ORDER = ("sim_node", "perception_node", "world_model_node", "policy_node")
CLOCK_STEP_MAX = 5.0  # s of sim time per 0.2 s poll (real-time factor 25): a larger step is a clock jump
# perception + world_model + policy in one process on one executor (bringup.COMPOSED) unless --no-composed;
# chosen by measurement (docs/closed_loop.md: less CPU and latency than three processes on 2 cores)
COMPOSED_DEFAULT = True


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
    env.update(bringup.fastdds_profile_env(str(config_file(bringup.FASTDDS_PROFILE)), env))
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONSAFEPATH"] = "1"
    if log_dir:
        env["ROS_LOG_DIR"] = log_dir
        env.setdefault("ROS_HOME", log_dir)
    return env


def models_missing() -> str | None:
    """None if the shipped checkpoint (models/ or $SAKURA_NEXUS_MODELS) loads, else why not."""
    from sakura_nexus.paths import models_dir

    d = models_dir()
    for name in ("encoder.bin", "world_model.bin"):
        if not (d / name).is_file():
            return (f"no model checkpoint: {d / name} does not exist (train one with `sakura-nexus train`, "
                    "or point SAKURA_NEXUS_MODELS at a checkpoint directory)")
    try:
        from sakura_nexus.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(d)
        if ckpt.encoder is None:
            return f"no encoder in {d}"
    except Exception as e:  # noqa: BLE001 - any load failure is a reason
        return f"model checkpoint in {d} does not load: {e}"
    return None


class Supervisor:
    """Starts node processes like the launch files do, and stops them cleanly (SIGINT, then SIGKILL)."""

    def __init__(self, env: dict, log_dir: pathlib.Path, params_files: list[str], namespace: str = ""):
        self.env, self.log_dir, self.params_files, self.namespace = env, log_dir, params_files, namespace
        self.procs: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, list[str]] = {}  # name -> the command it was started with (restart())
        self.restarts: dict[str, int] = {}
        self._logs: list = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, spec: bringup.NodeSpec, overrides: dict | None = None, use_sim_time: bool = True,
              log_level: str = "info", wrap: list[str] | None = None) -> None:
        exe = _prefix() / "lib" / "sakura_nexus" / spec.executable
        args = bringup.ros_args(spec, self.params_files, self.namespace, use_sim_time, log_level=log_level,
                                overrides=overrides)
        self.start_command(spec.name, [*(wrap or []), sys.executable, str(exe), *args])

    def start_composed(self, specs, overrides: dict | None = None, use_sim_time: bool = True,
                       log_level: str = "info", wrap: list[str] | None = None) -> None:
        """``specs`` as one ``nexus_container`` process (composed mode); ``overrides``: node -> params."""
        exe = _prefix() / "lib" / "sakura_nexus" / bringup.CONTAINER.executable
        args = bringup.container_args(specs, self.params_files, self.namespace, use_sim_time, log_level=log_level,
                                      overrides=overrides)
        self.start_command(bringup.CONTAINER.name, [*(wrap or []), sys.executable, str(exe), *args])

    def start_command(self, name: str, cmd: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab" if name in self.commands else "wb")  # noqa: SIM115 - handed to the child, closed in stop()
        self._logs.append(log)
        self.commands[name] = list(cmd)
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def kill9(self, name: str, tree: bool = False) -> None:
        """``kill -9`` the process (what it started survives, as after a real crash: the sync node's
        restart finds and ends a stale SuperNode); ``tree``: everything it started too (the aggregator's
        SuperLink and ServerApp, which run in sessions of their own: the whole host going down)."""
        from sakura_nexus.federated.launcher import descendants

        p = self.procs[name]
        for pid in [p.pid, *(descendants(p.pid) if tree else [])]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        p.wait()

    def restart(self, name: str) -> None:
        """Start ``name`` again with the command it was started with (after :meth:`kill9` or a crash)."""
        if self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is still running")
        self.restarts[name] = self.restarts.get(name, 0) + 1
        self.start_command(name, self.commands[name])

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 8, grep: str | None = None) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        if grep:
            text = [t for t in text if grep in t]
        return "\n".join(text[-lines:])

    def errors(self) -> dict[str, str]:
        """ERROR lines logged so far, per process (a node that fails to configure keeps running)."""
        return {n: e for n in self.procs if (e := self.log_tail(n, 3, grep="ERROR"))}

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                # the aggregator's SuperLink/ServerApp run in sessions of their own: kill the whole tree
                from sakura_nexus.federated.launcher import kill_tree

                kill_tree(p.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for log in self._logs:
            log.close()
        return {n: p.returncode for n, p in self.procs.items()}

    def pids(self, name: str) -> list[int]:
        p = self.procs[name]
        out = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, text=True).stdout.split()
        return [p.pid] + [int(x) for x in out if int(x) != p.pid]

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for n in self.procs:
            try:
                total = 0.0
                for pid in self.pids(n):
                    with open(f"/proc/{pid}/status") as f:
                        total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
                out[n] = round(total, 1)
            except (OSError, StopIteration, ValueError):
                out[n] = float("nan")
        return out

    def cpu_s(self) -> dict[str, float]:
        """User + system CPU seconds used so far by each process (and its session)."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for n in self.procs:
            total = 0.0
            try:
                for pid in self.pids(n):
                    with open(f"/proc/{pid}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, ValueError, IndexError):
                pass
            out[n] = round(total, 2)
        return out


@dataclass
class MissionLog:
    goals: list = field(default_factory=list)          # dicts: goal, reached, time_s, collisions, start
    path: list = field(default_factory=list)           # (t, x, y)
    surprise: list = field(default_factory=list)       # (t, surprise, uncertainty, model_version)
    collisions: int = 0
    collision_at: list = field(default_factory=list)   # (t, x, y) at each new contact
    sync: list = field(default_factory=list)           # (t, global_version, bytes_sent, pending)
    # DDS timestamps (ns, system clock) per image stamp: source time of the image (taken raw, only its
    # stamp is parsed) and of its camera_info (published right after it), source time of observation /
    # world_state / plan, reception time of the plan here.
    image_src: dict = field(default_factory=dict)
    info_src: dict = field(default_factory=dict)
    obs_src: dict = field(default_factory=dict)
    obs_compute: dict = field(default_factory=dict)    # Observation.compute_time (s)
    ws_src: dict = field(default_factory=dict)
    plan_src: dict = field(default_factory=dict)
    plan_rx: dict = field(default_factory=dict)
    plan_poses: dict = field(default_factory=dict)     # number of poses in each plan (MPC: the horizon)
    cmd_src: list = field(default_factory=list)        # source timestamps (ns) of every cmd_vel
    cmd_rx: list = field(default_factory=list)         # ... and its reception time here (same order)
    diag: dict = field(default_factory=dict)           # node -> key -> [(wall ns, reported value)]
    window: list | None = None                         # [t0_ns, t1_ns]: only stamps inside count
    t0: float | None = None                            # sim time the mission started driving

    def start_ns(self, key: int) -> int | None:
        """When the image with stamp ``key`` went out: its own source timestamp, else (image not seen
        here) that of its camera_info, which sim_node publishes right after it."""
        t = self.image_src.get(key)
        return t if t is not None else self.info_src.get(key)

    def commands(self) -> dict:
        """Image stamp -> (source, reception) DDS timestamps (ns) of the cmd_vel planned from that image.

        cmd_vel carries no stamp (geometry_msgs/Twist), so it is matched through the plan: policy_node
        publishes the command, then the plan with the image's stamp, from the same callback (nothing
        else publishes cmd_vel in between), so the command is the newest one sent before the plan and
        after the image."""
        if not self.cmd_src or len(self.cmd_rx) != len(self.cmd_src):
            return {}
        order = np.argsort(np.asarray(self.cmd_src, np.int64), kind="stable")
        src = np.asarray(self.cmd_src, np.int64)[order]
        rx = np.asarray(self.cmd_rx, np.int64)[order]
        out = {}
        for k, plan_t in self.plan_src.items():
            i = int(np.searchsorted(src, plan_t, side="right")) - 1
            t0 = self.start_ns(k)
            if i >= 0 and t0 is not None and src[i] >= t0:
                out[k] = (int(src[i]), int(rx[i]))
        return out

    def latency_s(self, which: str = "rx") -> np.ndarray:
        """Image -> cmd_vel latencies (s): ``rx`` to the reception of the command here (as the robot
        driver would receive it), ``src`` to its publication."""
        cmds = self.commands()
        out = []
        for k in sorted(cmds):
            t0 = self.start_ns(k)
            if self._in_window(t0):
                out.append((cmds[k][1 if which == "rx" else 0] - t0) * 1e-9)
        return np.array(out)

    def _in_window(self, t_ns: int) -> bool:
        return self.window is None or self.window[0] <= t_ns <= self.window[1]


def _trim(d: dict, keep: int = 20000) -> None:
    # the oldest entries by arrival (dicts keep insertion order), not the smallest stamps: after a sim
    # restart the newest stamps are the smallest
    if len(d) > keep + 2000:
        for k in list(d)[:2000]:
            del d[k]


class Mission:
    """In-process rclpy node that sends goals and records what the robot does (topics only).

    Two nodes, two executor threads: ``node`` (sim time) takes the high-rate plain topics (odom,
    contacts, /clock at 100+ Hz) on rclpy's C++ EventsExecutor where available, so the harness stays
    light on a 2-core machine; ``timing`` (wall clock) takes the per-frame topics whose DDS source /
    reception timestamps are recorded, with (msg, MessageInfo) callbacks on a SingleThreadedExecutor
    (the EventsExecutor of rclpy 9.1 cannot call those)."""

    def __init__(self, namespace: str = "", hops: bool = False, diagnostics: bool = False):
        import rclpy
        from geometry_msgs.msg import PoseStamped, Twist
        from nav_msgs.msg import Odometry, Path
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import CameraInfo
        from std_msgs.msg import Bool

        from sakura_nexus.msg import SyncStatus, WorldState
        from sakura_nexus.ros.qos import sensor_qos, state_qos

        ns = f"/{namespace.strip('/')}/" if namespace else ""
        self.node = rclpy.create_node("demo_mission", parameter_overrides=[Parameter("use_sim_time", value=True)])
        self.timing = rclpy.create_node("demo_mission_timing")
        self.log = MissionLog()
        self.pose: tuple[float, float, float] | None = None
        self._contact_prev = False
        self.world_states = 0
        self.recording = False  # path, surprise and collisions are recorded while driving (drive())
        self._goal_pub = self.node.create_publisher(PoseStamped, ns + "goal_pose", state_qos())
        sub = self.node.create_subscription
        sub(Odometry, ns + "odom", self._on_odom, state_qos(50))
        sub(Bool, ns + "contacts", self._on_contact, state_qos(50))
        sub(WorldState, ns + "world_state", self._on_state, state_qos(10))
        sub(SyncStatus, ns + "sync_status", self._on_sync, state_qos())
        if diagnostics:
            from diagnostic_msgs.msg import DiagnosticArray

            sub(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        tsub = self.timing.create_subscription
        tsub(Path, ns + "plan", self._on_plan, state_qos(10))
        tsub(Twist, ns + "cmd_vel", self._on_cmd, state_qos(50))
        tsub(CameraInfo, ns + "camera/camera_info", self._on_info, sensor_qos())
        # the image itself, serialized (no deserialisation of the pixels): only its stamp is read
        from sensor_msgs.msg import Image

        tsub(Image, ns + "camera/image_raw", self._on_image_raw, sensor_qos(), raw=True)
        if hops:
            from sakura_nexus.msg import Observation

            tsub(Observation, ns + "observation", self._on_obs, state_qos(10))
            tsub(WorldState, ns + "world_state", self._on_state_timing, state_qos(10))
        try:
            from rclpy.experimental import EventsExecutor

            self._ex = EventsExecutor()
        except ImportError:
            self._ex = SingleThreadedExecutor()
        self._ex.add_node(self.node)
        self._tex = SingleThreadedExecutor()
        self._tex.add_node(self.timing)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._spin, args=(ex,), daemon=True) for ex in (self._ex, self._tex)]
        for t in self._threads:
            t.start()

    def _spin(self, ex) -> None:
        import rclpy

        while not self._stop.is_set() and rclpy.ok():
            try:
                ex.spin_once(timeout_sec=0.1)
            except Exception:  # the context shut down under us: return quietly, else re-raise
                if self._stop.is_set() or not rclpy.ok():
                    return
                raise

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    @staticmethod
    def _key(stamp) -> int:
        return stamp.sec * 10**9 + stamp.nanosec

    def _on_odom(self, m):
        q, p = m.pose.pose.orientation, m.pose.pose.position
        t = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        # the harness is a consumer like any node: odometry that is not the robot's (another frame, NaN,
        # absurd, not a unit quaternion, stamped far from this node's clock) must not move its pose
        qn = q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w
        now = self.now()
        if m.header.frame_id != "odom" or not all(map(math.isfinite, (p.x, p.y, qn))) \
                or max(abs(p.x), abs(p.y)) > 1e4 or abs(qn - 1.0) > 0.01 or (now > 0 and abs(t - now) > 1.0):
            return
        self.pose = (p.x, p.y, yaw_of(q))
        if self.recording and (not self.log.path or not 0.0 <= t - self.log.path[-1][0] < 0.1):
            self.log.path.append((t, self.pose[0], self.pose[1]))

    def _on_contact(self, m):
        if m.data and not self._contact_prev and self.recording:
            self.log.collisions += 1
            if self.pose:
                self.log.collision_at.append((self.now(), self.pose[0], self.pose[1]))
        self._contact_prev = m.data

    def _on_state(self, m):
        self.world_states += 1
        if self.recording:
            t = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
            self.log.surprise.append((t, float(m.surprise), float(m.uncertainty), int(m.model_version)))

    def _on_state_timing(self, m, info):
        self.log.ws_src[self._key(m.header.stamp)] = info["source_timestamp"]
        _trim(self.log.ws_src)

    def _on_obs(self, m, info):
        k = self._key(m.header.stamp)
        self.log.obs_src[k] = info["source_timestamp"]
        self.log.obs_compute[k] = float(m.compute_time)
        _trim(self.log.obs_src)
        _trim(self.log.obs_compute)

    def _on_image_raw(self, data: bytes, info):
        # CDR: 4-byte encapsulation header, then header.stamp (int32 sec, uint32 nanosec), little endian
        if len(data) >= 12 and data[1] == 1:
            sec, nsec = struct.unpack_from("<iI", data, 4)
            self.log.image_src[sec * 10**9 + nsec] = info["source_timestamp"]
            _trim(self.log.image_src)

    def _on_info(self, m, info):
        self.log.info_src[self._key(m.header.stamp)] = info["source_timestamp"]
        _trim(self.log.info_src)

    def _on_plan(self, m, info):
        k = self._key(m.header.stamp)
        self.log.plan_src[k] = info["source_timestamp"]
        self.log.plan_rx[k] = info["received_timestamp"]
        self.log.plan_poses[k] = len(m.poses)
        _trim(self.log.plan_src)
        _trim(self.log.plan_rx)
        _trim(self.log.plan_poses)

    def _on_cmd(self, m, info):
        self.log.cmd_src.append(info["source_timestamp"])
        self.log.cmd_rx.append(info["received_timestamp"])
        if len(self.log.cmd_src) > 200000:
            del self.log.cmd_src[:100000], self.log.cmd_rx[:100000]

    def _on_sync(self, m):
        self.log.sync.append((self.now(), int(m.global_version), int(m.bytes_sent), int(m.pending_deltas)))

    def _on_diag(self, m):
        for st in m.status:
            node = st.hardware_id
            for kv in st.values:
                if kv.key in ("tick_ms", "plan_ms", "callback_ms"):
                    # windowed {mean, p99} (Diagnostics.sample) -> the mean; a plain number as it is
                    try:
                        v = ast.literal_eval(kv.value)
                        v = float(v["mean"] if isinstance(v, dict) else v)
                    except (ValueError, SyntaxError, KeyError, TypeError):
                        continue
                    self.log.diag.setdefault(node, {}).setdefault(kv.key, []).append((time.time_ns(), v))

    def goal_subscribers(self) -> int:
        return self._goal_pub.get_subscription_count()

    def set_params(self, node: str, values: dict, timeout: float = 10.0) -> list:
        """``ros2 param set`` through the node's set_parameters service; -> SetParametersResult list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        cli = self.timing.create_client(SetParameters, f"{node}/set_parameters")
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise RuntimeError(f"{node}/set_parameters not available")
            req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
            fut = cli.call_async(req)
            deadline = time.monotonic() + timeout
            while not fut.done() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not fut.done():
                raise RuntimeError(f"{node}/set_parameters did not answer within {timeout} s")
            return list(fut.result().results)
        finally:
            self.timing.destroy_client(cli)

    def send_goal(self, x: float, y: float, yaw: float = 0.0) -> None:
        from geometry_msgs.msg import PoseStamped

        g = PoseStamped()
        g.header.frame_id = "odom"
        g.header.stamp = self.node.get_clock().now().to_msg()
        g.pose.position.x, g.pose.position.y = float(x), float(y)
        set_yaw(g.pose.orientation, yaw)
        self._goal_pub.publish(g)

    def hold(self) -> None:
        """Stop the robot where it is (a goal at the current pose) and stop recording collisions."""
        self.recording = False
        if self.pose is not None:
            self.send_goal(*self.pose)

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        for ex in (self._ex, self._tex):
            try:
                ex.shutdown(timeout_sec=1.0)
            except Exception:  # noqa: BLE001 - best effort
                pass
        self.node.destroy_node()
        self.timing.destroy_node()


# --------------------------------------------------------------------------------------------- goals
def segment_clearance(layout, size: float, a, b, step: float = 0.05) -> float:
    """Smallest distance to any wall or obstacle along the straight segment a -> b (metres)."""
    from sakura_nexus.sim.layout import free_distance

    n = max(2, int(math.hypot(b[0] - a[0], b[1] - a[1]) / step) + 1)
    return min(free_distance(a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s, layout, size)
               for s in np.linspace(0.0, 1.0, n))


def pick_goals(seed: int, n: int, start=None, min_dist: float = 1.5, max_dist: float = 10.0, rng_seed: int = 7,
               straight: bool = False, margin: float = 0.15, candidates: int = 20) -> tuple[list, list]:
    """Free goal poses in the same cell the sim generates for ``seed`` (ROS-free core), each at least
    ``min_dist`` from the previous one (the first from ``start``, default the sim's start pose).
    ``straight``: each leg is a straight line that keeps the robot's footprint ``margin`` metres away
    from every obstacle (what the go-to-goal baseline can drive without touching anything).
    Returns (goals, layout)."""
    from sakura_nexus.sim import CellConfig, FactoryCell
    from sakura_nexus.sim.layout import sample_free_pose

    cell = FactoryCell(CellConfig(seed=seed), camera_width=16, camera_height=16)
    try:
        layout, size, radius = list(cell.layout), float(cell.size[0]), cell.cfg.robot.radius
        prev = tuple(start) if start is not None else cell.pose
    finally:
        cell.close()
    rng = np.random.default_rng(rng_seed)
    goals, visited = [], [prev]
    while len(goals) < n:
        # of up to `candidates` admissible goals, take the one farthest from everywhere visited so far
        best, best_score = None, -1.0
        admissible = 0
        for _ in range(3000):
            g = sample_free_pose(rng, layout, size, radius, clearance=0.45)
            d = math.hypot(g[0] - prev[0], g[1] - prev[1])
            if not min_dist <= d <= max_dist:
                continue
            if straight:
                if segment_clearance(layout, size, prev, g) < radius + margin:
                    continue
                g = (g[0], g[1], math.atan2(g[1] - prev[1], g[0] - prev[0]))  # arrive facing along the leg
            score = min(math.hypot(g[0] - v[0], g[1] - v[1]) for v in visited)
            if score > best_score:
                best, best_score = g, score
            admissible += 1
            if admissible >= candidates:
                break
        if best is None:
            break
        goals.append(best)
        visited.append(best)
        prev = best
    if len(goals) < n:
        raise RuntimeError(f"found only {len(goals)} of {n} goals in cell {seed} at least {min_dist} m apart"
                           + (" on obstacle-free straight legs (the robot is boxed in here: try another seed, "
                              "or --no-straight with the MPC)" if straight else ""))
    return goals, layout


def drive(mission: Mission, goals: list, goal_timeout: float, tolerance: float, progress: bool = True,
          supervisor: Supervisor | None = None) -> None:
    """Send each goal once; wait until reached (odometry within tolerance) or timeout (sim time)."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    if mission.log.t0 is None:
        mission.log.t0 = mission.now()
    mission.recording = True
    for i, g in enumerate(goals):
        start_t, start_coll, start_pose = mission.now(), mission.log.collisions, mission.pose
        d0 = math.hypot(g[0] - mission.pose[0], g[1] - mission.pose[1])
        bar = tqdm(total=round(d0, 2), desc=f"goal {i + 1}/{len(goals)}", unit="m", disable=not (progress and tty),
                   bar_format="{desc}: {percentage:3.0f}%|{bar:30}| {n:.2f}/{total:.2f} m [{elapsed}] {postfix}")
        mission.send_goal(*g)
        reached = False
        elapsed, prev = 0.0, start_t
        while elapsed < goal_timeout:
            time.sleep(0.2)
            # sim time elapsed, step by step: a clock jump (sim reset, /clock restart) is a new timeline, not
            # time spent on the goal (a jump back would otherwise never time out, one forward at once)
            now = mission.now()
            if 0.0 <= now - prev <= CLOCK_STEP_MAX:
                elapsed += now - prev
            prev = now
            if supervisor and supervisor.dead():
                raise RuntimeError(f"node process died: {supervisor.dead()} (logs in {supervisor.log_dir})")
            d = math.hypot(g[0] - mission.pose[0], g[1] - mission.pose[1])
            bar.n = round(min(d0, max(0.0, d0 - d)), 2)
            bar.set_postfix_str(f"dist {d:.2f} m, collisions {mission.log.collisions}")
            if d <= tolerance:
                reached = True
                break
        bar.close()
        rec = {"goal": [round(v, 3) for v in g], "start": [round(v, 3) for v in start_pose], "reached": reached,
               "time_s": round(elapsed, 2), "t_end": round(mission.now(), 3),
               "collisions": mission.log.collisions - start_coll}
        mission.log.goals.append(rec)
        if progress:
            print(f"goal {i + 1}/{len(goals)} ({g[0]:+.2f}, {g[1]:+.2f}): "
                  f"{'reached' if reached else 'NOT reached'} in {rec['time_s']:.1f} s sim time, "
                  f"{rec['collisions']} collisions", flush=True)


# --------------------------------------------------------------------------------------------- pipeline
class Pipeline:
    """The four nodes + sim_node as separate processes (like launch/sim.launch.py) plus the mission
    node in this process. ``with Pipeline(...) as p:`` returns once odometry, world states and plans
    flow; on exit the robot is held, the processes get SIGINT and rclpy is shut down if it was
    initialised here. ``overrides``: node name -> parameter overrides."""

    def __init__(self, out: pathlib.Path, seed: int = 0, controller: str = "mpc", overrides: dict | None = None,
                 fleet: bool = False, startup_timeout: float = 120.0, hops: bool = False, diagnostics: bool = False,
                 domain_id: int | None = None, composed: bool = False, stack_cpus: str | None = None):
        # composed: perception, world_model and policy in one nexus_container process (one executor);
        # stack_cpus: run those (not sim_node, not the harness) under `taskset -c stack_cpus`
        self.composed, self.stack_cpus = composed, stack_cpus
        self.out = pathlib.Path(out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.seed, self.controller, self.fleet = seed, controller, fleet
        self.overrides = overrides or {}
        self.startup_timeout = startup_timeout
        self._mission_kw = {"hops": hops, "diagnostics": diagnostics}
        self.env = ros_environment(domain_id, log_dir=str(self.out / "logs"))
        self.sup = Supervisor(self.env, self.out / "logs", [str(config_file("nexus.yaml"))])
        self.mission: Mission | None = None
        self._own_rclpy = False
        self.startup_s: float | None = None
        self.exit_codes: dict = {}

    def __enter__(self) -> Pipeline:
        import rclpy

        if not rclpy.ok():
            # this process' mission node joins the children's domain
            # (the profile under the name(s) the installed Fast DDS reads: only those are in env)
            os.environ.update({k: self.env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                                                        *bringup.FASTDDS_PROFILE_VARS, "RMW_IMPLEMENTATION")
                               if k in self.env})
            rclpy.init()
            self._own_rclpy = True
        elif os.environ.get("ROS_DOMAIN_ID") != self.env["ROS_DOMAIN_ID"]:
            raise RuntimeError("rclpy is already initialised on another ROS_DOMAIN_ID than the pipeline's")
        t0 = time.monotonic()
        try:
            ov = self.overrides
            # fleet mode: a signing key pair for this run; the aggregator signs, every node trusts its public half
            keys = _fleet_keys(self.out) if self.fleet else None
            trust = {"trusted_keys": keys[1]} if keys else {}
            self.sup.start(bringup.SIM, {"seed": self.seed, **ov.get("sim_node", {})})
            stack = {
                "perception_node": {**trust, **(ov.get("perception_node") or {})},
                "world_model_node": {**trust, "state_dir": str(self.out / "state" / "world_model"),
                                     # fleet mode: deltas every 3 s so a short demo sees a round
                                     **({"delta_period": 3.0} if self.fleet else {}),
                                     **ov.get("world_model_node", {})},
                "policy_node": {**trust, "controller": self.controller, **ov.get("policy_node", {})},
            }
            wrap = ["taskset", "-c", str(self.stack_cpus)] if self.stack_cpus else None
            if self.composed:
                self.sup.start_composed(bringup.COMPOSED, stack, wrap=wrap)
            else:
                for spec in bringup.COMPOSED:
                    self.sup.start(spec, stack[spec.name], wrap=wrap)
            if self.fleet:
                _start_fleet(self.sup, self.out, keys)
            self.mission = Mission(**self._mission_kw)
            self._wait_up()
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_up(self) -> None:
        m, sup = self.mission, self.sup
        deadline = time.monotonic() + self.startup_timeout

        def up():
            return (m.pose is not None and m.world_states >= 5 and m.goal_subscribers() >= 2
                    and len(m.log.cmd_src) > 0)

        while not up() and time.monotonic() < deadline:
            if sup.dead():
                raise RuntimeError("node process died during start-up: " + "; ".join(
                    f"{n}: {sup.log_tail(n, 5)}" for n in sup.dead()))
            errors = sup.errors()
            if any("cannot load" in e or "Failed to" in e for e in errors.values()):
                raise RuntimeError("a node failed to configure: " + "; ".join(f"{n}: {e}" for n, e in errors.items()))
            time.sleep(0.2)
        if not up():
            raise RuntimeError(
                f"the pipeline did not come up within {self.startup_timeout:.0f} s (pose {m.pose is not None}, "
                f"{m.world_states} world states, {m.goal_subscribers()} goal subscribers, {len(m.log.cmd_src)} "
                f"commands); errors: {sup.errors() or 'none'}; logs in {sup.log_dir}")

    def __exit__(self, *exc) -> None:
        if self.mission is not None:
            try:
                self.mission.hold()
                time.sleep(0.3)
            except Exception:  # noqa: BLE001 - best effort while shutting down
                pass
        self.exit_codes = self.sup.stop()
        if self.mission is not None:
            self.mission.close()
        if self._own_rclpy:
            import rclpy

            rclpy.try_shutdown()


# --------------------------------------------------------------------------------------------- report
def cmd_gaps(cmd_src_ns, period: float, t0_ns: int | None = None, t1_ns: int | None = None) -> dict:
    """Control ticks missed: cmd_vel publication gaps longer than 1.5 control periods."""
    t = np.sort(np.asarray(cmd_src_ns, np.int64))
    if t0_ns is not None:
        t = t[(t >= t0_ns) & (t <= (t1_ns if t1_ns is not None else t[-1] if t.size else 0))]
    if t.size < 2:
        return {"commands": int(t.size), "gaps_over_1.5_periods": 0, "missed_ticks": 0, "max_gap_ms": None}
    gaps = np.diff(t) * 1e-9
    late = gaps[gaps > 1.5 * period]
    return {"commands": int(t.size), "rate_hz": round(float((t.size - 1) / ((t[-1] - t[0]) * 1e-9)), 2),
            "gaps_over_1.5_periods": int(late.size),
            "missed_ticks": int(np.sum(np.floor(late / period + 0.5) - 1)),
            "max_gap_ms": round(float(gaps.max() * 1e3), 2)}


def summarise(log: MissionLog, extra: dict | None = None, control_rate: float = 20.0) -> dict:
    lat = log.latency_s("rx") * 1e3

    def q(x, p):
        return round(float(np.percentile(x, p)), 2) if x.size else None

    s = {
        "goals": len(log.goals), "goals_reached": sum(g["reached"] for g in log.goals),
        "collisions": log.collisions,
        "latency_ms": {"what": "image published (DDS source time) -> the cmd_vel planned from it received "
                               "(DDS reception time)",
                       "n": int(lat.size), "p50": q(lat, 50), "p99": q(lat, 99), "max": q(lat, 100)},
        "control": cmd_gaps(log.cmd_src, 1.0 / control_rate),
        "world_states": len(log.surprise),
        "surprise_first_last": [round(log.surprise[0][1], 5), round(log.surprise[-1][1], 5)] if log.surprise else None,
        "per_goal": log.goals,
    }
    if log.sync:
        s["federated"] = {"global_version_start": log.sync[0][1], "global_version_end": log.sync[-1][1],
                          "bytes_sent_upstream": log.sync[-1][2], "pending_deltas_end": log.sync[-1][3]}
    s.update(extra or {})
    return s


def _rolling_median(y: np.ndarray, n: int) -> np.ndarray:
    if y.size < n or n < 2:
        return y
    pad = np.pad(y, (n // 2, n - 1 - n // 2), mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(pad, n), axis=1)


def write_report(out: pathlib.Path, log: MissionLog, layout, summary: dict) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sakura_nexus.sim import plot_cell

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1.0, 1.25, 1.0]})
    # --- path over the cell map
    ax = axes[0]
    plot_cell(ax, layout, robot=False, goal=False)
    t_start = log.t0 if log.t0 is not None else log.path[0][0] if log.path else 0.0
    if log.path:
        p = np.array(log.path)
        sc = ax.scatter(p[:, 1], p[:, 2], c=p[:, 0] - t_start, cmap="viridis", s=5, zorder=6, label="robot path")
        ax.plot(p[:, 1], p[:, 2], "-", color="0.2", lw=0.6, zorder=5)
        ax.plot(p[0, 1], p[0, 2], "o", ms=9, mfc="white", mec="k", zorder=7, label="start")
        cb = fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02)
        cb.set_label("sim time [s]")
    labelled = set()
    for i, g in enumerate(log.goals):
        color = "tab:green" if g["reached"] else "tab:red"
        label = "goal reached" if g["reached"] else "goal missed"
        ax.plot(g["goal"][0], g["goal"][1], "*", ms=17, color=color, mec="k", zorder=8,
                label=None if label in labelled else label)
        labelled.add(label)
        ax.annotate(str(i + 1), (g["goal"][0], g["goal"][1]), textcoords="offset points", xytext=(7, 7),
                    fontsize=11, fontweight="bold", zorder=9,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    if log.collision_at:
        c = np.array(log.collision_at)
        ax.plot(c[:, 1], c[:, 2], "x", color="red", ms=9, mew=2, zorder=9, label="contact")
    ax.set_title(f"robot path: {summary['goals_reached']}/{summary['goals']} goals reached, "
                 f"{summary['collisions']} collisions", fontsize=11)
    ax.set_xlabel("x [m] (odom)")
    ax.set_ylabel("y [m]")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=4, fontsize=8, frameon=False)
    # --- surprise over time
    ax = axes[1]
    if log.surprise:
        s = np.array(log.surprise)
        t = s[:, 0] - t_start
        pos = s[:, 1] > 0
        ax.plot(t[pos], s[pos, 1], lw=0.5, color="tab:blue", alpha=0.35)
        ax.plot(t[pos], _rolling_median(s[pos, 1], 15), lw=1.8, color="tab:blue",
                label="surprise: 1-step latent MSE (rolling median 0.5 s)")
        ax.plot(t, _rolling_median(s[:, 2], 15), lw=1.8, color="tab:orange", label="uncertainty: ensemble std")
        ax.set_yscale("log")
        for i, g in enumerate(log.goals):
            t_goal = g["t_end"] - t_start
            ax.axvline(t_goal, color="tab:green" if g["reached"] else "tab:red", ls=":", lw=1.2)
            ax.text(t_goal, 1.0, f" {i + 1}", transform=ax.get_xaxis_transform(), va="top", fontsize=9,
                    color="tab:green" if g["reached"] else "tab:red")
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(alpha=0.3, which="both")
    else:
        ax.text(0.5, 0.5, "no world_state received", ha="center", transform=ax.transAxes)
    if log.sync:
        ax2 = ax.twinx()
        y = np.array(log.sync)
        ax2.step(y[:, 0] - t_start, y[:, 1], where="post", color="tab:purple", label="global model version")
        ax2.set_ylabel("global model version", color="tab:purple")
    ax.set_xlabel("sim time [s] (dotted: goal reached / timed out)")
    ax.set_ylabel("latent units")
    ax.set_title("world model surprise over time", fontsize=11)
    # --- latency
    ax = axes[2]
    lat = log.latency_s("rx") * 1e3
    if lat.size:
        hi = max(25.0, float(np.percentile(lat, 99.5)) * 1.1)
        ax.hist(np.clip(lat, 0, hi), bins=np.linspace(0, hi, 50), color="tab:orange", alpha=0.85)
        p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
        ax.axvline(p50, color="k", ls="--", lw=1.5, label=f"p50 {p50:.1f} ms")
        ax.axvline(p99, color="r", ls="--", lw=1.5, label=f"p99 {p99:.1f} ms")
        ax.legend(fontsize=9, title=f"{lat.size} commands", title_fontsize=8)
        ax.set_ylabel("commands")
    else:
        ax.text(0.5, 0.5, "no plan received", ha="center", transform=ax.transAxes)
    ax.set_xlabel("image published -> command received [ms]")
    ax.set_title("closed-loop latency: image -> cmd_vel", fontsize=11)
    ctrl = summary.get("control", {})
    fig.suptitle(f"sakura_nexus demo — factory seed {summary.get('seed', '?')}, controller "
                 f"{summary.get('controller', '?')}, cmd_vel {ctrl.get('rate_hz', '?')} Hz, "
                 f"{ctrl.get('missed_ticks', '?')} control ticks missed", fontsize=12)
    fig.tight_layout()
    png = out / "report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


# --------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sakura-nexus demo", description=__doc__.splitlines()[0])
    ap.add_argument("--goals", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="factory layout seed")
    ap.add_argument("--goal-timeout", type=float, default=45.0, help="sim seconds per goal")
    ap.add_argument("--out", default="out/demo", help="report directory")
    # Default: the world-model MPC (with the cell map sim_node publishes) drives; go_to_goal is the baseline
    # that ignores the model (it hits obstacles that block the straight line, hence --straight by default).
    ap.add_argument("--controller", default=POLICY["controller"].default, choices=POLICY["controller"].choices,
                    help=POLICY["controller"].description)
    ap.add_argument("--straight", action=argparse.BooleanOptionalAction, default=None,
                    help="only goals reachable on an obstacle-free straight line (default: with go_to_goal)")
    ap.add_argument("--fleet", action="store_true",
                    help="also run the fleet aggregator (Flower) and federated_sync_node (adds ~1 min of start-up)")
    ap.add_argument("--composed", action=argparse.BooleanOptionalAction, default=COMPOSED_DEFAULT,
                    help="perception, world_model and policy as separate nodes in one process (nexus_container)")
    ap.add_argument("--stack-cpus", default=None, metavar="LIST",
                    help="run the robot stack under `taskset -c LIST` (e.g. 0: the stack on one core)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--record", action="store_true",
                    help="write an MCAP bag of the run to OUT/bag (camera as JPEG; for `sakura-nexus train --bag`)")
    args = ap.parse_args(argv)

    reason = models_missing()
    if reason:
        print(f"sakura_nexus demo: {reason}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out).resolve()
    fleet = args.fleet and _fleet_available()
    straight = args.controller == "go_to_goal" if args.straight is None else args.straight
    try:
        goals, layout = pick_goals(args.seed, args.goals, straight=straight)
    except RuntimeError as e:
        print(f"sakura_nexus demo: {e}", file=sys.stderr)
        return 2
    pipe = Pipeline(out, seed=args.seed, controller=args.controller, fleet=fleet, composed=args.composed,
                    stack_cpus=args.stack_cpus)
    print(f"sakura_nexus demo: factory seed {args.seed}, {args.goals} goals, controller {args.controller}"
          f"{', with fleet sync' if fleet else ''}; ROS_DOMAIN_ID {pipe.env['ROS_DOMAIN_ID']}; "
          f"logs in {out / 'logs'}", flush=True)
    t_wall = time.monotonic()
    with pipe:
        print(f"pipeline up after {pipe.startup_s:.1f} s: driving", flush=True)
        recorder = _start_recorder(out / "bag") if args.record else None
        cpu0, t_cpu0 = pipe.sup.cpu_s(), time.monotonic()
        try:
            drive(pipe.mission, goals, args.goal_timeout, tolerance=0.3, progress=not args.quiet,
                  supervisor=pipe.sup)
        finally:
            recorded = recorder.close() if recorder else None
        cpu = cpu_cores(cpu0, pipe.sup.cpu_s(), time.monotonic() - t_cpu0)
        pipe.mission.hold()
        if fleet:
            _wait_for_global_model(pipe.mission, timeout=120.0)
        time.sleep(1.0)
        rss = pipe.sup.rss_mb()
    log = pipe.mission.log
    summary = summarise(log, {"seed": args.seed, "controller": args.controller, "straight_goals": straight,
                              "startup_s": round(pipe.startup_s, 1),
                              "wall_time_s": round(time.monotonic() - t_wall, 1), "rss_mb": rss,
                              "rss_total_mb": round(sum(rss.values()), 1), "exit_codes": pipe.exit_codes,
                              "composed": args.composed, "stack_cpus": args.stack_cpus,
                              "cpu_cores_while_driving": cpu,
                              "load_average": [round(v, 2) for v in os.getloadavg()]})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    png = write_report(out, log, layout, summary)
    print()
    print(f"goals reached      : {summary['goals_reached']}/{summary['goals']}")
    print(f"collisions         : {summary['collisions']}")
    lat = summary["latency_ms"]
    print(f"latency image->cmd : p50 {lat['p50']} ms, p99 {lat['p99']} ms ({lat['n']} commands)")
    c = summary["control"]
    print(f"cmd_vel            : {c.get('rate_hz')} Hz, {c['missed_ticks']} control ticks missed")
    print(f"memory (RSS)       : {summary['rss_total_mb']:.0f} MB in {len(rss)} processes")
    print(f"CPU while driving  : robot stack {cpu['robot_stack']:.3f} cores"
          + (f", robot-side sync {cpu['robot_sync']:.3f} cores" if "robot_sync" in cpu else "")
          + f" ({'composed' if args.composed else 'separate processes'})")
    if "federated" in summary:
        f = summary["federated"]
        print(f"global model       : v{f['global_version_start']} -> v{f['global_version_end']}, "
              f"{f['bytes_sent_upstream']} bytes sent upstream")
    if recorded is not None:
        print(f"bag                : {out / 'bag'} ({', '.join(f'{t} {n}' for t, n in sorted(recorded.items()))})")
    print(f"report             : {png}")
    print(f"summary            : {out / 'summary.json'}")
    return 0 if summary["goals_reached"] > 0 and summary["collisions"] == 0 else 1


STACK_PROCESSES = ("perception_node", "world_model_node", "policy_node", "nexus_container")


def cpu_cores(before: dict, after: dict, seconds: float) -> dict:
    """CPU cores used per supervised process between two :meth:`Supervisor.cpu_s` readings, plus
    ``robot_stack`` (perception + world model + policy, or their container) and ``robot_sync``
    (federated_sync_node with its SuperNode and ClientApp processes) where those ran."""
    out = {n: round((after[n] - before.get(n, 0.0)) / max(seconds, 1e-9), 3) for n in after}
    out["robot_stack"] = round(sum(v for n, v in out.items() if n in STACK_PROCESSES), 3)
    if "federated_sync_node" in out:
        out["robot_sync"] = out["federated_sync_node"]
    return out


def _start_recorder(path: pathlib.Path):
    import shutil

    from sakura_nexus.ros.bag_recorder import Recorder

    shutil.rmtree(path, ignore_errors=True)  # the rosbags writer refuses an existing bag directory
    return Recorder(path)


def _fleet_available() -> bool:
    try:
        import flwr  # noqa: F401

        from sakura_nexus.nodes import federated_sync  # noqa: F401
    except ImportError:
        return False
    return True


def _wait_for_global_model(mission: Mission, timeout: float) -> None:
    """Fleet mode: keep the robot idle (still learning) until the aggregator sent back a newer global model."""
    sync = mission.log.sync
    start = sync[0][1] if sync else 0
    print(f"waiting up to {timeout:.0f} s for a new global model from the aggregator (now v{start}) ...", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sync and sync[-1][1] > start:
            print(f"global model v{sync[-1][1]} received ({sync[-1][2]} bytes sent upstream so far)", flush=True)
            return
        time.sleep(1.0)
    print("no new global model within the wait (see logs/aggregator.log)", flush=True)


def _fleet_keys(out: pathlib.Path) -> tuple[str, str]:
    """(private key, trusted-keys file) of the demo fleet, in <out>/state/keys (new for every output dir)."""
    from sakura_nexus.federated.signing import PRIVATE_NAME, PUBLIC_NAME, generate_keys

    d = out / "state" / "keys"
    if (d / PRIVATE_NAME).exists() and (d / PUBLIC_NAME).exists():
        return str(d / PRIVATE_NAME), str(d / PUBLIC_NAME)
    return generate_keys(str(d), "sakura-nexus demo")


def _start_fleet(sup: Supervisor, out: pathlib.Path, keys: tuple[str, str]) -> None:
    """Aggregator (starting from the robots' shipped world model, signing with ``keys[0]``) + this robot's
    sync node (trusting ``keys[1]``)."""
    from sakura_nexus.federated.launcher import aggregator_command, free_port, wait_healthy

    port = free_port()
    sup.start_command("aggregator", aggregator_command(str(out / "state" / "aggregator"), port=port,
                                                       init_world_model="shipped", buffer_size=1,
                                                       sync_interval=2.0, signing_key=keys[0]))
    wait_healthy("127.0.0.1", port, 90, proc=sup.procs["aggregator"])
    sup.start(bringup.FEDERATED_SYNC, {"trusted_keys": keys[1], "superlink": f"127.0.0.1:{port}",
                                       "spool_dir": str(out / "state" / "spool"),
                                       "egress_audit_dir": str(out / "state" / "egress")})


if __name__ == "__main__":
    sys.exit(main())
