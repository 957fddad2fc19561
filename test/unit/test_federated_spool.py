"""Durable spool: atomic appends, de-duplication, full policies, acks, inbox, crash (SIGKILL) safety."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from sakura_nexus.federated.common.codecs import decode, encode
from sakura_nexus.federated.robot.spool import Spool, SpoolFull

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 2000


def vec(seq: int, n: int = N) -> np.ndarray:
    x = np.zeros(n, np.float32)
    x[seq % (n - 1)] = seq
    x[-1] = 1.0  # counts how many deltas a (merged) entry sums
    return x


def payload(seq: int, n: int = N, codec: str = "dense") -> bytes:
    return encode(vec(seq, n), codec)


def test_append_pending_read_ack_roundtrip(tmp_path):
    sp = Spool(str(tmp_path))
    for s in (1, 2, 3):
        assert sp.append("r1", s, payload(s), base_version=7, sample_count=10 * s, local_loss=0.5)
    es = sp.pending()
    assert [e.seq for e in es] == [1, 2, 3]
    assert es[0].base_version == 7 and es[1].sample_count == 20 and es[0].codec == "dense"
    assert es[2].l2_norm == pytest.approx(np.linalg.norm(vec(3)), rel=1e-6)
    assert np.array_equal(decode(sp.read(es[1])), vec(2))
    assert sp.next_sequence("r1") == 4 and sp.next_sequence("other") == 1
    assert sp.ack([("r1", 1), ("r1", 2)]) == 2
    assert [e.seq for e in sp.pending()] == [3]
    assert sp.is_acked("r1", 1) and not sp.is_acked("r1", 3)
    st = sp.stats()
    assert st["appended"] == 3 and st["acked"] == 2 and st["pending"] == 1 and st["bytes"] > 8000
    # ack of unknown keys is harmless and still blocks those sequences from being re-appended
    assert sp.ack([("r1", 99)]) == 0
    assert not sp.append("r1", 99, payload(99), base_version=0)


def test_non_finite_metadata_round_trips(tmp_path):
    """A NaN delta is spooled like any other (the aggregator rejects it as ``nonfinite``): SQLite keeps a
    NaN REAL as NULL, the entry still reads back with NaN, and merges/acks work on it."""
    sp = Spool(str(tmp_path))
    assert sp.append("r1", 1, encode(np.full(8, np.nan, np.float32)), base_version=0, local_loss=float("nan"))
    (e,) = sp.pending()
    assert np.isnan(e.l2_norm) and np.isnan(e.local_loss) and np.isnan(decode(sp.read(e))).all()
    assert sp.ack([e.key]) == 1 and sp.is_acked("r1", 1)


def test_deduplicated_by_robot_and_sequence(tmp_path):
    sp = Spool(str(tmp_path))
    assert sp.append("r1", 5, payload(5), base_version=0)
    assert not sp.append("r1", 5, payload(5), base_version=0)  # pending duplicate
    assert sp.append("r2", 5, payload(5), base_version=0)  # other robot, same seq: fine
    sp.ack([("r1", 5)])
    assert not sp.append("r1", 5, payload(5), base_version=0)  # acknowledged duplicate
    assert sp.stats()["duplicates"] == 2
    with pytest.raises(ValueError):
        sp.append("bad/robot", 1, payload(1), base_version=0)
    with pytest.raises(ValueError):
        sp.append("r1", 0, payload(1), base_version=0)


def test_survives_restart(tmp_path):
    sp = Spool(str(tmp_path))
    for s in range(1, 6):
        sp.append("r1", s, payload(s), base_version=1)
    sp.ack([("r1", 1)])
    sp.inbox.put(3, encode(np.ones(4, np.float32)))
    del sp
    sp2 = Spool(str(tmp_path))
    assert [e.seq for e in sp2.pending()] == [2, 3, 4, 5]
    assert not sp2.append("r1", 1, payload(1), base_version=1)
    assert sp2.inbox.latest_version() == 3
    assert sp2.stats()["appended"] == 5


def test_full_policy_merge_sums_oldest_unsent(tmp_path):
    one = len(payload(1)) + 400  # entry file size incl. metadata
    sp = Spool(str(tmp_path), max_bytes=3 * one, policy="merge")
    for s in range(1, 8):
        assert sp.append("r1", s, payload(s), base_version=10 - s, sample_count=1, local_loss=float(s))
    es = sp.pending()
    assert len(es) == 3 and sp.bytes_used() <= 3 * one
    ranges = [(e.seq_first, e.seq) for e in es]
    covered = sorted(s for a, b in ranges for s in range(a, b + 1))
    assert covered == list(range(1, 8))  # nothing lost, nothing duplicated
    for e in es:
        want = sum(vec(s) for s in range(e.seq_first, e.seq + 1))
        assert np.array_equal(decode(sp.read(e)), want)
        assert e.merged == e.seq - e.seq_first + 1 == int(want[-1])
        assert e.base_version == 10 - e.seq  # the oldest base of the merged deltas
        assert e.sample_count == e.merged
    assert sp.stats()["merged"] == 4 and sp.stats().get("dropped", 0) == 0
    # any sequence inside a merged range is a duplicate
    assert not sp.append("r1", es[0].seq_first, payload(1), base_version=0)


def test_full_policy_merge_skips_sent_entries(tmp_path):
    one = len(payload(1)) + 400
    sp = Spool(str(tmp_path), max_bytes=3 * one, policy="merge")
    for s in (1, 2, 3):
        sp.append("r1", s, payload(s), base_version=0)
    sp.mark_sent(sp.pending()[:2])  # 1 and 2 are in flight
    sp.append("r1", 4, payload(4), base_version=0)  # must merge 3 and 4, not 1 and 2
    assert [(e.seq_first, e.seq) for e in sp.pending()] == [(1, 1), (2, 2), (3, 4)]
    assert sp.stats()["sent_pending"] == 2
    sp.ack([("r1", 1), ("r1", 2)])
    assert sp.stats()["sent_pending"] == 0


def test_full_policy_drop_oldest_and_reject(tmp_path):
    one = len(payload(1)) + 400
    sp = Spool(str(tmp_path / "drop"), max_bytes=2 * one, policy="drop_oldest")
    for s in range(1, 6):
        sp.append("r1", s, payload(s), base_version=0, sample_count=3)
    assert [e.seq for e in sp.pending()] == [4, 5]
    st = sp.stats()
    assert st["dropped"] == 3 and st["dropped_samples"] == 9
    assert not sp.append("r1", 2, payload(2), base_version=0)  # dropped sequences stay dead

    sp = Spool(str(tmp_path / "rej"), max_bytes=2 * one, policy="reject")
    sp.append("r1", 1, payload(1), base_version=0)
    sp.append("r1", 2, payload(2), base_version=0)
    with pytest.raises(SpoolFull):
        sp.append("r1", 3, payload(3), base_version=0)
    assert sp.stats()["rejected_full"] == 1 and len(sp.pending()) == 2
    with pytest.raises(SpoolFull):
        Spool(str(tmp_path / "tiny"), max_bytes=100).append("r1", 1, payload(1), base_version=0)
    with pytest.raises(ValueError):
        Spool(str(tmp_path / "x"), policy="nope")


def test_rejects_non_codec_payloads(tmp_path):
    from sakura_nexus.federated.common.codecs import CodecError

    sp = Spool(str(tmp_path))
    with pytest.raises(CodecError):
        sp.append("r1", 1, b"raw image bytes" * 100, base_version=0)
    p = bytearray(payload(1))
    p[-5] ^= 1
    with pytest.raises(CodecError):
        sp.append("r1", 1, bytes(p), base_version=0)


def test_corrupt_entry_is_quarantined_not_read(tmp_path):
    from sakura_nexus.federated.robot.spool import SpoolError

    sp = Spool(str(tmp_path))
    for s in (1, 2, 3):
        sp.append("r1", s, payload(s), base_version=0)
    es = sp.pending()
    db = sqlite3.connect(os.path.join(str(tmp_path), "spool.db"))

    def rot(e, edit):  # the stored payload changes behind the spool's back
        (p,) = db.execute("SELECT payload FROM entries WHERE robot_id = ? AND seq = ?", e.key).fetchone()
        with db:
            db.execute("UPDATE entries SET payload = ? WHERE robot_id = ? AND seq = ?", (edit(bytearray(p)), *e.key))

    def flip(b, offset):  # bit rot
        b[offset] ^= 0xFF
        return bytes(b)

    rot(es[0], lambda b: flip(b, len(b) - 100))  # inside the payload
    with pytest.raises(SpoolError):
        sp.read(es[0])  # never handed out
    rot(es[1], lambda b: bytes(b[:-1]))  # a short payload: caught by the cheap listing scan
    assert [e.seq for e in sp.pending()] == [3]
    assert sp.stats()["corrupt"] == 2
    assert db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 2
    assert sp.verify() == 1


def test_inbox_keeps_newest_versions(tmp_path):
    sp = Spool(str(tmp_path))
    inbox = sp.inbox
    assert inbox.latest() is None and inbox.latest_version() == -1
    for v in (1, 2, 3, 4):
        assert inbox.put(v, encode(np.full(3, v, np.float32)))
    assert not inbox.put(2, encode(np.zeros(3, np.float32)))  # not newer
    v, p, meta = inbox.latest()
    assert v == 4 and np.all(decode(p) == 4) and meta["version"] == 4 and len(meta["sha256"]) == 64
    assert inbox.versions() == [2, 3, 4]  # keep=3
    assert inbox.put(1, encode(np.zeros(3, np.float32)), model_id="encoder")
    assert inbox.latest_version("encoder") == 1 and inbox.latest_version() == 4


WRITER = r"""
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[3])
from sakura_nexus.federated.robot.spool import Spool
from sakura_nexus.federated.common.codecs import encode
d, max_bytes = sys.argv[1], int(sys.argv[2])
n = 200_000
sp = Spool(d, max_bytes=max_bytes, policy="merge")
seq = sp.next_sequence("r1")
while True:
    x = np.zeros(n, np.float32); x[seq % (n - 1)] = seq; x[-1] = 1.0
    sp.append("r1", seq, encode(x, "dense"), base_version=0, sample_count=1)
    print(seq, flush=True)
    seq += 1
