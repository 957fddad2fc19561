"""federated_sync_node as a separate ROS process, against a real Flower 1.42 aggregator on loopback.

1. Fleet: two robots in namespaces (robot1, robot2), each world_model_node + federated_sync_node, fed
   with synthetic odom / observation / cmd_vel streams from this process so the world models learn and
   emit deltas every 1.5 s; the aggregator (``python -m sakura_nexus aggregator --init-world-model``,
   K = 2) starts from the robots' checkpoint. Once the global version increments, learning is paused
   and the fleet settles (the robots keep spooling until then): every spooled delta is
   acknowledged and BOTH world_model_nodes run the aggregator's final version (world_state.model_version)
   with exactly the aggregator's weights; everything the robots sent upstream (the ClientApp's egress
   audit copy) is codec payloads of weight deltas only.
2. kill -9 of federated_sync_node while it is appending: every delta it reported spooled is in the
   spool after the crash, the restarted node resumes its uplink state (the spooled increments still sum
   to exactly the last cumulative delta: nothing lost, nothing counted twice), kills the orphaned
   SuperNode of its predecessor, restarts its own SuperNode when that dies and stops it on shutdown.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from helpers import NodeProcess, wait_for

pytestmark = [pytest.mark.ros, pytest.mark.slow]
pytest.importorskip("flwr")

CODEC = "topk0.01+q8"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import torch

    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("wm")
    wm = WorldModel(version=1)
    (d / "world_model.bin").write_bytes(world_model_to_bytes(wm))
    return d, wm.num_parameters()


@pytest.fixture
def fast_flower(monkeypatch):
    # SuperExec polls for ClientApp/ServerApp tasks every 1 s by default
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")


class Feed(threading.Thread):
    """Odometry (30 Hz), cmd_vel and observations (10 Hz) with consistent stamps into each namespace."""

    def __init__(self, ros_node, namespaces):
        super().__init__(daemon=True)
        from geometry_msgs.msg import Twist
        from nav_msgs.msg import Odometry

        from sakura_nexus.msg import Observation

        self.ros = ros_node
        self.pubs = {ns: (ros_node.create_publisher(Odometry, f"/{ns}/odom", 50),
                          ros_node.create_publisher(Twist, f"/{ns}/cmd_vel", 10),
                          ros_node.create_publisher(Observation, f"/{ns}/observation", 10))
                     for ns in namespaces}
        self.stop = threading.Event()
        self.rng = np.random.default_rng(0)

    def run(self):
        from geometry_msgs.msg import Twist
        from nav_msgs.msg import Odometry

        from sakura_nexus.msg import Observation

        x, k = 0.0, 0
        emb = self.rng.standard_normal((50, 64)).astype(np.float32)
        while not self.stop.is_set():
            now = self.ros.get_clock().now()
            x += 0.03
            for odom_pub, cmd_pub, obs_pub in self.pubs.values():
                o = Odometry()
                o.header.stamp = now.to_msg()
                o.header.frame_id = "odom"
                o.pose.pose.position.x = x
                o.pose.pose.orientation.w = 1.0
                o.twist.twist.linear.x = 0.3
                for _ in range(3):
                    odom_pub.publish(o)
                cmd_pub.publish(Twist())
                ob = Observation()
                ob.header.stamp = now.to_msg()
                ob.embedding = emb[k % len(emb)]
                obs_pub.publish(ob)
            k += 1
            time.sleep(0.1)


def _status(store):
    try:
        with open(os.path.join(store, "status.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def _flat(payload: bytes) -> np.ndarray:
    """The flat weight vector of a model_update payload (flat-vector-v1: the aggregator's signed global model)."""
    from sakura_nexus.federated.common.codecs import decode

    return decode(payload)


def test_two_robots_learn_sync_and_hot_swap_the_global_model(ros_node, ckpt, tmp_path, fast_flower):
    from sakura_nexus.federated.common.egress import check_egress, load_audit
    from sakura_nexus.federated.common.flower_cli import free_port, wait_healthy
    from sakura_nexus.federated.fleet.aggregator import GlobalModelStore
    from sakura_nexus.msg import ModelDelta, ModelUpdate, SyncStatus, WorldState
    from sakura_nexus.ros.qos import model_qos

    t0 = time.monotonic()
    ckpt_dir, n_params = ckpt
    robots = ("robot1", "robot2")
    from sakura_nexus.federated.common.signing import generate_keys

    store, port = str(tmp_path / "agg"), free_port()
    signing_key, trusted = generate_keys(str(tmp_path / "keys"))  # the aggregator signs, the robots trust
    agg_log = open(tmp_path / "aggregator.log", "w")
    agg = subprocess.Popen(
        [sys.executable, "-m", "sakura_nexus", "aggregator", "--store-dir", store, "--port", str(port),
         "--init-world-model", str(ckpt_dir), "--buffer-size", "2", "--sync-interval", "2",
         "--allowed-codecs", CODEC, "--clip-norm", "10", "--signing-key", signing_key],
        stdout=subprocess.PIPE, stderr=agg_log, text=True, start_new_session=True)
    procs: list[NodeProcess] = []
    feed = Feed(ros_node, robots)
    got = {r: {"states": ros_node.collect(WorldState, f"/{r}/world_state", 50),
               "status": ros_node.collect(SyncStatus, f"/{r}/sync_status", 10),
               "updates": ros_node.collect(ModelUpdate, f"/{r}/model_update", model_qos()),
               "deltas": ros_node.collect(ModelDelta, f"/{r}/model_delta", 10)} for r in robots}
    audit = {r: str(tmp_path / f"audit_{r}") for r in robots}
    try:
        for r in robots:
            procs.append(NodeProcess("world_model", {
                "checkpoint": str(ckpt_dir), "delta_period": 1.5, "max_input_age": 2.0,
                "learning_steps_per_s": 10.0, "batch_size": 8, "trusted_keys": trusted}, namespace=f"/{r}"))
        feed.start()
        # sync nodes once the SuperLink answers (a SuperNode that finds none backs off for many seconds)
        assert wait_healthy("127.0.0.1", port, 90, proc=agg), open(tmp_path / "aggregator.log").read()[-3000:]
        for r in robots:
            procs.append(NodeProcess("federated_sync", {
                "checkpoint": str(ckpt_dir), "spool_dir": str(tmp_path / f"spool_{r}"),
                "superlink": f"127.0.0.1:{port}", "codec": CODEC, "clip_norm": 10.0, "poll_period": 0.5,
                "egress_audit_dir": audit[r], "trusted_keys": trusted}, namespace=f"/{r}"))
        started = json.loads(agg.stdout.readline() or "{}")
        assert started.get("event") == "aggregator_started", open(tmp_path / "aggregator.log").read()[-3000:]
        assert started["init"]["version"] == 1 and started["init"]["size"] == n_params

        marks: dict[str, float] = {"aggregator_up": time.monotonic() - t0}

        def versions():
            return {r: max((s.model_version for s in got[r]["states"]), default=0) for r in robots}

        def mark(name, cond):
            if name not in marks and cond:
                marks[name] = round(time.monotonic() - t0, 1)

        def first_aggregation():
            st, vs = _status(store), versions()
            mark("agg_v2", st.get("version", 0) >= 2)
            for r in robots:
                mark(f"{r}_state", bool(got[r]["states"]))
                mark(f"{r}_delta", bool(got[r]["deltas"]))
                mark(f"{r}_update_v2", any(u.version >= 2 for u in got[r]["updates"]))
                mark(f"{r}_state_v2", vs[r] >= 2)
            return st.get("version", 0) >= 2

        ok = wait_for(first_aggregation, 90, period=0.5)
        logs = "\n".join(p.output()[-1500:] for p in procs)
        assert ok, (versions(), _status(store), logs, open(os.path.join(store, "server.log")).read()[-2000:])
        v_first = _status(store)["version"]
        # pause learning: the deltas stop, the fleet settles on one global version that both robots run
        for r in robots:
            res = ros_node.set_params(f"/{r}/world_model_node", {"learning_enabled": False})
            assert all(x.successful for x in res), res

        def settled():  # every spooled delta acknowledged, both robots on the aggregator's version
            v = _status(store).get("version", 0)
            vs = versions()
            for r in robots:
                mark(f"{r}_state_v2", vs[r] >= 2)
            return all(got[r]["status"] and got[r]["status"][-1].pending_deltas == 0 and got[r]["states"]
                       and got[r]["states"][-1].model_version == v for r in robots)

        ok = wait_for(settled, 60, period=0.5)
        st = _status(store)
        v_agg = st["version"]
        assert ok, (versions(), v_agg, [got[r]["status"][-1:] for r in robots], [p.output()[-1000:] for p in procs])
        assert v_agg >= v_first >= 2
        assert all(got[r]["states"][-1].model_version == v_agg for r in robots)  # both robots hot-swapped
        assert st["counters"].get("accepted", 0) >= 2 and st["counters"].get("rejected", 0) == 0, st["counters"]
        assert st["counters"].get("aggregations", 0) == v_agg - 1
        # the weights both robots received on model_update are exactly the aggregator's global model
        _, ref = GlobalModelStore(store).load_model(v_agg)
        for r in robots:
            u = [u for u in got[r]["updates"] if u.version == v_agg]
            assert u, (r, [x.version for x in got[r]["updates"]])
            assert u[-1].codec == "flat-vector-v1" and len(u[-1].signature) == 64, (u[-1].codec, u[-1].key_id)
            np.testing.assert_array_equal(_flat(bytes(u[-1].payload)), ref)
        # sync_status
        for r in robots:
            s = got[r]["status"][-1]
            assert s.global_version == v_agg and s.bytes_sent > 0 and s.bytes_received > 0, s
            assert any(x.link_state == SyncStatus.LINK_ONLINE for x in got[r]["status"]) and s.last_error == ""
            assert any(x.deltas_acked > 0 for x in got[r]["status"])
        # egress: everything that went upstream is a delta codec payload of the model's size
        sizes = {}
        for r in robots:
            payloads, docs = load_audit(audit[r])
            assert payloads and docs, r
            rep = check_egress(payloads, expected_sizes=[n_params], allowed_codecs=[CODEC])
            rep.raise_if_failed()
            for doc in docs:  # besides the payloads: small integers, booleans and short strings only
                for rec_name, rec in doc["records"].items():
                    for k, v in rec.items():
                        if rec_name == "deltas" and k == "payload":
                            continue
                        for x in (v if isinstance(v, list) else [v]):
                            assert isinstance(x, (int, float, bool)) or (isinstance(x, str) and len(x) < 80), \
                                (rec_name, k, x)
            sizes[r] = (len(payloads), float(np.mean([len(p) for p in payloads])))
        dense = float(np.mean([len(d.payload) for r in robots for d in got[r]["deltas"]]))
        print(f"\nFLEET: learning paused at global v{v_first}; settled on v{v_agg} (both robots) after "
              f"{time.monotonic() - t0:.1f} s; "
              f"upstream {sizes} (payloads, mean bytes) vs dense model_delta {dense:.0f} B; "
              f"aggregator counters {st['counters']}; timeline {marks}")
    finally:
        feed.stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agg.pid, signal.SIGTERM)
        for p in procs:  # all at once, then wait for each
            if p.alive():
                p.proc.send_signal(signal.SIGINT)
        for p in procs:
            p.stop(signal.SIGINT, timeout=15)
        try:
            agg.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(agg.pid, signal.SIGKILL)
        agg_log.close()
    # the SuperNodes went with their sync nodes
    for r in robots:
        assert not os.path.exists(tmp_path / f"spool_{r}" / "supernode.pid.json"), r
    # the exchanges ran in light_clientapp's warm ClientApp server (a fork each, no cold start), and the
    # server went with its SuperNode
    from sakura_nexus.federated.robot.light_clientapp import SOCKET_ENV, robot_flower_env

    for r in robots:
        home = str(tmp_path / f"spool_{r}" / "flwr-home")
        with open(os.path.join(home, "clientapp.log")) as f:
            events = [json.loads(line)["event"] for line in f]
        assert "launcher_warm" in events, (r, events)
        sock = robot_flower_env(home)[SOCKET_ENV]
        assert wait_for(lambda s=sock: not _serving(s), 10), r


