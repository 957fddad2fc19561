"""Durable spool: atomic appends, de-duplication, full policies, acks, inbox, crash (SIGKILL) safety."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from sakura_nexus.federated.codecs import decode, encode
from sakura_nexus.federated.spool import Spool, SpoolFull

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    from sakura_nexus.federated.codecs import CodecError

    sp = Spool(str(tmp_path))
    with pytest.raises(CodecError):
        sp.append("r1", 1, b"raw image bytes" * 100, base_version=0)
    p = bytearray(payload(1))
    p[-5] ^= 1
    with pytest.raises(CodecError):
        sp.append("r1", 1, bytes(p), base_version=0)


def test_corrupt_entry_is_quarantined_not_read(tmp_path):
    from sakura_nexus.federated.spool import SpoolError

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
from sakura_nexus.federated.spool import Spool
from sakura_nexus.federated.codecs import encode
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