"""


@pytest.mark.parametrize("trial,max_bytes", [(0, 1 << 30), (1, 1 << 30), (2, 4 * 800_600)])
def test_sigkill_mid_stream_keeps_every_acknowledged_append(tmp_path, trial, max_bytes):
    """A writer process is SIGKILLed at a random moment (often inside a write or a merge). Every append
    that returned (printed) must be present and intact; nothing partial may be visible."""
    d = str(tmp_path / "spool")
    rng = random.Random(trial)
    acked: list[int] = []
    for _round in range(2):  # kill, restart the writer on the same spool, kill again
        proc = subprocess.Popen([sys.executable, "-c", WRITER, d, str(max_bytes), ROOT],
                                stdout=subprocess.PIPE, text=True)
        target = len(acked) + rng.randint(3, 8)
        while len(acked) < target:
            line = proc.stdout.readline()
            assert line, "writer died"
            acked.append(int(line))
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait()
        acked += [int(x) for x in rest.split()]
    sp = Spool(d, max_bytes=max_bytes)
    entries = sp.pending()
    covered: dict[int, int] = {}
    for e in entries:
        x = decode(sp.read(e))  # every visible entry is complete and verifies
        seqs = range(e.seq_first, e.seq + 1)
        assert int(x[-1]) == len(seqs)
        for s in seqs:
            assert x[s % (x.size - 1)] == s
            covered[s] = covered.get(s, 0) + 1
    for s in acked:
        assert covered.get(s) == 1, f"acknowledged append {s} missing or duplicated"
    assert sqlite3.connect(os.path.join(d, "spool.db")).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    if max_bytes < (1 << 30):
        assert sp.bytes_used() <= max_bytes


ACK_KILLER = r"""
import os, signal, sys
from sakura_nexus.federated.common.protocol import parse_ack
from sakura_nexus.federated.robot.spool import Spool
d, k, acks = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
sp = Spool(d)
ran = []
def before_statement(sql):
    ran.append(sql)
    if len(ran) > k:
        os.kill(os.getpid(), signal.SIGKILL)  # before the ack's statement number k + 1 runs