def _serving(sock: str) -> bool:
    """Whether a warm ClientApp server for socket path ``sock`` is still running."""
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--serve" in argv and sock.encode() in argv:
            return True
    return False


class DeltaSource:
    """Publishes synthetic cumulative world-model deltas (dense) on /<ns>/model_delta."""

    def __init__(self, ros_node, ns, n):
        from sakura_nexus.msg import ModelDelta
        from sakura_nexus.ros.qos import state_qos

        self.pub = ros_node.create_publisher(ModelDelta, f"/{ns}/model_delta", state_qos(10))
        self.n = n
        self.rng = np.random.default_rng(5)
        self.cums: dict[int, np.ndarray] = {}
        self.cum = np.zeros(n, np.float32)
        self.seq = 0

    def publish(self, seq=None):
        from sakura_nexus.federated.common.codecs import encode
        from sakura_nexus.msg import ModelDelta

        if seq is None:
            self.seq += 1
            seq = self.seq
            self.cum = self.cum + self.rng.normal(size=self.n).astype(np.float32) * 1e-3
            self.cums[seq] = self.cum
        m = ModelDelta(model_id="world_model", base_version=1, sequence=seq, sample_count=8 * seq,
                       local_loss=0.1, codec="dense", payload=encode(self.cums[seq]))
        self.pub.publish(m)


