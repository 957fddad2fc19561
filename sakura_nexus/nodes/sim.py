"""sim_node: the MuJoCo factory cell (:mod:`sakura_nexus.sim`) standing in for the robot.

Thin adapter: the core does the physics and rendering. One dedicated sim thread owns the cell (and
its GL context) and runs in lock-step with the ``/clock`` it publishes: it advances the physics to
the next publication instant, paces itself against the wall clock (``real_time_factor``: 1 = real
time, 2 = twice as fast, 0 = as fast as possible), publishes ``/clock`` first and then the messages
of that instant, all stamped with that sim time. Requests from ROS callbacks (reset, teleport, goal,
friction) are queued to the sim thread, so the cell is never touched concurrently.

Topics (relative names, :data:`sakura_nexus.sim.TOPICS`, the same names as config/gz_bridge.yaml):

==========================  ==========================================  ==============================
``camera/image_raw``        sensor_msgs/Image rgb8, camera_optical_frame  camera_rate (30 Hz);
                                                                          ``sensor_reliability``, depth 1
``camera/camera_info``      sensor_msgs/CameraInfo (pinhole from fovy)  with every image, same QoS
``odom``                    nav_msgs/Odometry odom -> base_link,        100 Hz sim time, reliable 10
                            ground-truth pose, twist in base_link
``joint_states``            sensor_msgs/JointState wheel joints         100 Hz, reliable 10
                            (position rad, velocity rad/s, effort N m)
``/clock``                  rosgraph_msgs/Clock                         100 Hz + at every camera frame
``contacts``                std_msgs/Bool: the chassis touched a wall   100 Hz, reliable 10
                            or obstacle at any physics step since the
                            previous ``contacts`` message
``cmd_vel`` (sub)           geometry_msgs/Twist (linear.x, angular.z)   older than cmd_vel_timeout
                                                                        (sim time) -> zero command
``initialpose`` (sub)       geometry_msgs/PoseWithCovarianceStamped     teleport the robot (RViz)
``goal_pose`` (sub)         geometry_msgs/PoseStamped                   set the cell's goal (RViz)
``~/reset`` (srv)           std_srvs/Trigger                            robot back to the start pose
==========================  ==========================================  ==============================

``~/reset`` puts the robot at (start_x, start_y, start_yaw) when ``use_start`` is true, else at the
seeded free start pose; the layout (seed) is unchanged and sim time keeps running (it never jumps
back). Parameters: :data:`sakura_nexus.params.SIM` (docs/parameters.md).
"""

from __future__ import annotations

import math
import queue
import threading
import time

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, Twist
from nav_msgs.msg import OccupancyGrid, Odometry
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import State, TransitionCallbackReturn
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from sakura_nexus.geometry import set_yaw
from sakura_nexus.geometry import yaw_of as _yaw_of
from sakura_nexus.params import SIM
from sakura_nexus.ros.node import ERROR, OK, WARN, NexusNode, run
from sakura_nexus.ros.qos import describe, model_qos, sensor_qos, state_qos
from sakura_nexus.sim import TOPICS, WHEEL_JOINTS, CellConfig, FactoryCell, occupancy_grid
from sakura_nexus.sim.layout import MAP_RESOLUTION

STATE_RATE = 100.0  # Hz of sim time: /clock, odom, joint_states, contacts
# Message type of every topic in TOPICS (config/gz_bridge.yaml must agree: test_gazebo_assets).
MESSAGE_TYPES = {
    "image": Image, "camera_info": CameraInfo, "odom": Odometry, "joint_states": JointState, "clock": Clock,
    "contacts": Bool, "cmd_vel": Twist, "initialpose": PoseWithCovarianceStamped, "goal_pose": PoseStamped,
    "map": OccupancyGrid,
}
CAMERA_FRAME = "camera_optical_frame"
MAX_CMD = 100.0   # m/s, rad/s: a cmd_vel beyond this is not a command (the robot's limits are far below)
MAX_POSE = 50.0   # m: initial poses and goals beyond this are outside any cell (start_x/start_y range)


def _stamp(msg_stamp, t: float) -> None:
    ns = int(round(t * 1e9))
    msg_stamp.sec, msg_stamp.nanosec = divmod(ns, 1_000_000_000)


