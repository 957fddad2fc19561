"""policy_node as a separate process: watchdog, e-stop latch/reset, live limits, shutdown zero command,
goal frame check, MPC with a world model. Timing assertions use the cmd_vel receive times."""

import math
import signal
import time

import numpy as np
import pytest
from helpers import NodeProcess, wait_for

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
        self.goal_pub = ros_node.create_publisher(PoseStamped, "goal_pose", 10)
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
        assert wait_for(lambda: "goal refused" in rig.proc.output(), 5)

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
        rig.stream(1.0)
        assert wait_for(lambda: len(plans) > 5, 5), rig.proc.output()
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
