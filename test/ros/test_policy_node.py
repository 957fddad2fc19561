"""policy_node as a separate process: watchdog, e-stop latch/reset, live limits, shutdown zero command,
goal frame check, MPC with a world model. Timing assertions use the cmd_vel receive times."""

import math
import signal
import time

import numpy as np
import pytest
from helpers import NodeProcess, diag_values, signed_update, wait_for

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def wm_file(tmp_path_factory):
    import torch

    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wm") / "world_model.bin"
    path.write_bytes(world_model_to_bytes(WorldModel()))
    return path


class Rig:
    def __init__(self, ros_node, params):
        from geometry_msgs.msg import PoseStamped, Twist
        from nav_msgs.msg import Odometry
        from std_msgs.msg import Bool

        from sakura_nexus.msg import WorldState

        self.ros = ros_node
        self.cmds = []  # (monotonic receive time, v, w)
        ros_node.create_subscription(Twist, "cmd_vel", lambda m: self.cmds.append(
            (time.monotonic(), m.linear.x, m.angular.z)), 100)
        self.ws_pub = ros_node.create_publisher(WorldState, "world_state", 10)
        self.odom_pub = ros_node.create_publisher(Odometry, "odom", 10)
        self.goal_pub = ros_node.create_publisher(PoseStamped, "goal_pose", 1000)
        self.estop_pub = ros_node.create_publisher(Bool, "e_stop", 10)
        self.proc = NodeProcess("policy", {"controller": "go_to_goal", **params})
        for topic in ("world_state", "goal_pose", "e_stop", "odom"):
            assert wait_for(lambda t=topic: self.ros.count_subscribers(t) > 0, 20), self.proc.output()
        assert wait_for(lambda: self.ros.count_publishers("cmd_vel") > 0, 10)

    def world_state(self, latent_dim=32):
        from sakura_nexus.msg import WorldState

        m = WorldState()
        m.header.stamp = self.ros.get_clock().now().to_msg()
        m.header.frame_id = "odom"
        m.latent = [0.0] * latent_dim
        m.latent_dim = latent_dim
        m.uncertainty, m.collision_risk = 0.1, 0.0
        self.ws_pub.publish(m)
        from nav_msgs.msg import Odometry

        o = Odometry()
        o.header = m.header
        o.pose.pose.orientation.w = 1.0
        self.odom_pub.publish(o)

    def goal(self, x, y, frame="odom"):
        from geometry_msgs.msg import PoseStamped

        g = PoseStamped()
        g.header.frame_id = frame
        g.pose.position.x, g.pose.position.y = x, y
        g.pose.orientation.w = 1.0
        self.goal_pub.publish(g)

    def stream(self, seconds, rate=30.0):
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            self.world_state()
            time.sleep(1.0 / rate)

    def last_v(self):
        return self.cmds[-1][1] if self.cmds else None


def test_watchdog_estop_live_limits_and_shutdown(ros_node):
    rig = Rig(ros_node, {"watchdog_timeout": 0.1, "control_rate": 20.0, "max_v": 0.5})
    try:
        rig.goal(5.0, 0.0)
        rig.stream(1.5)
        assert rig.last_v() > 0.3, rig.proc.output()
        # live parameter: max speed takes effect on the next cycle
        res = rig.ros.set_params("policy_node", {"max_v": 0.2})
        assert res[0].successful
        t_set = time.monotonic()
        rig.stream(0.5)
        after = [v for t, v, _ in rig.cmds if t > t_set + 0.06]  # one control period later
        assert after and max(after) <= 0.2 + 1e-9
        assert not rig.ros.set_params("policy_node", {"max_v": 9.0})[0].successful  # out of range

        # watchdog: world_state stops -> zero within timeout + one control period
        rig.stream(0.3)
        t_last = time.monotonic()
        assert wait_for(lambda: rig.last_v() == 0.0 and rig.cmds[-1][0] > t_last, 2.0)
        t_zero = next(t for t, v, _ in rig.cmds if t > t_last and v == 0.0)
        assert t_zero - t_last <= 0.1 + 0.05 + 0.03, t_zero - t_last  # + ~30 ms transport/scheduling slack
        n = len(rig.cmds)
        time.sleep(0.5)
        assert len(rig.cmds) - n >= 8  # the timer keeps commanding (zero) at the control rate

        # e-stop latches until reset
        from std_msgs.msg import Bool
        from std_srvs.srv import Trigger

        rig.stream(0.5)
        assert rig.last_v() > 0.1
        rig.estop_pub.publish(Bool(data=True))
        time.sleep(0.2)
        t_e = time.monotonic()
        rig.stream(1.0)
        assert all(v == 0.0 for t, v, _ in rig.cmds if t > t_e)
        cli = rig.ros.create_client(Trigger, "reset_estop")
        assert cli.wait_for_service(5)
        fut = cli.call_async(Trigger.Request())
        assert wait_for(fut.done, 5) and fut.result().success
        rig.stream(1.0)
        assert rig.last_v() > 0.1

        # a goal in a foreign frame is refused
        rig.goal(1.0, 1.0, frame="map")
        assert wait_for(lambda: "dropped input (goal_frame)" in rig.proc.output(), 5)

        # SIGINT: the last command published is zero
        rig.stream(0.3)
        assert rig.last_v() > 0.0
        rig.proc.proc.send_signal(signal.SIGINT)
        rig.proc.proc.wait(10)
        time.sleep(0.3)
        assert rig.proc.proc.returncode == 0
        assert rig.cmds[-1][1] == 0.0 and rig.cmds[-1][2] == 0.0
    finally:
        rig.proc.stop()


