"""Robot-side uplink core (no ROS): cumulative deltas -> increments, clipping, error feedback,
crash-consistent state; world-model vector <-> payload; SuperNode supervision; egress audit trail;
aggregator starting at the robots' checkpoint version."""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest

from sakura_nexus.federated import FedBuffAggregator, FedBuffConfig, Spool, check_egress, decode, encode
from sakura_nexus.federated.common.egress import load_audit, write_audit
from sakura_nexus.federated.common.flower_cli import _ephemeral_range, free_port
from sakura_nexus.federated.robot.supernode import SuperNodeSupervisor
from sakura_nexus.federated.robot.uplink import DeltaUplink
from sakura_nexus.process import proc_start_ticks

N = 500


def _cums(rng, k, scale=0.01):
    """k cumulative deltas of a random walk (what world_model_node publishes)."""
    steps = rng.normal(size=(k, N)).astype(np.float32) * scale
    return np.cumsum(steps, axis=0).astype(np.float32)


def _spooled_sum(spool):
    return sum((decode(spool.read(e)) for e in spool.pending()), np.zeros(N, np.float32))


def test_increments_telescope_to_the_cumulative_delta(tmp_path):
    rng = np.random.default_rng(0)
    spool = Spool(str(tmp_path / "s"))
    up = DeltaUplink(spool, "r1", codec="dense", clip_norm=1e6, expected_size=N)
    cums = _cums(rng, 6)
    for i, c in enumerate(cums[:4], start=1):
        assert up.submit(i, 3, encode(c), sample_count=8 * i).spooled
    np.testing.assert_allclose(_spooled_sum(spool), cums[3], atol=1e-5)
    e = spool.pending()[-1]
    assert e.base_version == 3 and e.sample_count == 8  # increments of the sample count too
    # a lost message (seq 5) is covered by the next one
    assert up.submit(6, 3, encode(cums[5]), sample_count=48).spooled
    np.testing.assert_allclose(_spooled_sum(spool), cums[5], atol=1e-5)
    # learning paused: the same cumulative delta again is not sent
    assert up.submit(7, 3, encode(cums[5]), sample_count=48).status == "unchanged"
    # duplicates: already processed (node level) and refused by the spool
    r = up.submit(6, 3, encode(cums[5]))
    assert r.status == "duplicate"
    # new base version: the cumulative delta restarts from the new global model
    fresh = _cums(rng, 1)[0]
    assert up.submit(7, 4, encode(fresh), sample_count=8).spooled
    last = spool.pending()[-1]
    assert last.base_version == 4 and last.sample_count == 8
    np.testing.assert_allclose(decode(spool.read(last)), fresh, atol=1e-6)
    # invalid inputs are rejected without touching the state
    assert up.submit(8, 4, encode(np.ones(N + 1, np.float32))).reason.startswith("shape")
    assert up.submit(8, 4, encode(np.full(N, np.nan, np.float32))).reason == "nonfinite"
    assert up.submit(8, 4, b"garbage").reason.startswith("corrupt")
    assert up.state.seq == 7


def test_clipping_error_feedback_and_noise_accounting_survive_restart(tmp_path):
    rng = np.random.default_rng(1)
    spool = Spool(str(tmp_path / "s"))
    up = DeltaUplink(spool, "r1", codec="topk0.05+q8", clip_norm=0.5, expected_size=N)
    cums = _cums(rng, 5, scale=0.1)  # increments of norm ~2.2 > clip 0.5
    released = np.zeros(N, np.float32)
    for i, c in enumerate(cums, start=1):
        prev = cums[i - 2] if i > 1 else np.zeros(N, np.float32)
        inc = c - prev
        released += inc * min(1.0, 0.5 / float(np.linalg.norm(inc)))
        r = up.submit(i, 0, encode(c))
        assert r.spooled and r.clipped and r.bytes_out < r.bytes_in / 10
    # error feedback: what was sent + the residual kept on the robot = what was released (clipped)
    np.testing.assert_allclose(_spooled_sum(spool) + up.ef.residual, released, atol=2e-5)
    res = up.ef.residual.copy()
    with pytest.raises(RuntimeError, match="in use"):  # one uplink per spool directory
        DeltaUplink(spool, "r1", codec="topk0.05+q8")
    up.close()
    up2 = DeltaUplink(spool, "r1", codec="topk0.05+q8", clip_norm=0.5, expected_size=N)
    assert up2.state.seq == 5 and "resumed at sequence 5" in up2.recovery
    np.testing.assert_array_equal(up2.ef.residual, res)
    # local DP: epsilon grows with every release and survives a restart
    up2.set_privacy(0.5, 1.0)
    assert up2.submit(6, 0, encode(cums[4] * 1.1)).spooled
    eps = up2.epsilon
    up2.close()
    assert 0 < eps < float("inf")
    up3 = DeltaUplink(spool, "r1", codec="topk0.05+q8", clip_norm=0.5, noise_multiplier=1.0, expected_size=N)
    assert up3.epsilon == pytest.approx(eps)


