"""policy_node: plans in the world model toward the goal; every command passes the safety layer.

Thin adapter over :mod:`sakura_nexus.control` (MPPI planner, go-to-goal baseline, safety layer).

Timing: a new ``world_state`` is planned on at once and its command published right away (so the
image-stamp -> cmd_vel latency is planning time, not timer phase); the control timer at
``control_rate`` publishes whenever no command went out during the last period — that is the path
the watchdog, e-stop and goal stop take when inputs stop, so cmd_vel never falls below the control
rate. Both paths go through the one SafetyLayer, which bounds velocity/accel/jerk for any spacing.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import torch
from geometry_msgs.msg import PoseStamped, Twist, TwistStamped
from nav_msgs.msg import OccupancyGrid, Odometry, Path
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import State, TransitionCallbackReturn
from std_msgs.msg import Bool
from std_srvs.srv import Trigger

from sakura_nexus.control.baseline import GoToGoal
from sakura_nexus.control.kinematic import ResidualUnicycle, UnicycleConfig, UnicycleModel
from sakura_nexus.control.learned import SeenObstacles
from sakura_nexus.control.planner import MPPIConfig, MPPIPlanner
from sakura_nexus.control.safety import SafetyLayer, SafetyLimits, goal_reached
from sakura_nexus.federated.common.weights import update_to_world_model_payload
from sakura_nexus.geometry import set_yaw
from sakura_nexus.geometry import yaw_of as _yaw
from sakura_nexus.models.checkpoint import load_world_model  # manifest-verified, like every loader
from sakura_nexus.models.serialization import PayloadError
from sakura_nexus.models.world_model import world_model_from_bytes
from sakura_nexus.msg import ModelUpdate, Observation, WorldState
from sakura_nexus.params import POLICY, POLICY_CORE, core_kwargs
from sakura_nexus.priority import deprioritise_current_thread
from sakura_nexus.ros.node import ERROR, OK, WARN, NexusNode, run
from sakura_nexus.ros.qos import model_qos, sensor_qos, state_qos

MAX_MAP_CELLS = 16_000_000  # 4000 x 4000 cells: a 200 m square at 5 cm; beyond this a map is refused


def _stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class PolicyNode(NexusNode):
    def __init__(self, **kwargs):
        super().__init__("policy_node", POLICY, **kwargs)
        self._lock = threading.Lock()
        self._safety = SafetyLayer(self._limits())
        self._baseline = GoToGoal()
        self._planner: MPPIPlanner | None = None
        self._model = None
        self._goal: tuple[float, float, float] | None = None
        self._goal_stamp = None
        self._state: WorldState | None = None
        self._state_time: float | None = None   # stamp (s) of the last world_state
        self._pose: tuple[float, float, float] | None = None
        self._odom_stamp: float | None = None    # stamp (s) of the newest odometry used
        self._velocity = (0.0, 0.0)              # body (v, w) from odometry (kinematic_mpc's state)
        self._kinematic = UnicycleModel(self._unicycle_config())
        self._kin_planner = MPPIPlanner(self._kinematic, self._mppi_config())
        # learned_mpc: the unicycle prior + a velocity residual learned online from odometry, and the
        # obstacles the camera's range head saw (configured with the range head's geometry)
        self._residual = ResidualUnicycle(self._unicycle_config())
        self._learned_planner = MPPIPlanner(self._residual, self._mppi_config())
        self._seen: SeenObstacles | None = None
        self._learn_last = None                  # (stamp, (v, w)) of the last odometry sample learned from
        self._plan_risk = 0.0                    # contact probability of the last learned_mpc plan
        self._range_uncertainty = 0.0
        self._grid = None                        # (int16 grid, resolution, origin) of the map
        self._target = (0.0, 0.0)
        self._sent = (0.0, 0.0)                  # the last command that left the safety layer
        self._halted = False                     # deactivating: zeros only
        self._last_pub = -math.inf               # node-clock time of the last cmd_vel
        self._callback_t0 = 0.0                  # perf_counter() at the start of the world_state callback
        self._goal_reached = False
        self._pub = self._plan_pub = None
        self._map: OccupancyGrid | None = None
        self._ctg_request = threading.Event()   # (map, goal, clearance) changed: rebuild the cost-to-go
        self._ctg_thread: threading.Thread | None = None
        self._ctg_stop = threading.Event()
        self.params.on_change(self._on_params)

    # --- parameters -------------------------------------------------------------------------
    def _limits(self) -> SafetyLimits:
        p = self.params
        kw = core_kwargs(POLICY_CORE["SafetyLimits"], p.as_dict())
        kw.update(max_v=max(p.max_v, 1e-6), max_w=max(p.max_w, 1e-6), control_period=1.0 / p.control_rate,
                  uncertainty_slow=min(p.uncertainty_slow, p.uncertainty_stop - 1e-6),
                  collision_stop=max(p.collision_stop, 1e-6))
        return SafetyLimits(**kw)

    def _unicycle_config(self) -> UnicycleConfig:
        # the planner steps at the world model's model_dt (0.1 s), the unicycle too
        return UnicycleConfig.from_limits(self._limits(), dt=0.1)

    def _mppi_config(self) -> MPPIConfig:
        return MPPIConfig(**core_kwargs(POLICY_CORE["MPPIConfig"], self.params.as_dict()))

    def _on_params(self, changed: dict) -> None:
        # Applied at once: the next control cycle uses the new limits / planner settings.
        self._safety.set_limits(self._limits())
        if set(changed) - {"controller", "diagnostics_period", "use_map", "map_clearance"}:
            if self._planner is not None:
                self._planner.set_config(self._mppi_config())
            self._kinematic.config = self._residual.config = self._unicycle_config()
            self._kin_planner.set_config(self._mppi_config())
            self._learned_planner.set_config(self._mppi_config())
        if "controller" in changed:
            self._kin_planner.reset()
            self._learned_planner.reset()
        if "obstacle_memory" in changed and self._seen is not None:
            self._seen.memory.memory_s = self.params.obstacle_memory
        if {"use_map", "map_clearance"} & set(changed):
            self._ctg_request.set()

    # --- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        p = self.params
        torch.set_num_threads(1)
        try:
            self._model = load_world_model(p.checkpoint)
            self._planner = MPPIPlanner(self._model, self._mppi_config())
            warm = self._planner.warm_up(self._model.config.latent_dim)
            self.get_logger().info(f"planner warmed up in {warm * 1e3:.0f} ms")
        except Exception as e:  # noqa: BLE001
            if p.controller == "mpc":
                self.get_logger().error(f"cannot load world model: {e}")
                return TransitionCallbackReturn.FAILURE
            self.get_logger().warning(f"no world model ({e}); mpc unavailable")
        try:
            from sakura_nexus.models.obstacles import load_range_head
            from sakura_nexus.paths import models_dir

            rcfg = load_range_head(p.range_head or models_dir() / "range_head.bin").range_config
            self._seen = SeenObstacles(rcfg, p.obstacle_memory, p.map_clearance)
            self._residual.obstacles = self._seen.memory
        except Exception as e:  # noqa: BLE001
            if p.controller == "learned_mpc":
                self.get_logger().error(f"cannot load the range head's configuration: {e}")
                return TransitionCallbackReturn.FAILURE
            self.get_logger().warning(f"no range head ({e}); learned_mpc unavailable")
        self._learned_planner.warm_up(5)
        cmd_type = TwistStamped if p.twist_stamped else Twist
        self._pub = self.create_lifecycle_publisher(cmd_type, "cmd_vel", state_qos())
        self._plan_pub = self.create_lifecycle_publisher(Path, "plan", state_qos())
        plan_group = MutuallyExclusiveCallbackGroup()  # planning never blocks parameter services
        self.create_subscription(WorldState, "world_state", self._on_world_state, state_qos(1),
                                 callback_group=plan_group)
        self.create_subscription(Odometry, "odom", self._on_odom, state_qos())
        # goals are rare, but a burst (a mission script, or a flood) must be counted, not lost in DDS
        self.create_subscription(PoseStamped, "goal_pose", self._on_goal, state_qos(100))
        self.create_subscription(Bool, "e_stop", self._on_estop, state_qos())
        self.create_subscription(ModelUpdate, "model_update", self._on_model_update, model_qos())
        self.create_subscription(OccupancyGrid, "map", self._on_map, model_qos())
        self.create_subscription(Observation, "observation", self._on_observation, sensor_qos())
        self.create_service(Trigger, "reset_estop", self._on_reset_estop)
        self._ctg_stop.clear()
        self._ctg_thread = threading.Thread(target=self._cost_to_go_loop, name="cost_to_go", daemon=True)
        self._ctg_thread.start()
        self._timer = self.create_timer(1.0 / p.control_rate, self._on_timer, callback_group=plan_group)
        self.diag.level_from(self._level)
        self.watch_clock(self._reset_time_state)
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._ctg_stop.set()
        self._ctg_request.set()
        return super().on_cleanup(state)

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self._halted = False
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        # From here on only zeros go out (a plan or timer callback still running on another executor
        # thread must not send a command after the final zero); the final zero goes out BEFORE the
        # publisher is deactivated, or it would be dropped.
        self._halted = True
        self._publish(0.0, 0.0, None)
        self.get_logger().info("deactivating: published zero cmd_vel")
        return super().on_deactivate(state)

    def _level(self):
        last = self._safety.last
        if self._safety.estopped:
            return ERROR, "e-stop latched (call reset_estop)"
        if last.stopping and self._goal is not None and not self._goal_reached:
            return WARN, "stopping: " + ",".join(last.reasons)
        return OK, ("goal reached" if self._goal_reached else "tracking goal" if self._goal else "idle")

    # --- inputs -----------------------------------------------------------------------------
    def _on_goal(self, msg: PoseStamped) -> None:
        self.diag.count("goals_received")   # = goals_accepted + the goal drops, by reason
        frame = self.params.odom_frame
        if msg.header.frame_id != frame:
            self.diag.count("goals_refused")
            self.drop("goal_frame", f"goal frame '{msg.header.frame_id}' is not '{frame}' "
                                    "(no tf is assumed; send goals in the odometry frame)", level="error")
            return
        p, q = msg.pose.position, msg.pose.orientation
        if not all(map(math.isfinite, (p.x, p.y, q.x, q.y, q.z, q.w))):
            self.diag.count("goals_refused")
            self.drop("goal_nan")
            return
        bound, qn = self.params.max_goal_distance, math.sqrt(q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w)
        if max(abs(p.x), abs(p.y)) > bound or abs(qn - 1.0) > 0.01:
            self.diag.count("goals_refused")
            self.drop("goal_absurd", f"goal ({p.x:.3g}, {p.y:.3g}) beyond max_goal_distance {bound:g} m or "
                                     f"orientation not a unit quaternion (|q| {qn:.3g})")
            return
        yaw = _yaw(msg.pose.orientation)
        with self._lock:
            self._goal = (p.x, p.y, yaw)
            self._goal_reached = False
            if self._seen is not None:
                self._seen.reset()
            for planner in (self._planner, self._kin_planner, self._learned_planner):
                if planner is not None:
                    planner.reset()
                    planner.set_cost_to_go(None)  # the old goal's field must not steer toward it
        self._ctg_request.set()
        self.diag.count("goals_accepted")
        self.get_logger().info(f"new goal ({p.x:.2f}, {p.y:.2f}, {yaw:.2f})")

    def _on_map(self, msg: OccupancyGrid) -> None:
        frame = self.params.odom_frame
        q = msg.info.origin.orientation
        if msg.header.frame_id != frame:
            self.diag.count("maps_refused")
            self.drop("map_frame", f"map frame '{msg.header.frame_id}' is not '{frame}' (no tf is assumed)",
                      level="error")
            return
        info = msg.info
        o = info.origin.position
        if not all(map(math.isfinite, (info.resolution, o.x, o.y, q.x, q.y, q.z, q.w))) \
                or info.width * info.height > MAX_MAP_CELLS or max(abs(o.x), abs(o.y)) > 1e4 \
                or not 1e-3 <= info.resolution <= 100.0:
            self.drop("absurd_map", f"{info.width}x{info.height} cells (at most {MAX_MAP_CELLS}), resolution "
                                    f"{info.resolution}, origin ({o.x:.3g}, {o.y:.3g})")
            return
        if abs(_yaw(q)) > 1e-6 or msg.info.resolution <= 0 or len(msg.data) != msg.info.width * msg.info.height:
            self.drop("bad_map", f"{msg.info.width}x{msg.info.height} cells, {len(msg.data)} values, "
                                 f"resolution {msg.info.resolution}, origin yaw {_yaw(q):.3f}")
            return
        cells = np.asarray(msg.data, np.int8)
        if cells.size and (int(cells.min()) < -1 or int(cells.max()) > 100):
            self.drop("bad_map", f"cell values {int(cells.min())}..{int(cells.max())} outside -1..100")
            return
        self._map = msg
        self.diag.count("maps_received")
        self._ctg_request.set()

    def _cost_to_go_loop(self) -> None:
        """Builds the map cost-to-go for the current goal off the executor (0.1-0.5 s per goal), then
        hands it to the planner. Until it is ready the planner uses the straight-line goal term."""
        from sakura_nexus.control.costmap import CostToGo

        # a build holds the GIL in short numpy steps for up to 0.5 s: the plans on the executor thread
        # must not wait for it (SCHED_IDLE + a 0.5 ms GIL switch interval, as the world model's learner)
        self.diag.set("cost_to_go_thread_policy", deprioritise_current_thread())
        while not self._ctg_stop.is_set():
            if not self._ctg_request.wait(0.25):
                self._reroute_seen()
                continue
            self._ctg_request.clear()
            with self._lock:
                goal, planner, grid = self._goal, self._planner, self._map
            if goal is None:
                continue
            planners = [q for q in (planner, self._kin_planner, self._learned_planner) if q is not None]
            if grid is None or not self.params.use_map:
                for q in planners:
                    q.set_cost_to_go(None)
                if self._seen is not None:
                    self._seen.set_static(None, 0.0, (0.0, 0.0), goal)
                self.diag.set("goal_term", "straight line" + ("" if grid is not None else " (no map)"))
                continue
            t0 = time.perf_counter()
            try:
                info = grid.info
                field = CostToGo.from_occupancy(grid.data, info.width, info.height, info.resolution,
                                                (info.origin.position.x, info.origin.position.y), goal[:2],
                                                radius=self.params.map_clearance)
            except Exception as e:  # noqa: BLE001 - a bad map must not end the thread
                self.drop("bad_map", repr(e))
                continue
            with self._lock:
                current = self._goal == goal and self._planner is planner
            if current and not self._ctg_request.is_set():
                for q in planners:
                    q.set_cost_to_go(field)
                if self._seen is not None:
                    grid_np = np.asarray(grid.data, dtype=np.int16).reshape(info.height, info.width)
                    self._seen.set_static(grid_np, info.resolution, (info.origin.position.x, info.origin.position.y),
                                          goal, field)
                self.diag.set("goal_term", "map cost-to-go")
                self.diag.set("cost_to_go_build_ms", round((time.perf_counter() - t0) * 1e3, 1))

    def _reroute_seen(self) -> None:
        """learned_mpc: the route with what the camera saw marked, when the memory changed (at most every
        ``route_period``); with nothing unmapped in view the memory does not change and nothing is built."""
        seen, goal, pose = self._seen, self._goal, self._pose
        if seen is None or goal is None or pose is None or self.params.controller != "learned_mpc":
            return
        now = self._now()
        if not seen.route_due(now):
            return
        t0 = time.perf_counter()
        try:
            field = seen.route(goal, pose, now)
        except Exception as e:  # noqa: BLE001 - never end the thread
            self.drop("route_failed", repr(e))
            return
        with self._lock:
            if self._goal == goal:
                self._learned_planner.set_cost_to_go(field)
        self.diag.set("seen_route_build_ms", round((time.perf_counter() - t0) * 1e3, 1))
        self.diag.count("seen_route_builds")

    def _on_observation(self, msg: Observation) -> None:
        """The range head's free ranges -> the seen-obstacle memory (at the latest odometry pose)."""
        seen, pose = self._seen, self._pose
        if seen is None or not len(msg.free_range):
            self.ignore()  # no range head here, or none on the robot: nothing for the obstacle memory
            return
        if self.future_stamp(_stamp_s(msg.header.stamp), self.checked_now(), "observation"):
            return
        cfg = seen.memory.cfg
        ranges = np.asarray(msg.free_range, dtype=np.float64)
        if len(ranges) != cfg.bins or abs(msg.free_range_fov - cfg.hfov) > 1e-3:
            self.drop("free_range_layout", f"{len(ranges)} bins over {msg.free_range_fov:.3f} rad, expected "
                                           f"{cfg.bins} over {cfg.hfov:.3f}")
            return
        if not (np.all(np.isfinite(ranges)) and math.isfinite(msg.free_range_uncertainty)):
            self.drop("nan_free_range")
            return
        if msg.free_range_uncertainty < 0.0 or float(np.min(ranges)) < 0.0 or msg.free_range_max <= 0.0:
            self.drop("absurd_free_range", f"ranges {float(np.min(ranges)):.3g}..{float(np.max(ranges)):.3g}, "
                                           f"uncertainty {msg.free_range_uncertainty:.3g}")
            return
        if pose is None:
            self.ignore("no_pose")
            return
        stamp = _stamp_s(msg.header.stamp)
        seen.observe(pose, np.clip(ranges, cfg.min_range, cfg.max_range), stamp, msg.free_range_uncertainty)
        self._range_uncertainty = float(msg.free_range_uncertainty)
        self.diag.set("seen_obstacle_points", len(seen.memory))

    def _learn_from_odom(self, stamp: float, velocity) -> None:
        """The residual learns from the robot's own stream: velocity 0.1 s apart and the command sent."""
        last = self._learn_last
        if last is not None and 0.0 < stamp - last[0] < 0.09:
            return
        if last is not None and stamp - last[0] <= 0.3:
            self._residual.observe(last[1], self._sent, velocity)
            self.diag.set("residual_samples", round(self._residual.samples, 1))
        self._learn_last = (stamp, velocity)

    def _on_odom(self, msg: Odometry) -> None:
        stamp = _stamp_s(msg.header.stamp)
        if self.future_stamp(stamp, self.checked_now(), "odom"):
            return
        if msg.header.frame_id != self.params.odom_frame:
            self.drop("odom_frame", f"odometry in frame '{msg.header.frame_id}', not '{self.params.odom_frame}'")
            return
        q, tw = msg.pose.pose.orientation, msg.twist.twist
        pose = (msg.pose.pose.position.x, msg.pose.pose.position.y, _yaw(q))
        qn = q.x * q.x + q.y * q.y + q.z * q.z + q.w * q.w
        if not all(map(math.isfinite, (*pose, qn, tw.linear.x, tw.angular.z))):
            self.drop("nan_odom", f"pose {pose}, twist ({tw.linear.x}, {tw.angular.z})")
            return
        if max(abs(pose[0]), abs(pose[1])) > 1e4 or abs(qn - 1.0) > 0.01 \
                or max(abs(tw.linear.x), abs(tw.angular.z)) > 100.0:
            self.drop("absurd_odom", f"pose {pose}, |q|^2 {qn:.3g}, twist ({tw.linear.x:.3g}, {tw.angular.z:.3g})")
            return
        last = self._odom_stamp
        if last is not None and stamp <= last:
            self.drop("duplicate_odom" if stamp == last else "out_of_order_odom",
                      f"stamp {stamp:.3f} s, the newest was {last:.3f} s")
            return
        self._odom_stamp = stamp
        self._pose = pose
        self._velocity = (tw.linear.x, tw.angular.z)
        if self.params.controller == "learned_mpc":
            self._learn_from_odom(stamp, self._velocity)

    def _on_estop(self, msg: Bool) -> None:
        if msg.data:
            if not self._safety.estopped:
                self.get_logger().error("E-STOP latched")
            self._safety.trigger_estop("e_stop topic")
            self.diag.count("estops")
            self._publish_safe(self._now())

    def _on_reset_estop(self, request, response):
        self._safety.reset_estop()
        response.success, response.message = True, "e-stop released"
        self.get_logger().warning("e-stop released by reset_estop")
        return response

    def _on_model_update(self, msg: ModelUpdate) -> None:
        current = self._model
        if current is None:
            self.ignore("no_model")
            return
        if not self.accept_model_update(msg, "world_model", int(current.version)):
            return
        try:
            payload = update_to_world_model_payload(msg.codec, bytes(msg.payload), current, int(msg.version))
            model = world_model_from_bytes(payload, like=current)
            model.version = int(msg.version)
        except (PayloadError, ValueError, KeyError, RuntimeError) as e:
            self.drop("model_update_invalid", f"world-model update v{msg.version}: {e}; the current model is kept",
                      level="error")
            return
        planner = MPPIPlanner(model, self._mppi_config())
        with self._lock:
            if self._planner is not None:  # the field depends on map and goal only: keep it
                planner.set_cost_to_go(self._planner.cost_to_go)
            self._model, self._planner = model, planner
        self.diag.count("model_update_applied")
        self.diag.set("world_model_version", msg.version)

    def _reset_time_state(self) -> None:
        """After a backward clock jump: the last world_state is from the old timeline (the watchdog
        stops the robot until a new one arrives)."""
        self._state, self._state_time = None, None
        self._odom_stamp, self._learn_last = None, None

    def _on_world_state(self, msg: WorldState) -> None:
        self._callback_t0 = time.perf_counter()
        stamp, now = _stamp_s(msg.header.stamp), self.checked_now()
        if self.future_stamp(stamp, now, "world_state"):
            return
        if msg.header.frame_id != self.params.odom_frame:
            self.drop("world_state_frame", f"world_state in frame '{msg.header.frame_id}', "
                                           f"not '{self.params.odom_frame}'")
            return
        model = self._model
        want = int(model.config.latent_dim) if model is not None else msg.latent_dim
        if len(msg.latent) != msg.latent_dim or msg.latent_dim == 0 or msg.latent_dim != want:
            self.drop("bad_world_state", f"latent has {len(msg.latent)} values, latent_dim {msg.latent_dim}"
                                         f" (the model's: {want})")
            return
        latent = np.asarray(msg.latent, np.float32)
        scalars = (msg.pose_x, msg.pose_y, msg.pose_yaw, msg.uncertainty, msg.collision_risk)
        if not (all(map(math.isfinite, scalars)) and np.all(np.isfinite(latent))):
            self.drop("nan_world_state")
            return
        if max(abs(msg.pose_x), abs(msg.pose_y)) > 1e4 or float(np.max(np.abs(latent))) > 1e6 \
                or msg.uncertainty < 0.0 or not 0.0 <= msg.collision_risk <= 1.0:
            self.drop("absurd_world_state", f"pose ({msg.pose_x:.3g}, {msg.pose_y:.3g}), |latent| up to "
                                            f"{float(np.max(np.abs(latent))):.3g}, uncertainty "
                                            f"{msg.uncertainty:.3g}, collision risk {msg.collision_risk:.3g}")
            return
        if self._state_time is not None and stamp <= self._state_time:
            self.drop("duplicate_world_state" if stamp == self._state_time else "out_of_order")
            return
        self._state, self._state_time = msg, stamp
        self.diag.sample("state_age_ms", (now - stamp) * 1e3)  # image stamp -> arrival (the watchdog's input)
        self._target, finish = self._plan(msg)
        self._publish_safe(self._now(), msg)
        if finish is not None and self._plan_pub.is_activated and self._plan_pub.get_subscription_count():
            # after the command: the plan's full-ensemble evaluation (~0.6-1.5 ms) and building the Path
            # (~0.3 ms) do not change the action, so they do not delay it; nobody listening: not done
            self._plan_pub.publish(self._path(msg.header.stamp, finish()))

    # --- control ----------------------------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _plan(self, msg: WorldState):
        """-> (action, None without a goal, else a callable returning the predicted poses [(x, y, yaw)]
        to publish, to be called after the command went out)."""
        with self._lock:
            goal, planner = self._goal, self._planner
        if goal is None:
            return (0.0, 0.0), None
        pose = self._pose or (msg.pose_x, msg.pose_y, msg.pose_yaw)
        t0 = time.perf_counter()
        if self.params.controller == "go_to_goal" or planner is None:
            # the baseline's "plan" is the straight line to the goal; published like the MPC plan (same
            # image stamp) so the closed-loop latency can be measured for either controller
            action, finish = self._baseline.command(pose, goal), lambda: [pose, goal]
        elif self.params.controller == "learned_mpc":
            lp, zl = self._learned_planner, self._residual.encode_state(pose, self._velocity)
            res = lp.plan(zl, goal, prev_action=self._target, position=pose[:2], evaluate=False)
            action = res.action
            self._plan_risk = res.info.get("risk0", 0.0)

            def finish():
                return lp.evaluate(zl, res).predicted_poses
        elif self.params.controller == "kinematic_mpc":
            # the baseline MPPI: same planner, critics and safety layer, a unicycle from odometry
            kin, zk = self._kin_planner, self._kinematic.encode_state(pose, self._velocity)
            res = kin.plan(zk, goal, prev_action=self._target, position=pose[:2], evaluate=False)
            action = res.action

            def finish():
                return kin.evaluate(zk, res).predicted_poses
        else:
            z = torch.tensor(msg.latent, dtype=torch.float32)
            res = planner.plan(z, goal, prev_action=self._target, position=pose[:2], evaluate=False)
            action = res.action

            def finish():
                return planner.evaluate(z, res).predicted_poses
        self.diag.sample("plan_ms", (time.perf_counter() - t0) * 1e3)  # mean / p99 over the last 300 plans
        return action, finish

    def _path(self, stamp, poses) -> Path:
        path = Path()
        path.header.stamp = stamp
        path.header.frame_id = self.params.odom_frame
        for x, y, yaw in poses:
            ps = PoseStamped()
            ps.header = path.header
            ps.pose.position.x, ps.pose.position.y = float(x), float(y)
            set_yaw(ps.pose.orientation, yaw)
            path.poses.append(ps)
        return path

    def _publish_safe(self, now: float, msg: WorldState | None = None) -> None:
        state = self._state
        pose = self._pose or ((state.pose_x, state.pose_y, state.pose_yaw) if state else None)
        reached = bool(self._goal and pose and goal_reached(pose, self._goal, self._safety.limits))
        if reached and not self._goal_reached:
            self.get_logger().info("goal reached")
            self.diag.count("goals_reached")
            self._goal_reached = True  # latched for reporting until the next goal
        target = (0.0, 0.0) if self._goal is None else self._target
        unc, risk = (state.uncertainty, state.collision_risk) if state else (0.0, 0.0)
        controller = self.params.controller
        if controller == "kinematic_mpc":     # the baseline: nothing learned gates it
            unc, risk = 0.0, 0.0
        elif controller == "learned_mpc":     # the plan's contact probability with what the camera saw,
            # and the range head's disagreement in the uncertainty parameters' units (its familiar-scene
            # scale 0.5 maps to uncertainty_slow)
            unc = self._range_uncertainty * self.params.uncertainty_slow / 0.5
            risk = self._plan_risk
        cmd = self._safety.filter(target[0], target[1], now, self._state_time, unc, risk, goal_reached=reached)
        self._sent = (cmd.v, cmd.w)
        self.diag.set("safety", ",".join(cmd.reasons) or "nominal")
        for r in cmd.reasons:  # how often each limit acted (a watchdog that trips every few ticks is a lag)
            self.diag.count(f"safety_{r}")
        self._publish(cmd.v, cmd.w, msg.header.stamp if msg is not None else None)
        self._last_pub = now

    def _on_timer(self) -> None:
        now = self._now()
        # publish unless an event-driven command went out within the last 3/4 period (timer jitter margin)
        if now - self._last_pub >= 0.75 / self.params.control_rate:
            self._publish_safe(now)

    def _publish(self, v: float, w: float, stamp) -> None:
        if self._pub is None:
            return
        if self._halted:
            v = w = 0.0
        twist = Twist()
        twist.linear.x, twist.angular.z = float(v), float(w)
        if self.params.twist_stamped:
            out = TwistStamped()
            out.header.frame_id = "base_link"
            # the command carries the stamp of the image it was planned from (timer ticks: now)
            out.header.stamp = stamp if stamp is not None else self.get_clock().now().to_msg()
            out.twist = twist
        else:
            out = twist
        if stamp is not None:  # planned from a world_state: the whole callback up to this publish
            self.diag.sample("callback_ms", (time.perf_counter() - self._callback_t0) * 1e3)
        self._pub.publish(out)
        self.diag.count("cmd_published")


def main(args=None) -> int:
    return run(PolicyNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
