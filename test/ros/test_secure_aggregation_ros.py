"""Secure aggregation (SecAgg+) at ROS level: three robots (federated_sync_node each, with its SuperNode)
against ``sakura-nexus aggregator --secure-aggregation``, fed with synthetic world-model deltas.

* the global version advances, and a round with all three robots is applied;
* the aggregator never holds one robot's delta: no file it writes (the store database, status,
  server/SuperLink logs, the SuperLink database through which the masked vectors pass) contains the bytes
  of any robot's individual delta, and no stored global model differs from the initial one by an
  individual delta; the global model after the first round is the mean of the robots' deltas;
* robot3 is killed (sync node and SuperNode, kill -9) while a round is under way: the fleet goes on,
  a later round is applied with the two survivors only.
"""

from __future__ import annotations

import contextlib
import itertools
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

N = 48763  # parameters of the world model (the sync node checks every delta against its checkpoint)
ROBOTS = ("robot1", "robot2", "robot3")


@pytest.fixture
def fast_flower(monkeypatch):
    # SuperExec polls for ClientApp/ServerApp tasks every 1 s by default
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")


class Deltas(threading.Thread):
    """Publishes growing cumulative deltas (dense codec) on /<ns>/model_delta for every robot, each its own."""

    def __init__(self, ros_node):
        super().__init__(daemon=True)
        from sakura_nexus.msg import ModelDelta
        from sakura_nexus.ros.qos import state_qos

        self.pubs = {r: ros_node.create_publisher(ModelDelta, f"/{r}/model_delta", state_qos(10)) for r in ROBOTS}
        self.rng = np.random.default_rng(11)
        self.cum = {r: np.zeros(N, np.float32) for r in ROBOTS}
        self.history = {r: [] for r in ROBOTS}  # every cumulative delta published
        self.seq = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        from sakura_nexus.federated.common.codecs import encode
        from sakura_nexus.msg import ModelDelta

        while not self.stop.is_set():
            self.seq += 1
            with self.lock:
                for i, (r, pub) in enumerate(self.pubs.items()):
                    # robot-specific drift + noise: every robot's delta differs from the others' and the mean
                    step = (self.rng.normal(size=N) * 2e-3 + 1e-3 * (i + 1)).astype(np.float32)
                    self.cum[r] = (self.cum[r] + step).astype(np.float32)
                    self.history[r].append(self.cum[r].copy())
                    pub.publish(ModelDelta(model_id="world_model", base_version=1, sequence=self.seq,
                                           sample_count=8 * self.seq, local_loss=0.1, codec="dense",
                                           payload=encode(self.cum[r])))
            self.stop.wait(2.0)


def _log(store):
    try:
        with open(os.path.join(store, "server.log")) as f:
            return f.read()
    except OSError:
        return ""