def unmapped_obstacles(flat) -> tuple:
    """``unmapped_obstacles`` (x, y, sx, sy, yaw, height per box) -> Obstacles (invalid boxes raise)."""
    from sakura_nexus.sim.layout import Obstacle

    vals = [float(v) for v in flat or []]
    if len(vals) % 6:
        raise ValueError(f"unmapped_obstacles needs 6 values per box, got {len(vals)}")
    out = []
    for i in range(0, len(vals), 6):
        x, y, sx, sy, yaw, h = vals[i:i + 6]
        if not all(math.isfinite(v) for v in (x, y, sx, sy, yaw, h)) or min(sx, sy, h) <= 0:
            raise ValueError(f"unmapped obstacle {i // 6}: {vals[i:i + 6]} is not a box")
        out.append(Obstacle(x, y, sx, sy, yaw, "box", h))
    return tuple(out)


class SimNode(NexusNode):
    def __init__(self, **kwargs):
        super().__init__("sim_node", SIM, **kwargs)
        self._cell: FactoryCell | None = None
        self._requests: queue.Queue = queue.Queue()
        self.run_while_active("sim", self._run)
        self._cmd = (0.0, 0.0, -math.inf)  # v, w, sim time received
        self._sim_time = 0.0
        self._rtf = 0.0
        self._failed: str | None = None
        self._pubs: dict = {}
        self.params.on_change(self._on_params)

    # --- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            unmapped_obstacles(self.params.unmapped_obstacles)
        except ValueError as e:
            self.get_logger().error(str(e))
            return TransitionCallbackReturn.FAILURE
        sqos, rqos = sensor_qos(self.params.sensor_reliability), state_qos(10)
        qos = {"image": sqos, "camera_info": sqos}
        qos["map"] = model_qos()  # latched, like a map_server's map
        self._pubs = {k: self.create_publisher(MESSAGE_TYPES[k], TOPICS[k], qos.get(k, rqos))
                      for k in ("image", "camera_info", "odom", "joint_states", "clock", "contacts", "map")}
        cbg = ReentrantCallbackGroup()
        for key, cb in (("cmd_vel", self._on_cmd_vel), ("initialpose", self._on_initialpose),
                        ("goal_pose", self._on_goal)):
            self.create_subscription(MESSAGE_TYPES[key], TOPICS[key], cb, state_qos(10))
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=cbg)
        self.diag.level_from(self._level)
        self.get_logger().info(f"camera QoS {describe(sqos)}; physics {self.params.physics_rate:g} Hz, "
                               f"camera {self.params.camera_rate:g} Hz, state {STATE_RATE:g} Hz")
        return TransitionCallbackReturn.SUCCESS

    def _level(self):
        if self._failed:
            return ERROR, self._failed
        if self._cell is None:
            return WARN, "starting"
        rtf = self.params.real_time_factor
        if rtf > 0 and self._rtf < 0.8 * rtf:
            return WARN, f"real-time factor {self._rtf:.2f} below the requested {rtf:g}"
        return OK, f"t={self._sim_time:.1f} s, rtf {self._rtf:.2f}"

    # --- ROS inputs (executor threads): store or queue, never touch the cell ----------------
    def _on_params(self, changed: dict) -> None:
        if "floor_friction" in changed:
            self._requests.put(("friction", float(changed["floor_friction"])))

    def _on_cmd_vel(self, msg: Twist) -> None:
        v, w = float(msg.linear.x), float(msg.angular.z)
        if not (math.isfinite(v) and math.isfinite(w)):
            self.drop("invalid_cmd_vel", f"v={v} w={w}")
            return
        if max(abs(v), abs(w)) > MAX_CMD:
            self.drop("absurd_cmd_vel", f"v={v:.3g} w={w:.3g} (limit {MAX_CMD:g})")
            return
        self._cmd = (v, w, self._sim_time)
        self.diag.count("cmd_vel_received")

    def _pose_or_drop(self, what: str, frame: str, p) -> tuple[float, float, float] | None:
        """(x, y, yaw) of a pose in the odometry frame inside the cell, or None (dropped, counted)."""
        if frame != self.params.odom_frame:
            self.drop(f"{what}_frame", f"{what} in frame '{frame}', not '{self.params.odom_frame}'")
            return None
        q = p.orientation
        vals = (p.position.x, p.position.y, q.x, q.y, q.z, q.w)
        if not all(map(math.isfinite, vals)):
            self.drop(f"nan_{what}")
            return None
        qn = math.sqrt(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w)
        if max(abs(p.position.x), abs(p.position.y)) > MAX_POSE or abs(qn - 1.0) > 0.01:
            self.drop(f"absurd_{what}", f"({p.position.x:.3g}, {p.position.y:.3g}), |q| {qn:.3g}")
            return None
        return p.position.x, p.position.y, _yaw_of(q)

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        pose = self._pose_or_drop("initialpose", msg.header.frame_id, msg.pose.pose)
        if pose is not None:
            self._requests.put(("pose", pose))

    def _on_goal(self, msg: PoseStamped) -> None:
        pose = self._pose_or_drop("goal", msg.header.frame_id, msg.pose)
        if pose is not None:
            self._requests.put(("goal", pose))

    def _on_reset(self, request, response):
        done = threading.Event()
        result = {}
        self._requests.put(("reset", (done, result)))
        if not done.wait(10.0):
            response.success, response.message = False, "sim thread did not answer (is the node active?)"
        else:
            response.success, response.message = result.get("ok", False), result.get("message", "")
        return response

    # --- sim thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # noqa: BLE001 - report, never die silently
            self._failed = f"sim thread failed: {e!r}"
            self.get_logger().error(self._failed)
        finally:
            if self._cell is not None:
                self._cell.close()  # release the GL context of this thread (re-created if reactivated)

    def _start_pose(self, cell: FactoryCell):
        p = self.params
        if p.use_start:
            return p.start_x, p.start_y, p.start_yaw
        return None

    def _handle_requests(self, cell: FactoryCell) -> bool:
        """Apply queued requests; True if the robot was moved (state must be republished)."""
        moved = False
        while True:
            try:
                kind, arg = self._requests.get_nowait()
            except queue.Empty:
                return moved
            if kind == "friction":
                cell.set_floor_friction(arg)
            elif kind == "goal":
                cell.set_goal(*arg)
            elif kind == "pose":
                cell.set_pose(*arg)
                self._cmd = (0.0, 0.0, -math.inf)
                moved = True
            elif kind == "reset":
                done, result = arg
                try:
                    goal = cell.goal
                    cell.reset(keep_time=True)
                    cell.set_goal(*goal)
                    cell.set_floor_friction(self.params.floor_friction)
                    start = self._start_pose(cell)
                    if start is not None:
                        cell.set_pose(*start)
                    self._cmd = (0.0, 0.0, -math.inf)
                    x, y, yaw = cell.pose
                    result.update(ok=True, message=f"robot at x={x:.3f} y={y:.3f} yaw={yaw:.3f}")
                    self.diag.count("resets")
                    moved = True
                except Exception as e:  # noqa: BLE001
                    result.update(ok=False, message=f"reset failed: {e!r}")
                done.set()

    def _loop(self) -> None:
        p = self.params
        if self._cell is None:
            cfg = CellConfig(seed=p.seed, floor_friction=p.floor_friction, timestep=1.0 / p.physics_rate,
                             extra_obstacles=unmapped_obstacles(p.unmapped_obstacles))
            self._cell = FactoryCell(cfg, p.camera_width, p.camera_height)
            start = self._start_pose(self._cell)
            if start is not None:
                self._cell.set_pose(*start)
            self._publish_map(self._cell)
            self.get_logger().info(
                f"cell seed {p.seed}: {len(self._cell.layout)} obstacles, floor friction "
                f"{self._cell.floor_friction:g}, robot at {tuple(round(v, 3) for v in self._cell.pose)}")
        cell = self._cell
        h = float(cell.model.opt.timestep)
        rate = 1.0 / h
        state_every = max(1, int(round(rate / STATE_RATE)))
        cam_rate = p.camera_rate
        info = self._camera_info(cell)
        s = 0                        # physics steps since this loop started
        k_cam = 0                    # camera frames since this loop started
        t_start = cell.time
        collided = cell.in_collision
        self._publish_state(cell, collided, clock=True)
        self._publish_image(cell, info)
        wall0, sim0, rtf_used = time.monotonic(), cell.time, None
        meas_wall, meas_sim = wall0, cell.time
        while not self._stop.is_set():
            if self._handle_requests(cell):
                self._publish_state(cell, cell.in_collision, clock=False)
            s_state = (s // state_every + 1) * state_every
            s_cam = int(round((k_cam + 1) * rate / cam_rate))
            s_next = min(s_state, s_cam)
            v, w, t_cmd = self._cmd
            if cell.time - t_cmd > p.cmd_vel_timeout:
                v = w = 0.0
            res = cell.step(v, w, dt=(s_next - s) * h)
            collided |= res.collided
            s = s_next
            self._sim_time = cell.time
            # pacing: sim time t is published at wall time wall0 + (t - sim0) / rtf
            rtf = p.real_time_factor
            if rtf != rtf_used:
                wall0, sim0, rtf_used = time.monotonic(), cell.time, rtf
            elif rtf > 0:
                lag = time.monotonic() - (wall0 + (cell.time - sim0) / rtf)
                if lag < 0:
                    time.sleep(-lag)
                elif lag > 0.25:  # cannot keep up: do not try to catch up in a burst
                    wall0, sim0 = time.monotonic(), cell.time
            now = time.monotonic()
            if now - meas_wall >= 1.0:
                self._rtf = (cell.time - meas_sim) / (now - meas_wall)
                meas_wall, meas_sim = now, cell.time
                self.diag.set("real_time_factor", round(self._rtf, 3))
                self.diag.set("sim_time", round(cell.time, 3))
            self._pubs["clock"].publish(self._clock_msg(cell.time))
            if s == s_state:
                self._publish_state(cell, collided, clock=False)
                collided = False
            if s == s_cam:
                self._publish_image(cell, info)
                k_cam += 1
        self.get_logger().info(f"sim thread stopped at t={cell.time:.3f} s ({cell.time - t_start:.3f} s run)")

    # --- messages -------------------------------------------------------------------------------
    @staticmethod
    def _clock_msg(t: float) -> Clock:
        msg = Clock()
        _stamp(msg.clock, t)
        return msg

    def _camera_info(self, cell: FactoryCell) -> CameraInfo:
        fx, fy, cx, cy = cell.camera_intrinsics()
        msg = CameraInfo()
        msg.header.frame_id = CAMERA_FRAME
        msg.width, msg.height = cell.camera_width, cell.camera_height
        msg.distortion_model = "plumb_bob"
        msg.d = [0.0] * 5
        msg.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        msg.p = [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        return msg

    def _publish_map(self, cell: FactoryCell, resolution: float = MAP_RESOLUTION) -> None:
        """The static map of the cell (what a map_server would provide), latched."""
        data, width, height, origin = occupancy_grid(cell.map_obstacles, cell.size[0], resolution)
        msg = OccupancyGrid()
        _stamp(msg.header.stamp, cell.time)
        msg.header.frame_id = self.params.odom_frame
        msg.info.resolution = float(resolution)
        msg.info.width, msg.info.height = int(width), int(height)
        msg.info.origin.position.x, msg.info.origin.position.y = float(origin[0]), float(origin[1])
        msg.info.origin.orientation.w = 1.0
        msg.data = data.tolist()
        self._pubs["map"].publish(msg)

    def _publish_image(self, cell: FactoryCell, info: CameraInfo) -> None:
        t = cell.time
        rgb = cell.render()
        img = Image()
        _stamp(img.header.stamp, t)
        img.header.frame_id = CAMERA_FRAME
        img.height, img.width = rgb.shape[:2]
        img.encoding = "rgb8"
        img.is_bigendian = 0
        img.step = img.width * 3
        img.data = rgb.tobytes()
        info.header.stamp = img.header.stamp
        self._pubs["image"].publish(img)
        self._pubs["camera_info"].publish(info)
        self.diag.count("frames")

    def _publish_state(self, cell: FactoryCell, collided: bool, clock: bool) -> None:
        t = cell.time
        if clock:
            self._pubs["clock"].publish(self._clock_msg(t))
        x, y, yaw = cell.pose
        vx, vy, wz = cell.body_twist
        od = Odometry()
        _stamp(od.header.stamp, t)
        od.header.frame_id = self.params.odom_frame
        od.child_frame_id = "base_link"
        od.pose.pose.position.x, od.pose.pose.position.y = x, y
        set_yaw(od.pose.pose.orientation, yaw)
        od.twist.twist.linear.x, od.twist.twist.linear.y = vx, vy
        od.twist.twist.angular.z = wz
        cov = [0.0] * 36
        for i in range(6):
            cov[i * 7] = 1e-6  # ground truth: tiny, non-zero (some consumers invert it)
        od.pose.covariance = cov
        od.twist.covariance = cov
        self._pubs["odom"].publish(od)
        js = JointState()
        js.header.stamp = od.header.stamp
        js.name = list(WHEEL_JOINTS)
        js.position = list(cell.wheel_angles)
        js.velocity = list(cell.wheel_rates)
        js.effort = list(cell.wheel_efforts)
        self._pubs["joint_states"].publish(js)
        self._pubs["contacts"].publish(Bool(data=bool(collided)))
        if collided:
            self.diag.count("collision_ticks")


def main(args=None) -> int:
    return run(SimNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