def test_mpc_plans_with_a_world_model(ros_node, wm_file):
    from nav_msgs.msg import Path

    rig = Rig(ros_node, {"controller": "mpc", "checkpoint": str(wm_file), "samples": 64})
    plans = ros_node.collect(Path, "plan", 10)
    try:
        rig.goal(2.0, 1.0)
        # the plan is published only once its subscriber has matched (policy_node skips building it for
        # nobody): keep the world state coming until the test's subscription is discovered and plans flow
        t_end = time.monotonic() + 6.0
        while len(plans) <= 5 and time.monotonic() < t_end:
            rig.stream(0.2)
        assert len(plans) > 5, rig.proc.output()
        p = plans[-1]
        assert p.header.frame_id == "odom" and len(p.poses) == 15
        assert all(math.isfinite(ps.pose.position.x) for ps in p.poses)
        vs = np.array([v for _, v, _ in rig.cmds])
        assert np.all(np.abs(vs) <= 0.5 + 1e-9)

        # static map (nav_msgs/OccupancyGrid, latched): one in a foreign frame is refused, one in the
        # odom frame turns the goal term into the map cost-to-go (built off the executor)
        from diagnostic_msgs.msg import DiagnosticArray
        from nav_msgs.msg import OccupancyGrid

        from sakura_nexus.ros.qos import model_qos
        from sakura_nexus.sim import generate_layout, occupancy_grid
        from sakura_nexus.sim.layout import CellConfig

        diags = ros_node.collect(DiagnosticArray, "/diagnostics", 50)
        map_pub = ros_node.node.create_publisher(OccupancyGrid, "map", model_qos())

        def values():
            for arr in reversed(diags):
                for st in arr.status:
                    if "policy_node" in st.name:
                        return {kv.key: kv.value for kv in st.values}
            return {}

        data, w, h, origin = occupancy_grid(generate_layout(CellConfig(seed=3)).obstacles, 6.0, 0.05)
        grid = OccupancyGrid()
        grid.info.resolution, grid.info.width, grid.info.height = 0.05, w, h
        grid.info.origin.position.x, grid.info.origin.position.y = origin
        grid.info.origin.orientation.w = 1.0
        grid.data = data.tolist()
        grid.header.frame_id = "map"
        map_pub.publish(grid)
        assert wait_for(lambda: values().get("maps_refused") == "1", 10), rig.proc.output()
        grid.header.frame_id = "odom"
        map_pub.publish(grid)
        rig.goal(1.5, -1.0)
        rig.stream(1.0)
        assert wait_for(lambda: values().get("goal_term") == "map cost-to-go", 10), (values(), rig.proc.output())
        n = len(plans)
        rig.stream(0.5)
        assert len(plans) > n and all(math.isfinite(ps.pose.position.x) for ps in plans[-1].poses)
    finally:
        rig.proc.stop()


