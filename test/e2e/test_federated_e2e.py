"""End-to-end on loopback with real Flower 1.42 processes (SuperLink + ServerApp + SuperNodes, no ROS).

1. CLI path with TLS + SuperNode authentication: ``python -m sakura_nexus.federated aggregator`` + 3
   registered ``supernode``s (2 honest robots, 1 compromised robot sending bad updates) + 1 intruder
   with an unregistered key: the global version increments, the new model lands in both honest
   inboxes, every bad update is rejected and counted, the intruder is refused, spools drain, and what
   went upstream passes the egress check.
2. Outage: the whole aggregator is SIGKILLed, robots keep spooling for ~20 s, the aggregator restarts
   from its checkpoint on the same port, and every spooled delta is applied exactly once (one-hot
   deltas make the final model an exact tally; de-dup counters show the resends).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sakura_nexus.federated.common.codecs import ErrorFeedback, encode
from sakura_nexus.federated.common.egress import check_egress
from sakura_nexus.federated.common.flower_cli import (
    flower_env,
    free_port,
    generate_dev_certificates,
    generate_supernode_keys,
)
from sakura_nexus.federated.fleet.superlink import AggregatorProcess
from sakura_nexus.federated.robot.spool import Spool
from sakura_nexus.federated.robot.supernode import supernode_command

pytest.importorskip("flwr")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def wait_for(pred, timeout: float, period: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(period)
    return bool(pred())


class Procs:
    """Processes started by a test; each in its own session so the whole tree can be stopped by pgid."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, env, name, **kw) -> subprocess.Popen:
        log = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(cmd, env=env, stdout=kw.pop("stdout", log), stderr=subprocess.STDOUT,
                             start_new_session=True, **kw)
        log.close()
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)


@pytest.fixture
def procs(tmp_path, monkeypatch):
    # SuperExec polls for new tasks (ClientApp/ServerApp launches) every 1 s by default
    monkeypatch.setenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    ps = Procs(str(tmp_path))
    yield ps
    ps.stop_all()


def _status(store: str) -> dict:
    try:
        with open(os.path.join(store, "status.json")) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


@pytest.mark.slow
def test_e2e_cli_tls_auth_fleet_sync_with_attacker(tmp_path, procs):
    n = 1000
    store = str(tmp_path / "agg")
    port = free_port()
    env = flower_env(str(tmp_path / "cli-home"))
    tls = generate_dev_certificates(str(tmp_path / "certs"))
    keys = {r: generate_supernode_keys(str(tmp_path / "keys"), r) for r in ("r1", "r2", "evil", "intruder")}
    agg = procs.start([sys.executable, "-m", "sakura_nexus.federated", "aggregator", "--store-dir", store,
                       "--port", str(port), "--model-size", str(n), "--buffer-size", "2",
                       "--sync-interval", "1", "--allowed-codecs", "dense,topk0.1+q8",
                       "--max-payload-bytes", "20000",
                       "--clip-norm", "10", "--reject-norm", "1000",
                       "--ssl-certfile", tls.certfile, "--ssl-keyfile", tls.keyfile,
                       "--ssl-ca-certfile", tls.ca_certfile, "--enable-supernode-auth"]
                      + [a for r in ("r1", "r2", "evil") for a in ("--supernode-public-key", keys[r][1])],
                      env, "aggregator_cli", stdout=subprocess.PIPE, text=True)

    rng = np.random.default_rng(0)
    spools = {r: Spool(str(tmp_path / f"spool_{r}")) for r in ("r1", "r2", "evil", "intruder")}
    upstream: list[bytes] = []
    for r in ("r1", "r2"):
        ef = ErrorFeedback("topk0.1+q8", n)
        for s in range(1, 4):
            d = rng.normal(size=n).astype(np.float32) * 0.01
            p = encode(d, "dense") if s == 1 else ef.encode(d)
            spools[r].append(r, s, p, base_version=0, sample_count=10)
            upstream.append(p)
    bad = [
        (encode(np.full(n, np.nan, np.float32)), 0, "nonfinite"),
        (encode(np.ones(n, np.float32), "f16"), 0, "codec"),
        (encode(np.ones(8000, np.float32)), 0, "oversized"),
        (encode(np.ones(n, np.float32) * 0.01), 99, "future"),
        (encode(np.ones(n, np.float32) * 1e6), 0, "norm"),
    ]
    for s, (p, base, _) in enumerate(bad, start=1):
        spools["evil"].append("evil", s, p, base_version=base)
    spools["intruder"].append("intruder", 1, encode(np.ones(n, np.float32)), base_version=0)
    started = json.loads(agg.stdout.readline())
    assert started["event"] == "aggregator_started" and started["address"] == f"127.0.0.1:{port}"
    nodes = {}
    for r, sp in spools.items():  # keys are registered once the aggregator is up
        nodes[r] = procs.start([sys.executable, "-m", "sakura_nexus.federated", "supernode", "--superlink",
                                f"127.0.0.1:{port}", "--robot-id", r, "--spool-dir", sp.dir, "--port",
                                str(free_port()), "--root-certificates", tls.ca_certfile,
                                "--auth-private-key", keys[r][0]], env, f"supernode_{r}")

    def done():
        st = _status(store)
        v = st.get("version", 0)
        return (v >= 3 and st["counters"].get("rejected", 0) >= len(bad)
                and all(spools[r].inbox.latest_version() == v for r in ("r1", "r2"))
                and not any(spools[r].pending() for r in ("r1", "r2", "evil")))

    assert wait_for(done, 120), (_status(store), open(os.path.join(store, "server.log")).read()[-3000:])
    st = _status(store)
    c = st["counters"]
    assert c["accepted"] == 6 and c["aggregations"] == st["version"] == 3
    for _, _, reason in bad:
        assert c[f"rejected_{reason}"] == 1, reason
    _, payload, meta = spools["r1"].inbox.latest()
    _, payload2, _ = spools["r2"].inbox.latest()
    assert payload == payload2 and meta["version"] == 3
    check_egress(upstream, expected_sizes=[n], allowed_codecs=["dense", "topk0.1+q8"]).raise_if_failed()
    # the SuperNode with an unregistered key was refused: it exited, its delta never left the robot
    assert nodes["intruder"].wait(timeout=30) != 0
    assert spools["intruder"].pending() and spools["intruder"].inbox.latest_version() == -1
    assert "intruder" not in json.dumps(st["robots"])
    # graceful shutdown through the CLI's signal handler
    agg.send_signal(signal.SIGTERM)
    assert agg.wait(timeout=60) == 0
    assert _status(store)["state"] == "stopped"