sp.db.conn().set_trace_callback(before_statement)
sp.ack([parse_ack(a) for a in acks])
os.kill(os.getpid(), signal.SIGKILL)  # k past its last statement: killed after ack() returned
"""


def _exchange_until_drained(sp, agg, acks):
    """The ClientApp (``handle_sync``) against a real aggregator, acking what it processed, until empty."""
    from sakura_nexus.federated.common.protocol import SyncRequest, format_ack
    from sakura_nexus.federated.robot.clientapp import handle_sync

    for _ in range(20):
        reply = handle_sync(SyncRequest(global_version=agg.version, acks=acks, max_batch=2), sp, "r1")
        acks = []
        for d in reply.deltas:
            r = agg.submit_payload(d.payload, d.base_version, "r1", d.seq, seq_first=d.seq_first)
            assert r.status in ("accepted", "duplicate"), r
            acks.append(format_ack("r1", d.seq_first, d.seq))
        if not reply.deltas and not acks:
            return
    raise AssertionError("spool did not drain")


def test_sigkill_inside_an_ack_loses_nothing_and_delivers_nothing_twice(tmp_path):
    """An ack is one transaction: the acknowledged entries are deleted and their ranges enter the de-dup
    table (``acked``) together, with the ``acked`` counter. The robot process is SIGKILLed before each SQL
    statement of the ack in turn — among them the split the file spool had, entries deleted but their
    de-dup ranges not yet written — and once after ack() returned. Reopened, the spool holds the ack
    entirely or not at all; the next exchanges against a real FedBuffAggregator drain it with every delta
    applied exactly once (an ack that died is re-sent, refused as a duplicate by the aggregator, re-acked)."""
    from sakura_nexus.federated.common.protocol import SyncRequest, format_ack
    from sakura_nexus.federated.fleet.aggregator import FedBuffAggregator, FedBuffConfig
    from sakura_nexus.federated.robot.clientapp import handle_sync

    n = 64

    def in_flight(d):  # three deltas sent and applied by the aggregator; their ack is on its way back
        sp = Spool(d)
        for s in (1, 2, 3):
            sp.append("r1", s, payload(s, n), base_version=0, sample_count=1)
        agg = FedBuffAggregator(np.zeros(n, np.float32), FedBuffConfig(buffer_size=2))
        reply = handle_sync(SyncRequest(global_version=0), sp, "r1")
        assert [d.seq for d in reply.deltas] == [1, 2, 3] and sp.stats()["sent_pending"] == 3
        for d in reply.deltas:
            assert agg.submit_payload(d.payload, d.base_version, "r1", d.seq).accepted
        return sp, agg, [format_ack("r1", d.seq_first, d.seq) for d in reply.deltas]

    sp, _, acks = in_flight(str(tmp_path / "dry"))  # how many statements the ack runs
    ran: list[str] = []
    sp.db.conn().set_trace_callback(ran.append)
    sp.ack([("r1", s) for s in (1, 2, 3)])
    sp.db.conn().set_trace_callback(None)
    assert ran[0] == "BEGIN IMMEDIATE" and "COMMIT" in ran and len(ran) >= 8, ran
    outcomes = []
    for k in range(len(ran) + 1):
        d = str(tmp_path / f"k{k}")
        sp, agg, acks = in_flight(d)
        del sp
        proc = subprocess.run([sys.executable, "-c", ACK_KILLER, d, str(k), ",".join(acks)], capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        sp = Spool(d)
        st = sp.stats()
        done = [sp.is_acked("r1", s) for s in (1, 2, 3)]
        if any(done):  # committed: all of it
            assert all(done) and st["pending"] == 0 and st["acked"] == 3, (k, st)
        else:  # rolled back: all of it, still marked in flight
            assert st["pending"] == 3 and st["sent_pending"] == 3 and st.get("acked", 0) == 0, (k, st)
        outcomes.append(all(done))
        assert sqlite3.connect(os.path.join(d, "spool.db")).execute("PRAGMA integrity_check").fetchone() == ("ok",)
        sp.append("r1", 4, payload(4, n), base_version=0, sample_count=1)  # the robot goes on learning
        # the aggregator never got this ack (the robot died): it re-acks these ranges in the next exchange
        # only if they come back, so the next request carries no acks
        _exchange_until_drained(sp, agg, [])
        assert agg.counters["accepted_deltas"] == 4 and agg.counters.get("duplicates", 0) == (0 if all(done) else 3)
        assert agg._s.seen.to_json() == {"r1": [[1, 4]]}
        assert sp.pending() == [] and all(sp.is_acked("r1", s) for s in (1, 2, 3, 4))
        assert not any(sp.append("r1", s, payload(s, n), base_version=0) for s in (1, 2, 3, 4))
    print(f"\nACK KILL: {len(ran)} statements {ran}; acked after kill at k: {outcomes}")
    assert outcomes[0] is False and outcomes[-1] is True  # both sides of the commit were hit
    assert outcomes == sorted(outcomes)  # never acked before the commit, always after it


def test_a_forked_child_opens_its_own_connection(tmp_path):
    """The warm ClientApp server forks one child per exchange: a Spool object inherited across fork must
    not reuse (or close) the parent's SQLite connection; both processes keep working on the same file."""
    sp = Spool(str(tmp_path))
    sp.append("r1", 1, payload(1), base_version=0)
    parent_conn = sp.db.conn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = sp.db.conn() is not parent_conn and sp.ack([("r1", 1)]) == 1 \
                and sp.append("r1", 2, payload(2), base_version=0) and sp.inbox.put(1, payload(1))
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"1"
    assert sp.db.conn() is parent_conn
    assert [e.seq for e in sp.pending()] == [2] and sp.is_acked("r1", 1) and sp.inbox.latest_version() == 1
    assert sp.append("r1", 3, payload(3), base_version=0) and sp.stats()["appended"] == 3
    assert sqlite3.connect(os.path.join(str(tmp_path), "spool.db")).execute("PRAGMA integrity_check").fetchone() \
        == ("ok",)