class _Crash(BaseException):
    pass


def test_crash_between_state_write_and_append_rolls_back(tmp_path, monkeypatch):
    """The state slot is written before the append; the spool decides which slot is committed."""
    rng = np.random.default_rng(2)
    spool = Spool(str(tmp_path / "s"))
    up = DeltaUplink(spool, "r1", codec="dense", clip_norm=1e6, expected_size=N)
    cums = _cums(rng, 4)
    assert up.submit(1, 0, encode(cums[0])).spooled
    assert up.submit(2, 0, encode(cums[1])).spooled

    def crash(*a, **k):
        raise _Crash()

    monkeypatch.setattr(spool, "append", crash)
    with pytest.raises(_Crash):  # "kill -9" after the state write, before the append
        up.submit(3, 0, encode(cums[2]))
    monkeypatch.undo()
    up.close()  # (the process died)
    up2 = DeltaUplink(Spool(spool.dir), "r1", codec="dense", clip_norm=1e6, expected_size=N)
    assert up2.state.seq == 2 and "rolled back" in up2.recovery
    assert up2.submit(3, 0, encode(cums[2])).spooled
    assert up2.submit(4, 0, encode(cums[3])).spooled
    np.testing.assert_allclose(_spooled_sum(up2.spool), cums[3], atol=1e-5)

    # "kill -9" after the append returned but before the in-memory state moved on: nothing is resent
    real_append = up2.spool.append

    def append_then_crash(*a, **k):
        real_append(*a, **k)
        raise _Crash()

    monkeypatch.setattr(up2.spool, "append", append_then_crash)
    nxt = cums[3] + 0.01
    with pytest.raises(_Crash):
        up2.submit(5, 0, encode(nxt))
    monkeypatch.undo()
    up2.close()
    up3 = DeltaUplink(Spool(spool.dir), "r1", codec="dense", clip_norm=1e6, expected_size=N)
    assert up3.state.seq == 5
    np.testing.assert_allclose(_spooled_sum(up3.spool), nxt, atol=1e-5)


def test_world_model_vector_round_trip_and_init_model(tmp_path):
    torch = pytest.importorskip("torch")
    from sakura_nexus.federated.common.weights import vector_to_payload, world_model_vector, write_init_model
    from sakura_nexus.models.world_model import WorldModel, world_model_from_bytes, world_model_to_bytes

    torch.manual_seed(0)
    wm = WorldModel(version=3)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "world_model.bin").write_bytes(world_model_to_bytes(wm))
    info = write_init_model(str(ckpt), str(tmp_path / "agg"))
    vec = np.load(info["path"])
    assert info["version"] == 3 and info["size"] == vec.size == wm.num_parameters()
    np.testing.assert_array_equal(vec, world_model_vector(wm))
    # a global vector goes back into a world-model payload, parameter for parameter
    template = WorldModel(version=3)
    new = vec + np.arange(vec.size, dtype=np.float32) * 1e-6
    payload = vector_to_payload(template, new, 9)
    back = world_model_from_bytes(payload)
    assert back.version == 9
    np.testing.assert_array_equal(world_model_vector(back), new)
    for (n1, b1), (n2, b2) in zip(wm.named_buffers(), back.named_buffers(), strict=True):
        assert n1 == n2 and torch.equal(b1, b2)
    with pytest.raises(ValueError):
        vector_to_payload(template, new[:-1], 10)


