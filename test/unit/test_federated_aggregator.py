"""FedBuff aggregation (in-process): staleness, buffering, robust aggregation, DP, validation,
persisted de-duplication, checkpoint/resume, poisoning, the ServerApp loop over a fake Grid, egress."""

from __future__ import annotations

import numpy as np
import pytest

from sakura_nexus.federated.common.codecs import decode, encode
from sakura_nexus.federated.common.egress import check_egress
from sakura_nexus.federated.fleet.aggregator import (
    FedBuffAggregator,
    FedBuffConfig,
    GlobalModelStore,
    coordinate_median,
    staleness_weight,
    trimmed_mean,
)
from sakura_nexus.federated.robot.spool import Spool

N = 64


def test_staleness_weight_and_robust_primitives():
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == pytest.approx(0.5)
    assert staleness_weight(8, 0.5) == pytest.approx(1 / 3)
    assert staleness_weight(5, 0.0) == 1.0
    rows = np.array([[1, 10], [2, 20], [3, 1000], [4, -1000], [5, 30]], np.float32)
    assert np.allclose(coordinate_median(rows), [3, 20])
    assert np.allclose(trimmed_mean(rows, 0.2), [3, 20])
    assert np.allclose(trimmed_mean(rows[:2], 0.4), [1.5, 15])


def test_aggregates_every_k_with_staleness_weights():
    agg = FedBuffAggregator(np.zeros(N), FedBuffConfig(buffer_size=3, staleness_exponent=0.5))
    d = np.ones(N, np.float32)
    r = agg.submit(d, 0, "a", 1)
    assert r.accepted and r.new_version is None and r.weight == 1.0 and agg.buffered == 1
    agg.submit(d, 0, "b", 1)
    r = agg.submit(d, 0, "c", 1)
    assert r.new_version == 1 and agg.version == 1 and agg.buffered == 0
    assert np.allclose(agg.model, 1.0)  # (1/K) * sum of 3 unit deltas
    # now a delta based on version 0 is 1 version stale: weight 1/sqrt(2)
    for robot in ("a", "b", "c"):
        r = agg.submit(d, 0, robot, 2)
        assert r.staleness == 1 and r.weight == pytest.approx(2 ** -0.5)
    assert agg.version == 2 and np.allclose(agg.model, 1 + 2 ** -0.5)
    assert agg.counters["aggregations"] == 2 and agg.counters["accepted"] == 6


def test_same_robot_shares_one_slot_per_buffer():
    agg = FedBuffAggregator(np.zeros(N), FedBuffConfig(buffer_size=4, robust="median"))
    for s in (1, 2, 3):
        agg.submit(np.ones(N) * 100, 0, "greedy", s)
    r = agg.submit(np.zeros(N), 0, "honest", 1)
    assert r.new_version == 1
    # median over robots of per-robot mean deltas: (100 + 0) / 2, not dominated by 3 votes of "greedy"
    assert np.allclose(agg.model, 50.0)
    assert agg.snapshot()["last_aggregation"]["robots"] == ["greedy", "honest"]


@pytest.mark.parametrize("field,bad,reason", [
    ("nan", None, "nonfinite"), ("inf", None, "nonfinite"), ("future", None, "future"),
    ("stale", None, "stale"), ("norm", None, "norm"), ("shape", None, "shape"),
])
def test_rejections_are_counted_and_deduplicated(field, bad, reason):
    cfg = FedBuffConfig(buffer_size=1, max_staleness=2, reject_norm=10.0)
    agg = FedBuffAggregator(np.zeros(N), cfg)
    for s in range(1, 5):
        agg.submit(np.ones(N) * 0.01, agg.version, "ok", s)
    assert agg.version == 4
    delta = np.ones(N, np.float32) * 0.01
    base = agg.version
    if field == "nan":
        delta[3] = np.nan
    elif field == "inf":
        delta[0] = np.inf
    elif field == "future":
        base = agg.version + 1
    elif field == "stale":
        base = 1
    elif field == "norm":
        delta *= 1e4
    elif field == "shape":
        delta = np.ones(N + 1, np.float32)
    before = agg.model
    r = agg.submit(delta, base, "bad", 1)
    assert r.status == "rejected" and r.reason == reason
    assert agg.counters[f"rejected_{reason}"] == 1 and np.array_equal(agg.model, before)
    # resending the same (robot, seq) is a duplicate, not a second rejection
    r = agg.submit(delta, base, "bad", 1)
    assert r.status == "duplicate" and agg.counters["rejected"] == 1 and agg.counters["duplicates"] == 1