def _legacy_file(meta: dict, data: bytes) -> bytes:
    """An entry / inbox file exactly as the file-based spool wrote it (frozen copy of its format)."""
    m = json.dumps(meta, sort_keys=True).encode()
    body = m + data
    return struct.pack("<4sIQ", b"SKSP", len(m), len(data)) + body + hashlib.sha256(body).digest()


def _write_file_spool(d) -> dict:
    """A spool directory of the file-based format: entries (one merged, one stale crash leftover of a merge,
    one corrupt, a temp file), quarantine, inbox, state.json, locks, and the uplink's own state."""
    for sub in ("deltas", "inbox", "quarantine", "uplink"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    payloads = {}

    def entry(seq, first=None, t=0.0):
        first = first or seq
        x = sum(vec(s) for s in range(first, seq + 1))
        p = payloads[seq] = encode(x)
        meta = dict(robot_id="r1", seq=seq, seq_first=first, base_version=2, codec="dense",
                    sample_count=10 * (seq - first + 1), local_loss=0.5, l2_norm=float(np.linalg.norm(x)),
                    model_id="world_model", created_at=1000.0 + t, payload_len=len(p), merged=seq - first + 1)
        (d / "deltas" / f"r1__{seq:020d}.delta").write_bytes(_legacy_file(meta, p))

    entry(3, t=3)
    entry(4, t=4)
    entry(7, first=5, t=5)  # a merged entry covering 5..7
    entry(6, t=6)  # left inside the merged range by a crash between the merged write and the delete
    (d / "deltas" / f"r1__{9:020d}.delta").write_bytes(b"SKSP" + bytes(60))  # corrupt
    (d / "deltas" / ".tmp-0123").write_bytes(b"partial")
    (d / "quarantine" / f"r1__{8:020d}.delta").write_bytes(b"rotten")
    for v in (3, 4):
        mp = encode(np.full(3, v, np.float32))
        meta = {"version": v, "model_id": "world_model", "received_at": 5.0,
                "sha256": hashlib.sha256(mp).hexdigest(), "key_id": "k1", "signature": "ab" * 32}
        (d / "inbox" / f"world_model__v{v:010d}.model").write_bytes(_legacy_file(meta, mp))
    state = {"counters": {"appended": 9, "acked": 2, "duplicates": 1, "merged": 2, "syncs": 4, "corrupt": 1},
             "acked": {"r1": [[1, 2]]}, "sent": {"r1": [[4, 4]]}, "last_seq": {"r1": 9},
             "last_sync": {"time": 123.0, "global_version": 3}}
    (d / "state.json").write_text(json.dumps(state))
    for lock in (d / ".lock", d / "inbox" / ".lock"):
        lock.touch()
    (d / "uplink" / "state.0.npz").write_bytes(b"uplink state")
    return payloads


def _check_migrated(d, payloads):
    sp = Spool(str(d))
    es = sp.pending()
    assert [(e.seq_first, e.seq, e.merged) for e in es] == [(3, 3, 1), (4, 4, 1), (5, 7, 3)]
    assert [sp.read(e) for e in es] == [payloads[3], payloads[4], payloads[7]]
    assert es[2].sample_count == 30 and es[0].base_version == 2 and es[0].created_at == 1003.0
    st = sp.stats()
    assert (st["appended"], st["acked"], st["duplicates"], st["merged"], st["syncs"]) == (9, 2, 1, 2, 4)
    assert st["corrupt"] == 2 and st["pending"] == 3 and st["sent_pending"] == 1
    assert [e.seq for e in sp.pending(unsent_only=True)] == [3, 7]
    assert sp.is_acked("r1", 1) and sp.is_acked("r1", 2) and not sp.is_acked("r1", 3)
    assert sp.next_sequence("r1") == 10
    assert sp.last_sync() == {"time": 123.0, "global_version": 3}
    v, mp, meta = sp.inbox.latest()
    assert v == 4 and np.all(decode(mp) == 4) and meta["key_id"] == "k1" and sp.inbox.versions() == [3, 4]
    db = sqlite3.connect(os.path.join(str(d), "spool.db"))
    assert db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 2  # the corrupt entry, the old one
    # the old files are removed only now; state.json stays for reference; the uplink's own files untouched
    assert {n for n in os.listdir(d) if not n.startswith("spool.db")} == {"state.json.migrated", "uplink"}
    assert (d / "uplink" / "state.0.npz").read_bytes() == b"uplink state"
    return sp


def test_file_format_spool_migrates_on_first_open(tmp_path):
    d = tmp_path / "spool"
    payloads = _write_file_spool(d)
    sp = _check_migrated(d, payloads)
    for s in (1, 2, 3, 5, 6, 7):  # acknowledged, pending or inside the merged range: the de-dup carried over
        assert not sp.append("r1", s, payload(s), base_version=0)
    assert sp.append("r1", 10, payload(10), base_version=0) and sp.ack([("r1", 3), ("r1", 4)]) == 2
    # a crash after the import's commit but before the files were removed: the next open imports nothing
    # twice, it only finishes the clean-up
    before = Spool(str(d)).stats()
    _write_file_spool(d)
    sp = Spool(str(d))
    assert sp.stats() == before and [e.seq for e in sp.pending()] == [7, 10]
    assert {n for n in os.listdir(d) if not n.startswith("spool.db")} == {"state.json.migrated", "uplink"}


MIGRATION_KILLER = r"""
import os, signal, sys
import sakura_nexus.federated.common.durable as durable
from sakura_nexus.federated.robot.spool import Spool
opened = durable.Database._open
inserts = []
def before_statement(sql):
    inserts.extend(sql.split()[:1] if sql.startswith("INSERT") else [])
    if len(inserts) >= int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # in the middle of the import's transaction
def _open(self):
    c = opened(self)
    c.set_trace_callback(before_statement)
    return c
durable.Database._open = _open
Spool(sys.argv[1])
"""


def test_sigkill_during_the_migration_leaves_the_old_spool_intact(tmp_path):
    d = tmp_path / "spool"
    payloads = _write_file_spool(d)
    files = sorted(p.relative_to(d) for p in d.rglob("*"))
    proc = subprocess.run([sys.executable, "-c", MIGRATION_KILLER, str(d), "4"], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # nothing committed, no old file touched; the next open migrates everything
    assert sorted(p.relative_to(d) for p in d.rglob("*") if not p.name.startswith("spool.db")) == files
    db = sqlite3.connect(os.path.join(str(d), "spool.db"))
    assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0
    db.close()
    _check_migrated(d, payloads)


ACKER = r"""
import os, sys, time
from sakura_nexus.federated.robot.spool import Spool
d = sys.argv[1]
sp = Spool(d)
acked = 0
while True:
    done = os.path.exists(os.path.join(d, "DONE"))
    batch = sp.pending("r1")[:3]
    for e in batch:
        sp.read(e)
    sp.mark_sent(batch)
    acked += sp.ack([e.key for e in batch])
    sp.record_sync(1, 0, 0)
    if done and not batch:
        break
print(acked)
"""


def test_two_processes_append_and_ack_concurrently(tmp_path):
    """The ROS node appends while a ClientApp process reads, marks and acks: SQLite's locking (busy
    timeout, no flock) serialises them; every append is acknowledged exactly once."""
    d = str(tmp_path)
    sp = Spool(d)
    child = subprocess.Popen([sys.executable, "-c", ACKER, d], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    for s in range(1, 61):
        assert sp.append("r1", s, payload(s, 256), base_version=0)
    open(os.path.join(d, "DONE"), "w").close()
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    st = sp.stats()
    assert int(out) == 60 == st["acked"] == st["appended"] and st["pending"] == 0
    assert all(sp.is_acked("r1", s) for s in range(1, 61)) and st["syncs"] > 0