def test_aggregator_starts_at_the_robots_checkpoint_version(tmp_path):
    init = np.zeros(N, np.float32)
    agg = FedBuffAggregator(init, FedBuffConfig(buffer_size=2), store_dir=str(tmp_path / "a"), initial_version=3)
    assert agg.version == 3
    assert agg.submit(np.ones(N, np.float32), 3, "r1", 1).accepted
    res = agg.submit(np.ones(N, np.float32), 3, "r2", 1)
    assert res.new_version == 4
    # restart: the store's checkpoint wins over initial model/version
    agg2 = FedBuffAggregator(init, FedBuffConfig(buffer_size=2), store_dir=str(tmp_path / "a"), initial_version=3)
    assert agg2.version == 4 and np.allclose(agg2.model, 1.0)


def test_egress_audit_round_trip(tmp_path):
    d = str(tmp_path / "audit")
    p = encode(np.ones(N, np.float32) * 0.01, "topk0.1+q8")
    write_audit(d, {"sync": {"robot_id": "r1", "more": False},
                    "deltas": {"payload": [p, p], "seq": [1, 2], "codec": ["topk0.1+q8"] * 2}}, "r1")
    payloads, docs = load_audit(d)
    assert payloads == [p, p] and docs[0]["records"]["deltas"]["seq"] == [1, 2]
    assert check_egress(payloads, expected_sizes=[N]).ok
    write_audit(d, {"deltas": {"payload": [np.zeros((64, 64, 3), np.uint8).tobytes()]}}, "r1")
    assert not check_egress(load_audit(d)[0]).ok


def _fake_supernode(tmp_path):
    sup = SuperNodeSupervisor("127.0.0.1:1", str(tmp_path / "spool"), "r1")
    # a child with a grandchild in another session, like SuperNode -> SuperExec
    sup.command = lambda: [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen("
                           "[sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
                           "time.sleep(60)"]
    return sup


def _alive(pid):
    from sakura_nexus.process import is_zombie

    return proc_start_ticks(pid) is not None and not is_zombie(pid)


def test_supernode_supervisor_restarts_kills_stale_and_stops_the_tree(tmp_path):
    from sakura_nexus.process import descendants

    sup = _fake_supernode(tmp_path)
    sup.start()
    assert sup.poll() == "running"
    pid = sup.proc.pid
    time.sleep(0.5)
    kids = descendants(pid)
    assert kids
    os.kill(pid, signal.SIGKILL)  # the SuperNode dies: restarted after the back-off
    sup.proc.wait(5)
    assert sup.poll() == "waiting"
    time.sleep(1.1)
    assert sup.poll() == "restarted" and sup.running and sup.restarts == 1
    for k in kids:  # (the orphaned grandchild of the killed one is not ours any more)
        os.kill(k, signal.SIGKILL)
    # the owner is "kill -9"ed: a new supervisor on the same spool kills the orphaned SuperNode tree
    orphan = sup.proc.pid
    time.sleep(0.5)
    orphan_kids = descendants(orphan)
    sup2 = _fake_supernode(tmp_path)
    sup2.start()
    assert sup2.stale_killed == 1 and not _alive(orphan)
    assert all(not _alive(k) for k in orphan_kids)
    sup.proc.wait(5)
    time.sleep(0.5)
    kids2 = descendants(sup2.proc.pid)
    pid2 = sup2.proc.pid
    sup2.stop()
    assert not _alive(pid2) and all(not _alive(k) for k in kids2)
    assert sup2.poll() == "stopped" and not os.path.exists(sup2.pidfile)


def test_free_port_is_bindable_and_outside_the_ephemeral_range():
    # ports inside the ephemeral range can be taken as the source port of any outgoing connection
    # between choosing and binding (a SuperNode's HTTP API failed that way once in CI)
    import socket

    lo, hi = _ephemeral_range()
    ports = {free_port() for _ in range(20)}
    for port in ports:
        assert not lo <= port <= hi or lo <= 20000, port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))
    assert len(ports) > 1  # random, so concurrent tests do not all race for one port