def test_log_flood_absurd_goals_and_signed_updates(ros_node, wm_file, tmp_path):
    """1,000 absurd goals: every one refused and counted, <= 5 log lines of that reason. NaN / non-unit
    orientations refused. Unsigned, foreign-key, tampered and replayed world-model updates refused, a
    correctly signed newer one applied."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped

    from sakura_nexus.federated.common.signing import Signer, generate_keys
    from sakura_nexus.models.serialization import sha256_hex
    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes
    from sakura_nexus.msg import ModelUpdate
    from sakura_nexus.ros.qos import model_qos

    signer_path, trusted = generate_keys(str(tmp_path / "fleet"))
    signer, attacker = Signer.load(signer_path), Signer.load(generate_keys(str(tmp_path / "evil"))[0])
    diags = ros_node.collect(DiagnosticArray, "/diagnostics", 10)
    update_pub = ros_node.create_publisher(ModelUpdate, "model_update", model_qos())
    rig = Rig(ros_node, {"checkpoint": str(wm_file), "trusted_keys": trusted, "max_goal_distance": 100.0})
    try:
        def goal(x, y, q=(0.0, 0.0, 0.0, 1.0)):
            g = PoseStamped()
            g.header.frame_id = "odom"
            g.pose.position.x, g.pose.position.y = x, y
            g.pose.orientation.x, g.pose.orientation.y, g.pose.orientation.z, g.pose.orientation.w = q
            rig.goal_pub.publish(g)

        # the flood must start after the node's goal subscription has matched (volatile: earlier ones
        # are lost; on a fresh-clone CI machine with many participants around that took ~3 s)
        assert wait_for(lambda: rig.goal_pub.get_subscription_count() > 0, 20)
        goal(2e38, 0.0)
        assert wait_for(lambda: int(diag_values(diags, "policy_node").get("goals_received", 0)) >= 1, 20)
        t0 = time.monotonic()
        for i in range(1000):
            goal(1e38 if i % 2 else 150.0, 0.0)
            time.sleep(0.002)  # ~400 Hz for ~2.5 s: inside the 1 s log throttle's 5-line budget
        t_flood = time.monotonic() - t0
        goal(1.0, float("nan"))
        goal(1.0, 1.0, (0.0, 0.0, float("nan"), 1.0))
        goal(1.0, 1.0, (0.0, 0.0, 0.0, 2.0))
        goal(2.0, 0.0)  # a sane goal still gets through

        def refused():
            kv = diag_values(diags, "policy_node")
            return kv.get("dropped_goal_nan") == "2" and kv.get("goals_accepted") == "1"

        assert wait_for(refused, 10), (diag_values(diags, "policy_node"), rig.proc.output()[-2000:])
        time.sleep(1.5)  # the counters are final
        kv = diag_values(diags, "policy_node")
        received, absurd = int(kv.get("goals_received", 0)), int(kv.get("dropped_goal_absurd", 0))
        # every goal that reached the node is accounted for by reason (with a depth-10 goal queue DDS lost
        # up to 43 % of the flood on a loaded VM; the node's goal queue is 100 deep now: 1001 of 1001)
        assert absurd + 2 + 1 == received, kv          # (the probe goal above is one of the absurd ones)
        assert received >= 500, kv
        lines = [ln for ln in rig.proc.output().splitlines() if "(goal_absurd)" in ln]
        print(f"\nFLOOD: 1,000 absurd goals (+1 non-unit quaternion) in {t_flood:.2f} s; counted "
              f"{diag_values(diags, 'policy_node').get('dropped_goal_absurd')}; {len(lines)} log lines of that reason")
        assert 1 <= len(lines) <= 5, lines

        current = 0  # WorldModel() default version
        payload = world_model_to_bytes(WorldModel(), version=5)
        evil = world_model_to_bytes(WorldModel(), version=5)
        for bad in (signed_update(None, "world_model", 5, payload), signed_update(attacker, "world_model", 5, payload),
                    signed_update(signer, "world_model", 5, payload, tamper={"payload": evil,
                                                                               "sha256": sha256_hex(evil)}),
                    signed_update(signer, "world_model", current, payload)):
            update_pub.publish(bad)
            time.sleep(0.3)
        update_pub.publish(signed_update(signer, "world_model", 5, payload))

        def applied():
            kv = diag_values(diags, "policy_node")
            return kv.get("model_update_applied") == "1" and kv.get("world_model_version") == "5" and all(
                kv.get(f"dropped_model_update_{r}") == "1" for r in ("unsigned", "unknown_key", "bad_signature",
                                                                     "replayed"))

        assert wait_for(applied, 10), diag_values(diags, "policy_node")
    finally:
        rig.proc.stop()


def test_foreign_clock_world_state_and_clock_jumps(ros_node):
    """Sim time: a world_state stamped on the wall clock is dropped (and does not block the next ones); after
    the clock jumps back (sim reset) planned commands resume within 1 s of sane input."""
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TwistStamped
    from rosgraph_msgs.msg import Clock

    from sakura_nexus.msg import WorldState

    diags = ros_node.collect(DiagnosticArray, "/diagnostics", 10)
    clock_pub = ros_node.create_publisher(Clock, "/clock", 10)
    ws_pub = ros_node.create_publisher(WorldState, "world_state", 10)
    planned = []  # (monotonic receive time, stamp) of commands carrying a world_state's stamp
    sent = set()
    ros_node.create_subscription(TwistStamped, "cmd_vel", lambda m: planned.append(
        (time.monotonic(), m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)) if (
        m.header.stamp.sec, m.header.stamp.nanosec) in sent else None, 100)
    proc = NodeProcess("policy", {"controller": "go_to_goal", "use_sim_time": True, "twist_stamped": True})

    def stamp(t):
        return Time(sec=int(round(t * 1e9)) // 10**9, nanosec=int(round(t * 1e9)) % 10**9)

    def world_state(t):
        m = WorldState()
        m.header.stamp, m.header.frame_id = stamp(t), "odom"
        m.latent, m.latent_dim = [0.0] * 32, 32
        m.uncertainty = 0.01
        sent.add((m.header.stamp.sec, m.header.stamp.nanosec))
        ws_pub.publish(m)

    def run(t, seconds):
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            t += 1 / 30
            clock_pub.publish(Clock(clock=stamp(t)))
            world_state(t)
            time.sleep(1 / 30)
        return t

    def resumed_after(t_wall, below=None, above=None):
        return next((rx - t_wall for rx, st in list(planned) if rx > t_wall and (below is None or st < below)
                     and (above is None or st > above)), None)

    try:
        assert wait_for(lambda: ros_node.count_subscribers("world_state") > 0, 30), proc.output()
        # before the first /clock (the node's clock reads 0): must not become the reference. Sent until the node
        # has counted one (depth 1: a node still configuring on a loaded machine would only see the last one)
        def no_clock_counted():
            world_state(2.1e9)
            return int(diag_values(diags, "policy_node").get("dropped_no_clock_world_state", 0)) >= 1

        assert wait_for(no_clock_counted, 30, period=0.2), (diag_values(diags, "policy_node"), proc.output()[-2000:])
        t = 100.0
        for _ in range(40):  # until the node is configured and planning
            t = run(t, 0.5)
            if planned:
                break
        assert planned, proc.output()[-2000:]
        world_state(time.time())  # the wall clock while the graph runs on sim time
        t_fault = time.monotonic()
        time.sleep(0.1)  # world_state is depth 1: the next one must not overwrite it before it is taken
        t = run(t, 1.5)
        dt = resumed_after(t_fault + 0.02, below=1e6)
        assert dt is not None and dt < 1.0, (dt, proc.output()[-2000:])
        t_fault = time.monotonic()
        run(5.0, 2.0)  # sim reset
        dt = resumed_after(t_fault, below=50.0)
        assert dt is not None and dt < 1.0, (dt, proc.output()[-2000:])
        print(f"\nPOLICY: planned commands resumed {dt * 1e3:.0f} ms after the sim reset")
        assert wait_for(lambda: diag_values(diags, "policy_node").get("dropped_future_stamp_world_state") == "1"
                        and int(diag_values(diags, "policy_node").get("dropped_no_clock_world_state", 0)) >= 1
                        and int(diag_values(diags, "policy_node").get("clock_jumps_backward", 0)) >= 1, 5), \
            sorted(diag_values(diags, "policy_node").items())
    finally:
        proc.stop()
