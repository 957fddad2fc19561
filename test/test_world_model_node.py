"""world_model_node as a separate process: stamp alignment, drops, deltas, model updates, and
kill -9 / restart from checkpoints (including a truncated newest checkpoint)."""

import glob
import os
import signal
import time

import numpy as np
import pytest
from helpers import NodeProcess, wait_for

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    import torch

    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("wm")
    (d / "world_model.bin").write_bytes(world_model_to_bytes(WorldModel(version=1)))
    return d


class Feed:
    """Publishes odom (100 Hz), cmd_vel and observations (30 Hz) with consistent stamps."""

    def __init__(self, ros_node):
        from geometry_msgs.msg import Twist
        from nav_msgs.msg import Odometry

        from sakura_nexus.msg import ModelDelta, ModelUpdate, Observation, WorldState
        from sakura_nexus.ros.qos import model_qos

        self.ros = ros_node
        self.odom_pub = ros_node.create_publisher(Odometry, "odom", 50)
        self.cmd_pub = ros_node.create_publisher(Twist, "cmd_vel", 10)
        self.obs_pub = ros_node.create_publisher(Observation, "observation", 10)
        self.update_pub = ros_node.create_publisher(ModelUpdate, "model_update", model_qos())
        self.states = ros_node.collect(WorldState, "world_state", 200)
        self.deltas = ros_node.collect(ModelDelta, "model_delta", 50)
        self.sent = []
        self.rng = np.random.default_rng(0)
        self.x = 0.0

    def run(self, seconds, misalign_every=0):
        from geometry_msgs.msg import Twist
        from nav_msgs.msg import Odometry

        from sakura_nexus.msg import Observation

        t_end = time.monotonic() + seconds
        k = 0
        while time.monotonic() < t_end:
            now = self.ros.get_clock().now()
            for _ in range(3):
                o = Odometry()
                o.header.stamp = now.to_msg()
                self.x += 0.003
                o.pose.pose.position.x = self.x
                o.pose.pose.orientation.w = 1.0
                o.twist.twist.linear.x = 0.3
                self.odom_pub.publish(o)
            tw = Twist()
            tw.linear.x = 0.3
            self.cmd_pub.publish(tw)
            ob = Observation()
            ob.header.stamp = now.to_msg()
            if misalign_every and k % misalign_every == 0:
                ob.header.stamp.sec -= 5  # no odometry 5 s ago -> misaligned (or stale)
            ob.embedding = self.rng.standard_normal(64).astype(np.float32)
            self.obs_pub.publish(ob)
            self.sent.append(ob.header.stamp.sec * 10**9 + ob.header.stamp.nanosec)
            k += 1
            time.sleep(1 / 30)


def _ns(stamp):
    return stamp.sec * 10**9 + stamp.nanosec


def test_alignment_deltas_and_model_update(ros_node, ckpt_dir):
    from sakura_nexus.models.serialization import sha256_hex
    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes
    from sakura_nexus.msg import ModelUpdate

    feed = Feed(ros_node)
    proc = NodeProcess("world_model", {"checkpoint": str(ckpt_dir), "delta_period": 1.0, "max_input_age": 2.0,
                                       "learning_steps_per_s": 50.0, "batch_size": 8})
    try:
        assert wait_for(lambda: ros_node.count_subscribers("observation") > 0, 20), proc.output()
        feed.run(4.0, misalign_every=4)
        assert wait_for(lambda: len(feed.states) > 30, 5), proc.output()
        got = {_ns(s.header.stamp) for s in feed.states}
        assert got <= set(feed.sent)  # every world_state carries the stamp of its observation
        misaligned = set(feed.sent[::4])
        assert not got & misaligned  # ... and none of the misaligned ones got through
        s = feed.states[-1]
        assert s.latent_dim == len(s.latent) and len(s.predicted) == s.horizon * s.latent_dim == 15 * s.latent_dim
        assert np.isfinite(s.uncertainty) and 0 <= s.collision_risk <= 1 and s.model_version == 1
        assert wait_for(lambda: len(feed.deltas) >= 2, 5), proc.output()
        seqs = [d.sequence for d in feed.deltas]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and seqs[0] >= 1
        d = feed.deltas[-1]
        assert d.base_version == 1 and d.sample_count > 0 and 0 < d.l2_norm < 100 and np.isfinite(d.local_loss)
        from sakura_nexus.federated import codecs

        decoded = codecs.decode(bytes(d.payload))
        assert abs(float(np.linalg.norm(decoded)) - d.l2_norm) < 1e-3 * max(1.0, d.l2_norm)

        # a new global model replaces the weights; the delta accounting restarts from it
        payload = world_model_to_bytes(WorldModel(), version=7)
        feed.update_pub.publish(ModelUpdate(model_id="world_model", version=7, codec="state-dict-v1",
                                            payload=payload, sha256=sha256_hex(payload)))
        feed.run(1.5)
        assert wait_for(lambda: feed.states[-1].model_version == 7, 5), proc.output()
        n = len(feed.deltas)
        feed.run(2.0)
        assert wait_for(lambda: len(feed.deltas) > n, 5)
        assert feed.deltas[-1].base_version == 7 and feed.deltas[-1].sequence > seqs[-1]
        # diagnostics count the misaligned drops
        from diagnostic_msgs.msg import DiagnosticArray

        diags = ros_node.collect(DiagnosticArray, "/diagnostics", 10)
        assert wait_for(lambda: any("world_model_node" in st.name for a in diags for st in a.status), 5)
        st = [st for a in diags for st in a.status if "world_model_node" in st.name][-1]
        kv = {x.key: x.value for x in st.values}
        assert int(kv.get("dropped_misaligned", 0)) + int(kv.get("dropped_stale", 0)) >= len(misaligned) - 1
    finally:
        proc.stop()


def test_kill9_resume_and_truncated_checkpoint(ros_node, ckpt_dir, tmp_path):
    feed = Feed(ros_node)
    state = tmp_path / "state"
    params = {"checkpoint": str(ckpt_dir), "state_dir": str(state), "checkpoint_period": 1.0,
              "delta_period": 0.5, "learning_steps_per_s": 50.0, "batch_size": 8}
    proc = NodeProcess("world_model", params)
    try:
        assert wait_for(lambda: ros_node.count_subscribers("observation") > 0, 20)
        feed.run(3.5)
        assert wait_for(lambda: len(glob.glob(str(state / "*.ckpt"))) >= 2, 5), proc.output()
        last_seq = max(d.sequence for d in feed.deltas)
        proc.proc.send_signal(signal.SIGKILL)  # kill -9 mid-training
        proc.proc.wait(5)
    finally:
        proc.stop()
    ckpts = sorted(glob.glob(str(state / "*.ckpt")))
    assert len(ckpts) >= 2
    newest = ckpts[-1]
    with open(newest, "r+b") as f:  # truncate the newest checkpoint: it must be refused
        f.truncate(os.path.getsize(newest) // 2)
    proc2 = NodeProcess("world_model", params)
    try:
        assert wait_for(lambda: "resumed from" in proc2.output(), 30), proc2.output()
        out = proc2.output()
        assert os.path.basename(ckpts[-2]) in out and "skipped corrupt" in out
        n = len(feed.deltas)
        feed.run(2.0)
        assert wait_for(lambda: len(feed.deltas) > n, 5)
        # sequence numbers continue after the last one published before the kill: never reused
        assert min(d.sequence for d in feed.deltas[n:]) > last_seq
    finally:
        proc2.stop()