def _spooled(out: str) -> list[int]:
    return [int(x) for x in re.findall(r"spooled robot3 seq=(\d+)", out)]


def _pidfile(spool_dir):
    try:
        with open(os.path.join(spool_dir, "supernode.pid.json")) as f:
            return json.load(f)["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _alive(pid):
    from sakura_nexus.process import is_zombie, proc_start_ticks

    return proc_start_ticks(pid) is not None and not is_zombie(pid)


def test_kill9_mid_append_loses_nothing_spooled(ros_node, ckpt, tmp_path, fast_flower):
    from sakura_nexus.federated.common.codecs import decode
    from sakura_nexus.federated.common.flower_cli import free_port
    from sakura_nexus.federated.robot.spool import Spool

    ckpt_dir, n_params = ckpt
    spool_dir = str(tmp_path / "spool")
    params = {"checkpoint": str(ckpt_dir), "spool_dir": spool_dir, "codec": "dense", "clip_norm": 1e6,
              "superlink": f"127.0.0.1:{free_port()}",  # nobody there: the SuperNode keeps retrying
              "poll_period": 0.2}
    src = DeltaSource(ros_node, "robot3", n_params)
    node = NodeProcess("federated_sync", params, namespace="/robot3")
    node2 = None
    try:
        assert wait_for(lambda: ros_node.count_subscribers("/robot3/model_delta") > 0, 30), node.output()
        assert wait_for(lambda: _pidfile(spool_dir) is not None, 20), node.output()
        # stream deltas (200 kB dense, fsync'd) and kill -9 while appends are in progress
        t_end = time.monotonic() + 30
        while len(_spooled(node.output())) < 6 and time.monotonic() < t_end:
            src.publish()
            time.sleep(0.03)
        for _ in range(8):  # a burst: the node is busy appending when the kill lands
            src.publish()
        time.sleep(0.15)
        old_supernode = _pidfile(spool_dir)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(5)
        reported = _spooled(node.output())
        assert len(reported) >= 6, node.output()
        node.stop()
        torn = [f for d in ("uplink", ".") for f in os.listdir(os.path.join(spool_dir, d))
                if f.startswith(".tmp-")]  # an interrupted atomic write of the uplink state (cleaned up on open)
        print(f"\nKILL9: {len(reported)} appends reported, temp leftovers at the kill: {torn}")
        sp = Spool(spool_dir)
        assert sp.verify() == len(sp.pending())  # nothing torn or corrupt
        on_disk = {e.seq for e in sp.pending()}
        assert set(reported) <= on_disk, (reported, on_disk)
        sn_log = os.path.join(spool_dir, "flwr-home", "supernode.log")
        assert _alive(old_supernode), open(sn_log, errors="replace").read()[-2000:]  # orphaned by the kill -9 ...

        node2 = NodeProcess("federated_sync", params, namespace="/robot3")
        assert wait_for(lambda: "resumed at sequence" in node2.output(), 30), node2.output()
        assert wait_for(lambda: not _alive(old_supernode), 10)  # ... and killed by the successor
        assert wait_for(lambda: ros_node.count_subscribers("/robot3/model_delta") > 0, 20)
        # a re-sent, already spooled delta: refused as duplicate. Re-sent until the node has seen it: a
        # subscription counted here can still be unmatched on the node's side, and volatile messages
        # published before the match are lost (seen ~1 in 3 runs on a busy machine).
        assert wait_for(lambda: src.publish(seq=max(reported)) or "refused as duplicate" in node2.output(),
                        20, period=1.0), node2.output()
        for _ in range(4):
            src.publish()
            time.sleep(0.1)
        last = src.seq
        assert wait_for(lambda: last in _spooled(node2.output()), 20), node2.output()
        # exactly-once across the crash: the spooled increments sum to the last cumulative delta
        sp = Spool(spool_dir)
        total = sum((decode(sp.read(e)) for e in sp.pending()), np.zeros(n_params, np.float32))
        np.testing.assert_allclose(total, src.cums[last], atol=1e-5)
        # the SuperNode is supervised: killed, it comes back
        sn = _pidfile(spool_dir)
        assert sn and _alive(sn)
        os.kill(sn, signal.SIGKILL)
        assert wait_for(lambda: _pidfile(spool_dir) not in (None, sn), 15), node2.output()
        sn2 = _pidfile(spool_dir)
        assert "SuperNode exited" in node2.output()
        assert node2.stop(signal.SIGINT, timeout=20) == 0
        assert not _alive(sn2) and _pidfile(spool_dir) is None  # stopped with the node
    finally:
        node.stop()
        if node2 is not None:
            node2.stop()