def _status(store):
    try:
        with open(os.path.join(store, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _applied(store):
    """[(version, round, robots, dropped)] of every applied secure round, from server.log."""
    pat = r"global version (\d+) \(secure round (\d+): mean of \d+ robots \[([^\]]*)\], (\d+) dropped out\)"
    return [(int(v), int(r), re.findall(r"'([^']+)'", rob), int(d)) for v, r, rob, d in re.findall(pat, _log(store))]


def _files(root):
    for dirpath, _, names in os.walk(root):
        for n in names:
            yield os.path.join(dirpath, n)


def test_three_robots_secure_aggregation_with_a_dropout(ros_node, tmp_path, fast_flower):
    import torch

    from sakura_nexus.federated.common.flower_cli import free_port, wait_healthy
    from sakura_nexus.federated.common.signing import generate_keys
    from sakura_nexus.federated.fleet.aggregator import GlobalModelStore
    from sakura_nexus.models.world_model import WorldModel, world_model_to_bytes
    from sakura_nexus.msg import ModelUpdate
    from sakura_nexus.process import kill_tree
    from sakura_nexus.ros.qos import model_qos

    t0 = time.monotonic()
    torch.manual_seed(0)
    ckpt_dir = tmp_path / "wm"
    ckpt_dir.mkdir()
    (ckpt_dir / "world_model.bin").write_bytes(world_model_to_bytes(WorldModel(version=1)))
    from sakura_nexus.federated.common.weights import world_model_vector

    init = world_model_vector(WorldModel(version=1)).astype(np.float32)
    assert init.size == N
    np.save(tmp_path / "init.npy", init)
    store, port = str(tmp_path / "agg"), free_port()
    signing_key, trusted = generate_keys(str(tmp_path / "keys"))
    agg_log = open(tmp_path / "aggregator.log", "w")
    agg = subprocess.Popen(
        [sys.executable, "-m", "sakura_nexus", "aggregator", "--store-dir", store, "--port", str(port),
         "--secure-aggregation", "--init-model", str(tmp_path / "init.npy"), "--init-version", "1",
         "--secure-min-nodes", "2", "--secure-min-group", "2", "--secure-timeout", "20", "--sync-interval", "1",
         "--signing-key", signing_key],
        stdout=subprocess.PIPE, stderr=agg_log, text=True, start_new_session=True)
    src = Deltas(ros_node)
    updates = {r: ros_node.collect(ModelUpdate, f"/{r}/model_update", model_qos()) for r in ROBOTS}
    procs: dict[str, NodeProcess] = {}
    try:
        assert wait_healthy("127.0.0.1", port, 90, proc=agg), open(tmp_path / "aggregator.log").read()[-3000:]
        for r in ROBOTS:
            procs[r] = NodeProcess("federated_sync", {
                "checkpoint": str(ckpt_dir), "spool_dir": str(tmp_path / f"spool_{r}"),
                "superlink": f"127.0.0.1:{port}", "codec": "dense", "clip_norm": 1e6, "poll_period": 0.5,
                "egress_audit_dir": str(tmp_path / f"audit_{r}"), "trusted_keys": trusted}, namespace=f"/{r}")
        started = json.loads(agg.stdout.readline() or "{}")
        assert started.get("event") == "aggregator_started" and started.get("secure") is True, started
        assert wait_for(lambda: all(ros_node.count_subscribers(f"/{r}/model_delta") > 0 for r in ROBOTS), 40)
        src.start()
        marks = {}

        # 1. a round of all three robots is applied
        def full_round():
            return any(len(rob) == 3 for _, _, rob, _ in _applied(store))

        ok = wait_for(full_round, 75, period=0.5)
        assert ok, (_status(store), _log(store)[-3000:], {r: p.output()[-800:] for r, p in procs.items()})
        marks["full_round"] = round(time.monotonic() - t0, 1)

        # 2. kill robot3 (node + SuperNode) while the next round is under way
        n_rounds = len(re.findall(r"secure round \d+: \d+ SuperNodes", _log(store)))
        assert wait_for(lambda: len(re.findall(r"secure round \d+: 3 SuperNodes", _log(store))) > 0 and
                        len(re.findall(r"secure round \d+: \d+ SuperNodes", _log(store))) > n_rounds, 30, period=0.1)
        time.sleep(1.0)  # inside the round's key exchange
        with open(tmp_path / "spool_robot3" / "supernode.pid.json") as f:
            sn_pid = json.load(f)["pid"]
        procs["robot3"].proc.send_signal(signal.SIGKILL)
        kill_tree(sn_pid)
        v_kill = _status(store).get("version", 0)
        marks["killed"] = round(time.monotonic() - t0, 1)

        def survivors_round():
            return any(v > v_kill and rob == ["robot1", "robot2"] for v, _, rob, _ in _applied(store))

        ok = wait_for(survivors_round, 60, period=0.5)
        assert ok, (v_kill, _applied(store), _status(store).get("loop"), _log(store)[-2500:])
        marks["survivors_round"] = round(time.monotonic() - t0, 1)
        src.stop.set()
        assert wait_for(lambda: _status(store).get("version", 0) > v_kill, 10), _status(store)
        st = _status(store)
        assert st["mode"] == "secure" and st["version"] > v_kill >= 2, st
        assert st["loop"]["dropouts"] >= 1 and st["loop"]["rounds_applied"] >= 2, st["loop"]
        assert st["counters"].get("secure_refused", 0) == 0, st["counters"]

        # 3. nothing the aggregator stored or logged holds one robot's delta
        with src.lock:
            hist = {r: list(h) for r, h in src.history.items()}
        # every vector a robot could have sent alone: h[j] - h[i] (its deltas since its last applied round)
        idx = np.arange(1000, 1016)  # probe coordinates: candidates first, full vectors for the matches
        cands = {r: [np.zeros(N, np.float32)] + hist[r] for r in ROBOTS}
        pairs = [(r, i, j) for r in ROBOTS for i in range(len(cands[r])) for j in range(i + 1, len(cands[r]))]
        probes = [(cands[r][j] - cands[r][i]).astype(np.float32)[idx].tobytes() for r, i, j in pairs]
        files = list(_files(store))
        assert any(f.endswith("superlink.db") for f in files) and any(f.endswith("store.db") for f in files), files
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            for p in probes:
                assert p not in data, path
        probe_rows = np.stack([cands[r][j][idx] - cands[r][i][idx] for r, i, j in pairs])
        # every global model the store keeps (its database splits a blob over pages, so the byte probes above
        # are not enough there): none is the initial one plus an individual delta; no per-robot slot at all
        gs = GlobalModelStore(store)
        arrays = [gs.load_model(v)[1] for v in gs.versions()]
        arrays = [a for a in arrays if a.size == N]
        assert len(arrays) >= 2, gs.versions()  # the initial model and at least one aggregate
        assert gs.load_state()["slots"] == {}
        for a in arrays:
            d = (a - init)[idx]
            for k in np.flatnonzero(np.all(np.abs(probe_rows - d) < 1e-6, 1)):
                r, i, j = pairs[k]
                assert not np.allclose(a - init, cands[r][j] - cands[r][i], rtol=0, atol=1e-6), \
                    f"{r}'s individual delta is stored"
        # the first global model is the mean of one cumulative delta of each robot of its group
        v2, robots2 = _applied(store)[0][0], _applied(store)[0][2]
        _, g = gs.load_model(v2)
        def mean_of(c, sel=slice(None)):
            return np.mean([hist[r][k][sel] for r, k in zip(robots2, c, strict=True)], 0)

        combos = [c for c in itertools.product(*(range(len(hist[r])) for r in robots2))
                  if np.allclose((g - init)[idx], mean_of(c, idx), rtol=0, atol=1e-5)]
        assert any(np.allclose(g - init, mean_of(c), rtol=0, atol=1e-5) for c in combos), (robots2, combos)
        # the survivors got signed global models from the secure rounds
        for r in ("robot1", "robot2"):
            assert any(u.version >= 2 and len(u.signature) == 64 for u in updates[r]), (r, len(updates[r]))
        # what left the robots in the clear: metadata only (the vector went masked through secaggplus_mod)
        for r in ("robot1", "robot2"):
            docs = [json.load(open(p)) for p in _files(str(tmp_path / f"audit_{r}")) if p.endswith(".json")]
            assert docs and all(set(d["records"]) == {"secure_metrics"} for d in docs), r
        print(f"\nSECURE: rounds applied {[(v, rob, d) for v, _, rob, d in _applied(store)]}; "
              f"loop {st['loop']}; timeline {marks}; {len(pairs)} individual vectors checked against "
              f"{len(files)} aggregator files")
    finally:
        src.stop.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agg.pid, signal.SIGTERM)
        for p in procs.values():
            if p.alive():
                p.proc.send_signal(signal.SIGINT)
        for p in procs.values():
            p.stop(signal.SIGINT, timeout=15)
        try:
            agg.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(agg.pid, signal.SIGKILL)
        agg_log.close()

