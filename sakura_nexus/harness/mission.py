"""The mission node of the demo harness (rclpy, in the harness process): sends goal_pose and records what
the robot does, from ROS topics only (odom, contacts, world_state, plan, cmd_vel, camera, sync_status,
/diagnostics) into a :class:`~sakura_nexus.harness.latency.MissionLog`; :func:`drive` takes it through
a list of goals. rclpy is imported when a :class:`Mission` is made, not with this module."""

from __future__ import annotations

import ast
import math
import struct
import sys
import threading
import time

from sakura_nexus.geometry import set_yaw, yaw_of
from sakura_nexus.harness.latency import MissionLog, trim_oldest
from sakura_nexus.harness.supervisor import Supervisor

CLOCK_STEP_MAX = 5.0  # s of sim time per 0.2 s poll (real-time factor 25): a larger step is a clock jump


class Mission:
    """In-process rclpy node that sends goals and records what the robot does (topics only).

    Two nodes, two executor threads: ``node`` (sim time) takes the high-rate plain topics (odom,
    contacts, /clock at 100+ Hz) on rclpy's C++ EventsExecutor where available, so the harness stays
    light on a 2-core machine; ``timing`` (wall clock) takes the per-frame topics whose DDS source /
    reception timestamps are recorded, with (msg, MessageInfo) callbacks on a SingleThreadedExecutor
    (the EventsExecutor of rclpy 9.1 cannot call those)."""

    def __init__(self, namespace: str = "", hops: bool = False, diagnostics: bool = False, frames: bool = True):
        """``frames``: also take the camera's frames (their stamps: image -> cmd_vel latency) and camera
        info; a run that does not report latency (the soak) leaves them out: ~30 VGA frames/s copied into
        this process cost the harness CPU the robot stack then lacks on a 2-core machine."""
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
        if frames:
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
        trim_oldest(self.log.ws_src)

    def _on_obs(self, m, info):
        k = self._key(m.header.stamp)
        self.log.obs_src[k] = info["source_timestamp"]
        self.log.obs_compute[k] = float(m.compute_time)
        trim_oldest(self.log.obs_src)
        trim_oldest(self.log.obs_compute)

    def _on_image_raw(self, data: bytes, info):
        # CDR: 4-byte encapsulation header, then header.stamp (int32 sec, uint32 nanosec), little endian
        if len(data) >= 12 and data[1] == 1:
            sec, nsec = struct.unpack_from("<iI", data, 4)
            self.log.image_src[sec * 10**9 + nsec] = info["source_timestamp"]
            trim_oldest(self.log.image_src)

    def _on_info(self, m, info):
        self.log.info_src[self._key(m.header.stamp)] = info["source_timestamp"]
        trim_oldest(self.log.info_src)

    def _on_plan(self, m, info):
        k = self._key(m.header.stamp)
        self.log.plan_src[k] = info["source_timestamp"]
        self.log.plan_rx[k] = info["received_timestamp"]
        self.log.plan_poses[k] = len(m.poses)
        trim_oldest(self.log.plan_src)
        trim_oldest(self.log.plan_rx)
        trim_oldest(self.log.plan_poses)

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