def test_payload_level_rejections():
    cfg = FedBuffConfig(buffer_size=2, allowed_codecs=("dense", "topk0.1+q8"), max_payload_bytes=2000)
    agg = FedBuffAggregator(np.zeros(N), cfg)
    x = np.ones(N, np.float32)
    assert agg.submit_payload(encode(x, "dense"), 0, "r", 1).accepted
    assert agg.submit_payload(encode(x, "topk0.1+q8"), 0, "r", 2).new_version == 1
    cases = [
        (encode(x, "f16"), "codec"),
        (encode(np.ones(1000, np.float32), "dense"), "oversized"),
        (encode(np.ones(N + 3, np.float32), "dense"), "shape"),
        (encode(x, "dense")[:-7], "corrupt"),
        (b"\x00" * 100, "corrupt"),
    ]
    for i, (p, reason) in enumerate(cases, start=3):
        r = agg.submit_payload(p, agg.version, "r", i)
        assert (r.status, r.reason) == ("rejected", reason)
    assert agg.counters["rejected"] == len(cases) and agg.version == 1


def test_overlapping_ranges_rejected_not_double_applied():
    agg = FedBuffAggregator(np.zeros(N), FedBuffConfig(buffer_size=1, staleness_exponent=0.0))
    agg.submit(np.ones(N), 0, "r", 3)
    r = agg.submit(np.ones(N), agg.version, "r", 5, seq_first=2)  # merged 2..5 overlaps 3
    assert r.reason == "overlap" and np.allclose(agg.model, 1.0)
    r = agg.submit(np.ones(N), agg.version, "r", 7, seq_first=6)  # merged 6..7 is new
    assert r.accepted and agg.counters["accepted_deltas"] == 3
    assert agg.submit(np.ones(N), agg.version, "r", 6).status == "duplicate"
    assert agg.submit(np.ones(N), agg.version, "r", 2, seq_first=3).reason == "bad_seq"


def test_checkpoint_resume_keeps_model_buffer_dedup_and_counters(tmp_path):
    cfg = FedBuffConfig(buffer_size=3, staleness_exponent=0.0)
    agg = FedBuffAggregator(np.zeros(N), cfg, store_dir=str(tmp_path))
    for s in (1, 2, 3, 4):
        agg.submit_payload(encode(np.full(N, s, np.float32)), agg.version, "r1", s)
    assert agg.version == 1 and agg.buffered == 1
    model_v1 = agg.model
    del agg  # "crash"
    agg2 = FedBuffAggregator(None, cfg, store_dir=str(tmp_path))
    assert agg2.version == 1 and agg2.buffered == 1 and np.array_equal(agg2.model, model_v1)
    assert agg2.submit(np.ones(N), 1, "r1", 4).status == "duplicate"
    assert agg2.counters["accepted"] == 4
    agg2.submit(np.full(N, 5, np.float32), 1, "r1", 5)
    r = agg2.submit(np.full(N, 6, np.float32), 1, "r1", 6)
    assert r.new_version == 2
    assert np.allclose(agg2.model, model_v1 + (4 + 5 + 6) / 3)
    store = GlobalModelStore(str(tmp_path))
    v, m = store.load_model()
    assert v == 2 and np.array_equal(m, agg2.model)
    assert np.array_equal(store.load_model(1)[1], model_v1)  # kept history
    with pytest.raises(ValueError):
        FedBuffAggregator(np.zeros(N + 1), cfg, store_dir=str(tmp_path))
    with pytest.raises(ValueError):
        FedBuffAggregator(None, cfg, store_dir=str(tmp_path / "empty"))