# Outage length: ~1 minute in the suite; the documented manual run (docs/federated.md) uses 600 s:
#   SAKURA_OUTAGE_S=600 python -m pytest -q test/e2e/test_federated_e2e.py -k outage
OUTAGE_S = float(os.environ.get("SAKURA_OUTAGE_S", "60"))


@pytest.mark.slow
def test_e2e_outage_every_spooled_delta_applied_exactly_once(tmp_path, procs):
    n = 1000
    rc = {"model-size": n, "buffer-size": 1, "staleness-exponent": 0.0, "sync-interval-s": 1.0}
    store = str(tmp_path / "agg")
    agg = AggregatorProcess(store_dir=store, port=free_port(), run_config=rc)
    robots = ("r1", "r2")
    spools = {r: Spool(str(tmp_path / f"spool_{r}")) for r in robots}
    seq = dict.fromkeys(robots, 1)

    def onehot(i: int, s: int) -> bytes:  # each (robot, seq) owns one coordinate: the model is a tally
        x = np.zeros(n, np.float32)
        x[i * 500 + s] = 1.0
        return encode(x)

    def spool_one_each(base: int):
        for i, r in enumerate(robots):
            assert spools[r].append(r, seq[r], onehot(i, seq[r]), base_version=base)
            seq[r] += 1

    for _ in range(3):
        spool_one_each(0)
    for r, sp in spools.items():
        cmd = supernode_command(agg.address, sp.dir, robot_id=r, port=free_port())
        procs.start(cmd, flower_env(os.path.join(sp.dir, "flwr-home")), f"supernode_{r}")
    agg.start()
    assert wait_for(lambda: (agg.status() or {}).get("version", 0) >= 6, 90)

    agg.kill()  # hard crash: SuperLink, SuperExec and ServerApp all SIGKILLed
    t0 = time.monotonic()
    first = dict(seq)
    while time.monotonic() - t0 < OUTAGE_S:  # the robots keep learning and spooling while it is down
        spool_one_each(6)
        time.sleep(2)
    # the spool grew by every delta of the outage, all still pending (acks of earlier deltas may land)
    for r, sp in spools.items():
        assert seq[r] - first[r] >= OUTAGE_S / 2.5
        assert set(range(first[r], seq[r])) <= {e.seq for e in sp.pending(r)}, r

    agg = AggregatorProcess(store_dir=store, port=agg.port, run_config=rc).start()
    try:
        total = sum(s - 1 for s in seq.values())
        assert wait_for(lambda: (agg.status() or {}).get("counters", {}).get("accepted_deltas", 0) >= total
                        and not any(sp.pending() for sp in spools.values()), 120 + 2 * OUTAGE_S), agg.status()
        time.sleep(2)  # let any straggling resend arrive: it must be counted as a duplicate
        st = agg.status()
    finally:
        agg.stop()
    c = st["counters"]
    assert c["accepted_deltas"] == total and c.get("rejected", 0) == 0
    assert st["version"] == total  # buffer-size 1: one version per delta
    from sakura_nexus.federated.fleet.aggregator import GlobalModelStore

    _, model = GlobalModelStore(store).load_model()
    expected = np.zeros(n, np.float32)
    for i, r in enumerate(robots):
        expected[[i * 500 + s for s in range(1, seq[r])]] = 1.0
    assert np.array_equal(model, expected)  # every delta exactly once: no loss, no double count
    seen = st["seen"]
    assert seen == {r: [[1, seq[r] - 1]] for r in robots}