def test_file_format_store_migrates_on_first_open(tmp_path):
    """A store directory of the file-based format (content-addressed ``blobs/*.npy`` + ``state.json``,
    written here by a frozen copy of that writer) is imported on first open: model, kept history, buffered
    slot, de-dup table, counters; the old files go only after the commit."""
    import hashlib
    import io
    import json
    import os

    d = tmp_path / "agg"
    (d / "blobs").mkdir(parents=True)

    def blob(x):
        buf = io.BytesIO()
        np.save(buf, np.asarray(x, np.float32), allow_pickle=False)
        name = hashlib.sha256(buf.getvalue()).hexdigest()[:32] + ".npy"
        (d / "blobs" / name).write_bytes(buf.getvalue())
        return name

    st = {"format": 1, "version": 5, "model": blob(np.full(N, 5.0)), "size": N,
          "seen": {"r1": [[1, 7]], "r2": [[1, 2], [4, 4]]},
          "counters": {"received": 11, "accepted": 9, "accepted_deltas": 10, "aggregations": 2, "duplicates": 1},
          "slots": {"r1": {"blob": blob(np.full(N, 0.5)), "count": 1, "samples": 10, "weight": 1.0}},
          "arrivals": 1, "history": [[3, blob(np.full(N, 3.0))], [4, blob(np.full(N, 4.0))]],
          "last_aggregation": {"version": 5, "deltas": 4}, "robots": {"r1": {"accepted": 7, "last_seq": 7}},
          "accountant": None, "config": {}, "saved_at": 1.0}
    (d / "state.json").write_text(json.dumps(st))
    (d / ".lock").touch()
    cfg = FedBuffConfig(buffer_size=2, staleness_exponent=0.0)
    agg = FedBuffAggregator(None, cfg, store_dir=str(d))
    assert agg.version == 5 and agg.buffered == 1 and np.array_equal(agg.model, np.full(N, 5.0))
    assert agg.counters["accepted"] == 9 and agg.snapshot()["robots"]["r1"]["last_seq"] == 7
    assert agg.submit(np.ones(N), 5, "r1", 7).status == "duplicate"
    assert agg.submit(np.ones(N), 5, "r2", 4).status == "duplicate"
    r = agg.submit(np.ones(N), 5, "r2", 3)  # with the migrated r1 slot: (0.5 + 1) / 2
    assert r.new_version == 6 and np.allclose(agg.model, 5.75)
    store = GlobalModelStore(str(d))
    assert store.versions() == [3, 4, 5, 6] and np.array_equal(store.load_model(3)[1], np.full(N, 3.0))
    assert {n for n in os.listdir(d) if not n.startswith("store.db")} == {"state.json.migrated"}  # blobs/ gone
    agg2 = FedBuffAggregator(None, cfg, store_dir=str(d))
    assert agg2.version == 6 and np.allclose(agg2.model, 5.75) and agg2.is_seen("r2", 3)


def test_central_dp_noise_accounting_and_budget(tmp_path):
    cfg = FedBuffConfig(buffer_size=4, clip_norm=1.0, dp_noise_multiplier=1.0, dp_max_epsilon=12.0, seed=3)
    agg = FedBuffAggregator(np.zeros(10_000), cfg, store_dir=str(tmp_path))
    robots = ["a", "b", "c", "d"]
    eps = [agg.epsilon]
    seq = 0
    while True:
        seq += 1
        res = [agg.submit(np.ones(10_000) * 5, agg.version, r, seq) for r in robots]
        if any(r.reason == "dp_budget" for r in res):
            break
        eps.append(agg.epsilon)
        assert seq < 50
    assert all(b > a for a, b in zip(eps, eps[1:], strict=False))
    assert agg.epsilon <= 12.0
    assert agg.counters["rejected_dp_budget"] >= 1
    # noise std of the update = z * C / K per coordinate on top of the clipped mean
    agg2 = FedBuffAggregator(np.zeros(10_000), FedBuffConfig(buffer_size=4, clip_norm=1.0,
                                                             dp_noise_multiplier=2.0, seed=1))
    for r in robots:
        agg2.submit(np.zeros(10_000), 0, r, 1)
    assert agg2.model.std() == pytest.approx(2.0 * 1.0 / 4, rel=0.05)
    # the accountant survives a restart
    e = agg.epsilon
    agg3 = FedBuffAggregator(None, cfg, store_dir=str(tmp_path))
    assert agg3.epsilon == pytest.approx(e)
    with pytest.raises(ValueError):
        FedBuffConfig(dp_noise_multiplier=1.0)  # DP needs clipping


def test_offline_robot_contributes_when_it_returns():
    agg = FedBuffAggregator(np.zeros(N), FedBuffConfig(buffer_size=2, max_staleness=100))
    for s in range(1, 21):
        agg.submit(np.ones(N) * 0.1, agg.version, "online", s)
    assert agg.version == 10
    r = agg.submit(np.ones(N), 0, "was_offline", 1)  # computed against version 0 hours ago
    assert r.accepted and r.staleness == 10 and r.weight == pytest.approx(11 ** -0.5)
    strict = FedBuffAggregator(np.zeros(N), FedBuffConfig(buffer_size=1, max_staleness=3))
    for s in range(1, 6):
        strict.submit(np.zeros(N), strict.version, "a", s)
    assert strict.submit(np.ones(N), 0, "late", 1).reason == "stale"


# --------------------------------------------------------------------------- poisoning on a toy model


def _run_linear_fleet(n_honest: int, attacker: bool, cfg: FedBuffConfig, rounds: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    d = 40
    w_true = rng.normal(size=d)
    data = []
    for _ in range(n_honest):
        X = rng.normal(size=(200, d))
        data.append((X, X @ w_true + 0.1 * rng.normal(size=200)))
    Xt = rng.normal(size=(1000, d))
    yt = Xt @ w_true + 0.1 * rng.normal(size=1000)
    agg = FedBuffAggregator(np.zeros(d), cfg)
    clients = [f"h{i}" for i in range(n_honest)] + (["evil"] if attacker else [])
    base = {c: (0, agg.model) for c in clients}
    seq = dict.fromkeys(clients, 0)
    for _ in range(rounds):
        for c in rng.permutation(clients):
            v, w0 = base[c]
            if c == "evil":
                delta = rng.normal(size=d) * 1e3 if rng.random() < 0.5 else np.full(d, np.nan)
            else:
                X, y = data[int(c[1:])]
                w = w0.copy()
                for _ in range(5):
                    w -= 0.05 * 2 * X.T @ (X @ w - y) / len(y)
                delta = w - w0
            seq[c] += 1
            agg.submit(delta.astype(np.float32), v, c, seq[c])
            if rng.random() < 0.7:  # robots do not always fetch the newest model: staleness happens
                base[c] = (agg.version, agg.model)
    loss = float(np.mean((Xt @ agg.model - yt) ** 2))
    return loss, agg


@pytest.mark.parametrize("robust", ["mean", "median", "trimmed_mean"])
def test_poisoning_one_of_four_clients(robust):
    clean_cfg = FedBuffConfig(buffer_size=4, robust=robust, clip_norm=5.0, trim_ratio=0.25)
    clean, _ = _run_linear_fleet(4, False, clean_cfg)
    # the attacker replaces the 4th honest robot: huge-norm and NaN deltas
    cfg = FedBuffConfig(buffer_size=4, robust=robust, clip_norm=5.0, trim_ratio=0.25,
                        reject_norm=100.0 if robust == "mean" else 0.0)
    poisoned, agg = _run_linear_fleet(3, True, cfg)
    c = agg.counters
    assert c["rejected_nonfinite"] > 10
    if robust == "mean":
        assert c["rejected_norm"] > 10  # huge deltas rejected outright
    else:
        assert c["clipped"] > 10  # huge deltas clipped, then outvoted by the median / trimmed
    assert clean < 0.05  # converged to the noise floor (0.01)
    assert poisoned <= 1.10 * clean, (poisoned, clean)


# --------------------------------------------------------------------------- ServerApp loop, fake Grid


@pytest.fixture
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


class FakeGrid:
    """Delivers messages to in-process ClientApp calls; nodes can be offline; messages can be lost."""

    def __init__(self, nodes: dict[int, dict]):
        self.nodes = nodes  # node_id -> node_config
        self.online: set[int] = set()
        self.queue: dict[str, object] = {}
        self.drop_next = 0
        self.captured_upstream: list[bytes] = []

    def get_node_ids(self):
        return sorted(self.online)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            ids.append(m.metadata.message_id)
            if self.drop_next:
                self.drop_next -= 1
                continue
            self.queue[m.metadata.message_id] = m
        return ids

    def pull_messages(self, message_ids):
        from flwr.app import Context, RecordDict

        from sakura_nexus.federated.robot.clientapp import _client_sync

        out = []
        for mid in list(message_ids):
            m = self.queue.get(mid)
            if m is None or m.metadata.dst_node_id not in self.online:
                continue
            del self.queue[mid]
            nid = m.metadata.dst_node_id
            ctx = Context(run_id=1, node_id=nid, node_config=self.nodes[nid], state=RecordDict(),
                          run_config={})
            reply = _client_sync(m, ctx)
            self.captured_upstream += list(reply.content.config_records["deltas"]["payload"])
            out.append(reply)
        return out


def test_server_loop_async_offline_robot_acks_and_lost_messages(tmp_path, task_identity):
    from sakura_nexus.federated.fleet.serverapp import FedBuffServerLoop, ServerOptions

    spools = {r: Spool(str(tmp_path / r)) for r in ("r1", "r2")}
    grid = FakeGrid({1: {"spool-dir": spools["r1"].dir, "robot-id": "r1"},
                     2: {"spool-dir": spools["r2"].dir, "robot-id": "r2"}})
    agg = FedBuffAggregator(np.zeros(N), FedBuffConfig(buffer_size=2), store_dir=str(tmp_path / "agg"))
    opts = ServerOptions(store_dir=str(tmp_path / "agg"), sync_interval_s=0.0, nodes_poll_s=0.0)
    loop = FedBuffServerLoop(grid, agg, opts)

    def run(steps=12):
        for _ in range(steps):
            loop.step()

    for s in range(1, 5):
        spools["r1"].append("r1", s, encode(np.full(N, 0.1, np.float32)), base_version=0)
    for s in range(1, 3):  # r2 trains against version 0 while offline
        spools["r2"].append("r2", s, encode(np.full(N, 1.0, np.float32)), base_version=0)
    grid.online = {1}
    run()
    assert agg.version == 2 and not spools["r1"].pending()  # applied and acknowledged
    assert spools["r1"].inbox.latest_version() == 2
    assert spools["r2"].inbox.latest_version() == -1  # offline: nothing delivered, nothing blocked
    # r2 comes back after "hours": its stale deltas count, with weight 1/sqrt(1+2)
    grid.online = {1, 2}
    run()
    assert agg.version == 3 and not spools["r2"].pending()
    assert spools["r2"].inbox.latest_version() == 3 == spools["r1"].inbox.latest_version()
    st2 = spools["r2"].stats()
    assert st2["syncs"] >= 2 and st2["bytes_sent"] == 2 * len(encode(np.ones(N, np.float32)))
    assert st2["bytes_received"] >= len(encode(np.zeros(N, np.float32)))
    assert spools["r2"].last_sync()["global_version"] == 3
    # r1's 4 deltas arrived in one batch: 2 fresh, then 2 that became 1 version stale mid-batch
    assert np.allclose(agg.model, 0.1 + 0.1 / np.sqrt(2) + 1.0 / np.sqrt(3))
    # a lost server->robot message (carrying acks) leads to a resend, de-duplicated by the server
    spools["r1"].append("r1", 5, encode(np.full(N, 0.1, np.float32)), base_version=3)
    run(3)
    assert not spools["r1"].pending() or spools["r1"].pending()[0].seq == 5
    grid.drop_next = 2
    run(12)
    c = agg.counters
    assert not spools["r1"].pending()
    assert c["accepted_deltas"] == 7 and agg.is_seen("r1", 5)
    loop.write_status()
    status = (tmp_path / "agg" / "status.json").read_text()
    assert '"version"' in status and '"nodes"' in status
    # everything that went upstream is a flat codec payload of the model size
    check_egress(grid.captured_upstream, expected_sizes=[N]).raise_if_failed()


# --------------------------------------------------------------------------- egress


def test_egress_check_accepts_deltas_and_flags_images_embeddings():
    good = [encode(np.random.default_rng(0).normal(size=5000).astype(np.float32) * 1e-3, c)
            for c in ("dense", "q8", "topk0.01+q8")]
    rep = check_egress(good, expected_sizes=[5000])
    assert rep.ok and rep.n_payloads == 3 and rep.codecs == {"dense": 1, "q8": 1, "topk0.01+q8": 1}
    img = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    bad = {
        "image": encode(img),
        "chw": encode(img.transpose(2, 0, 1).copy()),
        "flat image": encode(img.ravel()),
        "embedding": encode(np.zeros((8, 64), np.float32)),
        "pixels": encode(np.random.default_rng(2).integers(0, 256, 5000).astype(np.float32)),
        "raw bytes": (img * 255).astype(np.uint8).tobytes(),
        "jpeg-ish": b"\xff\xd8\xff\xe0" + b"\x00" * 1000,
    }
    for name, p in bad.items():
        assert not check_egress([p]).ok, name
    assert not check_egress(good, expected_sizes=[4999]).ok
    assert not check_egress(good, allowed_codecs=["dense"]).ok
    with pytest.raises(AssertionError):
        check_egress([bad["image"]]).raise_if_failed()
    assert decode(good[0]).shape == (5000,)


PUBLISH_KILLER = r"""
import os, signal, sys
import numpy as np
from sakura_nexus.federated.fleet.aggregator import FedBuffAggregator, FedBuffConfig
agg = FedBuffAggregator(None, FedBuffConfig(buffer_size=2, staleness_exponent=0.0), store_dir=sys.argv[1])
ran = []
def before_statement(sql):
    ran.append(sql)
    if len(ran) > int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
agg.store.db.conn().set_trace_callback(before_statement)
agg.submit(np.full(int(sys.argv[3]), 3.0, np.float32), 0, "r2", 1)  # completes the buffer: version 1
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_sigkill_while_publishing_a_version_leaves_the_old_or_the_new_one(tmp_path):
    """Publishing a version is one store transaction (new model, history, buffer cleared, de-dup ranges,
    counters): the aggregator is SIGKILLed before each of its statements in turn; the reopened store is
    exactly the checkpoint before or exactly the one after."""
    import signal
    import subprocess
    import sys

    cfg = FedBuffConfig(buffer_size=2, staleness_exponent=0.0)

    def buffered_one(d):
        agg = FedBuffAggregator(np.zeros(N, np.float32), cfg, store_dir=d)
        assert agg.submit(np.full(N, 1.0, np.float32), 0, "r1", 1).accepted and agg.buffered == 1
        return agg

    agg = buffered_one(str(tmp_path / "dry"))
    ran: list[str] = []
    agg.store.db.conn().set_trace_callback(ran.append)
    assert agg.submit(np.full(N, 3.0, np.float32), 0, "r2", 1).new_version == 1
    agg.store.db.conn().set_trace_callback(None)
    assert ran[0] == "BEGIN IMMEDIATE" and ran[-1] == "COMMIT", ran
    after = []
    for k in range(len(ran) + 1):
        d = str(tmp_path / f"k{k}")
        del agg
        agg = buffered_one(d)
        proc = subprocess.run([sys.executable, "-c", PUBLISH_KILLER, d, str(k), str(N)], capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        agg = FedBuffAggregator(None, cfg, store_dir=d)
        store = GlobalModelStore(d)
        after.append(agg.version == 1)
        if agg.version == 1:
            assert agg.buffered == 0 and agg.is_seen("r2", 1) and np.allclose(agg.model, 2.0)
            assert store.versions() == [0, 1] and agg.counters["aggregations"] == 1
            assert store.load_state()["slots"] == {}
        else:
            assert agg.version == 0 and agg.buffered == 1 and not agg.is_seen("r2", 1) and not agg.model.any()
            assert store.versions() == [0] and agg.counters.get("aggregations", 0) == 0
            assert agg.submit(np.full(N, 3.0, np.float32), 0, "r2", 1).new_version == 1  # the resend lands
    print(f"\nPUBLISH KILL: {len(ran)} statements; version 1 after kill at k: {after}")
    assert after[0] is False and after[-1] is True and after == sorted(after)
