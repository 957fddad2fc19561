"""FedBuff-style buffered asynchronous aggregation with staleness weighting, robust aggregation,
central DP, validation, persisted de-duplication and a versioned model store (SQLite).

The same :class:`FedBuffAggregator` is used by the Flower ServerApp (``fleet/serverapp.py``) and directly by
an in-process fleet simulation::

    agg = FedBuffAggregator(initial_model, FedBuffConfig(buffer_size=4))
    res = agg.submit(delta, base_version=3, robot_id="r1", seq=17)
    if res.new_version is not None: ...   # an aggregation happened

Update rule (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"): every
delta ``d_i`` computed from global version ``b_i`` arrives with staleness ``s_i = v - b_i`` and weight
``w_i = (1 + s_i)^-a`` (a = 0.5 by default). Weighted deltas are buffered; after ``K`` arrivals

    mean:          x <- x + eta * (1/K) * sum_i w_i clip(d_i)
    median/trim:   x <- x + eta * coordinate-wise median / trimmed mean over robots of w-weighted means
    DP:            x <- x + eta * (sum_r clip_C(slot_r) + N(0, (z C)^2 I)) / K

Deltas of the same robot inside one buffer share a *slot* (their weighted sum), so a robot contributes
at most one vector per aggregation: that bounds the L2 sensitivity to ``C`` for DP and gives each
robot one vote in median / trimmed mean.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from ..common.codecs import CodecError, decode_verified, encode, get_codec, parse_header
from ..common.durable import Database, SeqRanges, check_robot_id, clean_temp_files, load_ranges, store_ranges
from ..common.privacy import DEFAULT_DELTA, GaussianDP, RDPAccountant, clip_l2, l2norm

__all__ = [
    "REJECT_REASONS",
    "FedBuffAggregator",
    "FedBuffConfig",
    "GlobalModelStore",
    "SubmitResult",
    "coordinate_median",
    "staleness_weight",
    "trimmed_mean",
]

REJECT_REASONS = ("corrupt", "codec", "oversized", "shape", "nonfinite", "norm", "stale", "future",
                  "overlap", "dp_budget", "bad_seq")


@dataclass
class FedBuffConfig:
    buffer_size: int = 4  # K: aggregate after this many accepted deltas
    staleness_exponent: float = 0.5  # w = (1 + s)^-a
    max_staleness: int = 1000  # reject deltas whose base is older than this many versions
    server_lr: float = 1.0
    clip_norm: float = 0.0  # L2 clip per delta (and per slot with DP); 0 = off
    reject_norm: float = 0.0  # reject deltas with L2 norm above this; 0 = off
    robust: str = "mean"  # mean | median | trimmed_mean
    trim_ratio: float = 0.2  # trimmed_mean drops ceil(trim_ratio * n) robots' values at each side
    max_payload_bytes: int = 64 << 20
    allowed_codecs: tuple[str, ...] | None = None  # None = every codec this build decodes
    dp_noise_multiplier: float = 0.0  # z; > 0 enables central DP (needs clip_norm > 0)
    dp_target_delta: float = DEFAULT_DELTA
    dp_max_epsilon: float = 0.0  # stop aggregating before exceeding it; 0 = no limit
    dp_sample_rate: float = 1.0  # assumed Poisson participation rate (1.0 = no amplification claimed)
    keep_versions: int = 3  # old global models kept in the store
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError("buffer_size must be >= 1")
        if self.robust not in ("mean", "median", "trimmed_mean"):
            raise ValueError(f"robust must be mean|median|trimmed_mean, got {self.robust!r}")
        if not 0 <= self.trim_ratio < 0.5:
            raise ValueError("trim_ratio must be in [0, 0.5)")
        if self.dp_noise_multiplier > 0 and self.clip_norm <= 0:
            raise ValueError("central DP needs clip_norm > 0")
        if self.allowed_codecs is not None:
            self.allowed_codecs = tuple(self.allowed_codecs)
            for c in self.allowed_codecs:
                get_codec(c)

    @classmethod
    def from_dict(cls, d: dict) -> FedBuffConfig:
        """Build from a dict with ``snake_case`` or ``kebab-case`` keys (unknown keys ignored)."""
        names = {f.name for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            k2 = k.replace("-", "_")
            if k2 in names:
                kw[k2] = v
        if isinstance(kw.get("allowed_codecs"), str):
            s = kw["allowed_codecs"].strip()
            kw["allowed_codecs"] = tuple(x.strip() for x in s.split(",") if x.strip()) or None
        if kw.get("seed") in ("", -1):
            kw["seed"] = None
        return cls(**kw)


@dataclass
class SubmitResult:
    status: str  # "accepted" | "duplicate" | "rejected"
    reason: str = ""
    new_version: int | None = None  # set when this submission triggered an aggregation
    version: int = 0  # global version after the call
    staleness: int = 0
    weight: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    return float((1.0 + max(0, staleness)) ** (-exponent))


def coordinate_median(rows: np.ndarray) -> np.ndarray:
    return np.median(np.asarray(rows, np.float32), axis=0).astype(np.float32)


def trimmed_mean(rows: np.ndarray, trim_ratio: float) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    n = rows.shape[0]
    k = int(math.ceil(trim_ratio * n - 1e-9))
    if n - 2 * k < 1:
        k = (n - 1) // 2
    if k == 0:
        return rows.mean(axis=0).astype(np.float32)
    s = np.sort(rows, axis=0)
    return s[k:n - k].mean(axis=0).astype(np.float32)


# --------------------------------------------------------------------------- store

STORE_DB = "store.db"
_STORE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS models (version INTEGER PRIMARY KEY, sha256 BLOB NOT NULL, data BLOB NOT NULL)",
    """CREATE TABLE IF NOT EXISTS slots (robot_id TEXT PRIMARY KEY, count INTEGER NOT NULL,
         samples INTEGER NOT NULL, weight REAL NOT NULL, sha256 BLOB NOT NULL, data BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS seen (robot_id TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
         PRIMARY KEY (robot_id, first))""",
)


@dataclass
class _Slot:
    total: np.ndarray
    count: int = 0
    samples: int = 0
    weight: float = 0.0
    dirty: bool = True  # changed since it was last saved


def _f32(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, "<f4").tobytes()


def _array(data: bytes, digest: bytes, what: str) -> np.ndarray:
    data = bytes(data)
    if hashlib.sha256(data).digest() != bytes(digest):
        raise OSError(f"{what} is corrupt")
    return np.frombuffer(data, "<f4").astype(np.float32)


class GlobalModelStore:
    """The aggregator's checkpoint: one SQLite database ``<dir>/store.db`` (:class:`~.durable.Database`).

    ``state`` holds one JSON document (version, counters, buffered arrivals, robots, last aggregation,
    privacy ledger, config, the kept history), ``models`` the weights of the current version and the
    ``keep_versions`` before it, ``slots`` each robot's buffered weighted delta sum, ``seen`` the
    de-duplication ranges ``(robot_id, first, last)``; arrays are float32 with a sha256 checked on read.
    :meth:`save` writes all of it in one transaction, so publishing a version (new model, history pruned,
    buffer cleared, de-dup ranges, counters) is atomic. A store of the file-based format (``state.json``
    + ``blobs/*.npy``) is imported on first open (:meth:`_migrate_files`).
    """

    def __init__(self, directory: str, *, fsync: bool = True):
        self.dir = os.path.abspath(directory)
        self.fsync = fsync
        os.makedirs(self.dir, exist_ok=True)
        self.db = Database(os.path.join(self.dir, STORE_DB), _STORE_SCHEMA, fsync=fsync)
        self._migrate_files()

    def exists(self) -> bool:
        with self.db.read() as c:
            return c.execute("SELECT 1 FROM state").fetchone() is not None

    def load_state(self) -> dict | None:
        """The checkpoint's document, with ``seen`` (robot -> ranges) and ``slots`` (robot -> count, samples,
        weight) added; None for an empty store."""
        with self.db.read() as c:
            row = c.execute("SELECT doc FROM state").fetchone()
            if row is None:
                return None
            st = json.loads(row[0])
            st["seen"] = load_ranges(c, "seen").to_json()
            st["slots"] = {r: {"count": n, "samples": k, "weight": w}
                           for r, n, k, w in c.execute("SELECT robot_id, count, samples, weight FROM slots")}
        return st

    def load_checkpoint(self) -> tuple[dict, np.ndarray, dict[str, _Slot]] | None:
        """(document as :meth:`load_state`, current model, buffered slots) from one snapshot, or None."""
        with self.db.read() as c:
            st = self.load_state()
            if st is None:
                return None
            _, model = self.load_model(int(st["version"]))
            rows = c.execute("SELECT robot_id, count, samples, weight, sha256, data FROM slots").fetchall()
        slots = {r: _Slot(_array(d, h, f"slot {r}"), int(n), int(k), float(w), dirty=False)
                 for r, n, k, w, h, d in rows}
        return st, model, slots

    def versions(self) -> list[int]:
        """The versions whose weights are kept (the current one last)."""
        with self.db.read() as c:
            return [int(v) for (v,) in c.execute("SELECT version FROM models ORDER BY version")]

    def load_model(self, version: int | None = None) -> tuple[int, np.ndarray]:
        """(version, weights) of the current (or a kept older) global model."""
        with self.db.read() as c:
            row = c.execute("SELECT doc FROM state").fetchone()
            if row is None:
                raise FileNotFoundError(f"no checkpoint in {self.dir}")
            v = int(json.loads(row[0])["version"]) if version is None else int(version)
            m = c.execute("SELECT sha256, data FROM models WHERE version = ?", (v,)).fetchone()
        if m is None:
            raise KeyError(f"version {version} not kept")
        return v, _array(m[1], m[0], f"model version {v}")

    def save(self, state: dict, model: np.ndarray, slots: dict[str, _Slot], seen: SeqRanges,
             history: list[int]) -> None:
        """One transaction: the document, the model of ``state["version"]`` (if new), the kept versions
        pruned to ``history`` + current, the changed slots (others removed), the de-dup ranges."""
        version = int(state["version"])
        with self.db.write() as c:
            if c.execute("SELECT 1 FROM models WHERE version = ?", (version,)).fetchone() is None:
                data = _f32(model)
                c.execute("INSERT INTO models (version, sha256, data) VALUES (?, ?, ?)",
                          (version, hashlib.sha256(data).digest(), data))
            keep = sorted({int(v) for v in history} | {version})
            c.execute(f"DELETE FROM models WHERE version NOT IN ({', '.join('?' * len(keep))})", keep)
            robots = sorted(slots)
            c.execute(f"DELETE FROM slots WHERE robot_id NOT IN ({', '.join('?' * len(robots))})", robots)
            for r in robots:
                sl = slots[r]
                if sl.dirty:
                    data = _f32(sl.total)
                    c.execute("INSERT OR REPLACE INTO slots (robot_id, count, samples, weight, sha256, data) "
                              "VALUES (?, ?, ?, ?, ?, ?)", (r, sl.count, sl.samples, sl.weight,
                                                            hashlib.sha256(data).digest(), data))
            store_ranges(c, "seen", seen)
            c.execute("INSERT OR REPLACE INTO state (id, doc) VALUES (1, ?)", (json.dumps(state, sort_keys=True),))
        for sl in slots.values():
            sl.dirty = False

    def _migrate_files(self) -> None:
        """Import ``state.json`` + ``blobs/`` of the file-based store (one transaction, skipped when the
        database already holds a checkpoint); ``state.json`` is renamed ``state.json.migrated`` and the
        blobs removed only after the commit."""
        path = os.path.join(self.dir, "state.json")
        if not os.path.exists(path):
            return
        blob_dir = os.path.join(self.dir, "blobs")

        def blob(name: str) -> np.ndarray:
            with open(os.path.join(blob_dir, name), "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest()[:32] + ".npy" != name:
                raise OSError(f"blob {name} is corrupt")
            return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32).ravel()

        with self.db.write() as c:
            if c.execute("SELECT 1 FROM state").fetchone() is None:
                with open(path, "rb") as f:
                    st = json.loads(f.read().decode())
                models = {int(st["version"]): blob(st["model"])}
                models.update({int(v): blob(name) for v, name in st.get("history", [])})
                slots = {r: _Slot(blob(sd["blob"]), int(sd["count"]), int(sd["samples"]), float(sd["weight"]))
                         for r, sd in st.get("slots", {}).items()}
                history = [int(v) for v, _ in st.get("history", [])]
                for v, m in models.items():
                    data = _f32(m)
                    c.execute("INSERT INTO models (version, sha256, data) VALUES (?, ?, ?)",
                              (v, hashlib.sha256(data).digest(), data))
                doc = {k: v for k, v in st.items() if k not in ("model", "slots", "seen")}
                doc.update(format=2, history=history, migrated_at=time.time())
                self.save(doc, models[int(st["version"])], slots, SeqRanges(st.get("seen", {})), history)
        os.replace(path, path + ".migrated")
        for name in os.listdir(blob_dir) if os.path.isdir(blob_dir) else []:
            if name.endswith(".npy") or name.startswith(".tmp-"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(blob_dir, name))
        with contextlib.suppress(OSError):
            os.rmdir(blob_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, ".lock"))
        clean_temp_files(self.dir)


# --------------------------------------------------------------------------- aggregator


@dataclass
class _State:
    version: int
    model: np.ndarray
    seen: SeqRanges
    counters: dict = field(default_factory=dict)
    slots: dict = field(default_factory=dict)  # robot -> _Slot
    arrivals: int = 0
    history: list = field(default_factory=list)  # versions of the older models kept in the store
    last_aggregation: dict = field(default_factory=dict)
    robots: dict = field(default_factory=dict)  # robot -> {"last_seq", "last_seen", "accepted"}


class FedBuffAggregator:
    """Buffered asynchronous aggregator. Thread-safe; persistent when given a ``store_dir``."""

    def __init__(self, initial_model: np.ndarray | None = None, config: FedBuffConfig | None = None, *,
                 store_dir: str | None = None, fsync: bool = True, initial_version: int = 0):
        self.config = config or FedBuffConfig()
        self.store = GlobalModelStore(store_dir, fsync=fsync) if store_dir else None
        self._lock = threading.RLock()
        self._payload_cache: dict[tuple[int, str], bytes] = {}
        self._rng = np.random.default_rng(self.config.seed)
        accountant_state = None
        ck = self.store.load_checkpoint() if self.store else None
        if ck is not None:
            st, model, slots = ck
            self._s = _State(version=int(st["version"]), model=model, seen=SeqRanges(st.get("seen", {})),
                             counters=dict(st.get("counters", {})), slots=slots,
                             arrivals=int(st.get("arrivals", 0)), history=[int(v) for v in st.get("history", [])],
                             last_aggregation=dict(st.get("last_aggregation", {})), robots=dict(st.get("robots", {})))
            accountant_state = st.get("accountant")
            if initial_model is not None and np.asarray(initial_model).size != self._s.model.size:
                raise ValueError(f"checkpoint model has {self._s.model.size} parameters, "
                                 f"initial_model has {np.asarray(initial_model).size}")
        else:
            if initial_model is None:
                raise ValueError("no checkpoint found and no initial_model given")
            model = np.asarray(initial_model, np.float32).ravel().copy()
            if not np.all(np.isfinite(model)):
                raise ValueError("initial model is not finite")
            if int(initial_version) < 0:
                raise ValueError("initial_version must be >= 0")
            # = the version of the robots' shipped weights, so their first deltas are not "from the future"
            self._s = _State(version=int(initial_version), model=model, seen=SeqRanges())
        self.dp: GaussianDP | None = None
        if self.config.dp_noise_multiplier > 0:
            acc = (RDPAccountant.from_state_dict(accountant_state) if accountant_state
                   else RDPAccountant(target_delta=self.config.dp_target_delta))
            c = self.config
            self.dp = GaussianDP(clip_norm=c.clip_norm, noise_multiplier=c.dp_noise_multiplier,
                                 target_delta=c.dp_target_delta, sample_rate=c.dp_sample_rate,
                                 max_epsilon=c.dp_max_epsilon or None, seed=c.seed, accountant=acc)
        elif accountant_state and accountant_state.get("ledger"):
            # DP was on before the restart: keep reporting what was spent
            self._spent = RDPAccountant.from_state_dict(accountant_state)
        if self.store is not None and ck is None:
            self._persist()

    # ------------------------------------------------------------------ persistence

    def _persist(self) -> None:
        """Save the whole state in one store transaction (after every submission and aggregation)."""
        if self.store is None:
            return
        s = self._s
        acc = self.dp.accountant.state_dict() if self.dp else (
            self._spent.state_dict() if getattr(self, "_spent", None) else None)
        doc = {
            "format": 2, "version": s.version, "size": int(s.model.size), "counters": s.counters,
            "arrivals": s.arrivals, "history": list(s.history), "last_aggregation": s.last_aggregation,
            "robots": s.robots, "accountant": acc, "config": _jsonable(asdict(self.config)), "saved_at": time.time(),
        }
        self.store.save(doc, s.model, s.slots, s.seen, s.history)

    # ------------------------------------------------------------------ read-only views

    @property
    def version(self) -> int:
        return self._s.version

    @property
    def model(self) -> np.ndarray:
        return self._s.model.copy()

    @property
    def size(self) -> int:
        return int(self._s.model.size)

    @property
    def counters(self) -> dict:
        return dict(self._s.counters)

    @property
    def epsilon(self) -> float:
        if self.dp is not None:
            return self.dp.epsilon
        spent = getattr(self, "_spent", None)
        return spent.epsilon() if spent is not None else 0.0

    @property
    def buffered(self) -> int:
        return self._s.arrivals

    def is_seen(self, robot_id: str, seq: int) -> bool:
        return self._s.seen.contains(robot_id, seq)

    def snapshot(self) -> dict:
        with self._lock:
            return {"version": self._s.version, "counters": dict(self._s.counters),
                    "buffered": self._s.arrivals,
                    "buffer_robots": sorted(self._s.slots), "epsilon": self.epsilon,
                    "dp_releases": self.dp.accountant.num_releases if self.dp else 0,
                    "seen": self._s.seen.to_json(), "robots": dict(self._s.robots),
                    "last_aggregation": dict(self._s.last_aggregation), "size": self.size}

    def model_payload(self, codec: str = "dense") -> bytes:
        """The current global model encoded with ``codec`` (cached per version)."""
        with self._lock:
            key = (self._s.version, codec)
            if key not in self._payload_cache:
                self._payload_cache = {key: encode(self._s.model, codec)}
            return self._payload_cache[key]

    # ------------------------------------------------------------------ submission

    def _count(self, name: str, n: int = 1) -> None:
        self._s.counters[name] = self._s.counters.get(name, 0) + n

    def _reject(self, reason: str, robot_id: str, first: int, seq: int, persist: bool = True,
                staleness: int = 0) -> SubmitResult:
        self._count("rejected")
        self._count(f"rejected_{reason}")
        if seq >= first >= 1:
            self._s.seen.add(robot_id, first, seq)
        if persist:
            self._persist()
        return SubmitResult("rejected", reason, None, self._s.version, staleness)

    def submit_payload(self, payload: bytes, base_version: int, robot_id: str, seq: int, *,
                       seq_first: int | None = None, sample_count: int = 1) -> SubmitResult:
        """Validate and submit an encoded delta (size, integrity, codec, shape checks first)."""
        first = seq if seq_first is None else seq_first
        with self._lock:
            dup = self._check_dup(robot_id, first, seq)
            if dup is not None:
                return dup
            if len(payload) > self.config.max_payload_bytes:
                return self._reject("oversized", robot_id, first, seq)
            try:
                header = parse_header(payload)
            except CodecError:
                return self._reject("corrupt", robot_id, first, seq)
            if self.config.allowed_codecs is not None and header.codec not in self.config.allowed_codecs:
                return self._reject("codec", robot_id, first, seq)
            if header.size != self.size:
                return self._reject("shape", robot_id, first, seq)
            try:
                delta = decode_verified(payload, header)
            except CodecError:
                return self._reject("corrupt", robot_id, first, seq)
            return self._submit_locked(delta, base_version, robot_id, seq, first, sample_count)

    def submit(self, delta, base_version: int, robot_id: str, seq: int, *, seq_first: int | None = None,
               sample_count: int = 1) -> SubmitResult:
        """Submit a decoded delta (flat or any shape with the model's number of elements)."""
        first = seq if seq_first is None else seq_first
        with self._lock:
            dup = self._check_dup(robot_id, first, seq)
            if dup is not None:
                return dup
            return self._submit_locked(np.asarray(delta, np.float32), base_version, robot_id, seq, first,
                                       sample_count)

    def _check_dup(self, robot_id: str, first: int, seq: int) -> SubmitResult | None:
        check_robot_id(robot_id)
        if not (1 <= first <= seq):
            self._count("rejected")
            self._count("rejected_bad_seq")
            return SubmitResult("rejected", "bad_seq", None, self._s.version)
        n = seq - first + 1
        seen = self._s.seen.overlap(robot_id, first, seq)
        if seen == n:
            self._count("duplicates")
            return SubmitResult("duplicate", "", None, self._s.version)
        if seen:
            return self._reject("overlap", robot_id, first, seq)
        return None

    def _submit_locked(self, delta: np.ndarray, base_version: int, robot_id: str, seq: int, first: int,
                       sample_count: int) -> SubmitResult:
        cfg = self.config
        s = self._s
        self._count("received")
        rob = s.robots.setdefault(robot_id, {"accepted": 0})
        rob["last_seq"] = max(int(rob.get("last_seq", 0)), seq)
        rob["last_seen"] = time.time()
        if delta.size != s.model.size:
            return self._reject("shape", robot_id, first, seq)
        delta = delta.ravel()
        staleness = s.version - int(base_version)
        if staleness < 0:
            return self._reject("future", robot_id, first, seq, staleness=staleness)
        if staleness > cfg.max_staleness:
            return self._reject("stale", robot_id, first, seq, staleness=staleness)
        if not np.all(np.isfinite(delta)):
            return self._reject("nonfinite", robot_id, first, seq)
        norm = l2norm(delta)
        if not math.isfinite(norm):
            return self._reject("nonfinite", robot_id, first, seq)
        if cfg.reject_norm > 0 and norm > cfg.reject_norm:
            return self._reject("norm", robot_id, first, seq)
        if self.dp is not None and self.dp.would_exceed():
            return self._reject("dp_budget", robot_id, first, seq)
        if cfg.clip_norm > 0 and norm > cfg.clip_norm:
            delta, _ = clip_l2(delta, cfg.clip_norm)
            self._count("clipped")
        w = staleness_weight(staleness, cfg.staleness_exponent)
        slot = s.slots.get(robot_id)
        if slot is None:
            slot = s.slots[robot_id] = _Slot(total=np.zeros_like(s.model))
        slot.total += np.float32(w) * delta
        slot.dirty = True
        slot.count += 1
        slot.samples += int(sample_count)
        slot.weight += w
        s.arrivals += 1
        s.seen.add(robot_id, first, seq)
        self._count("accepted")
        self._count("accepted_deltas", seq - first + 1)
        rob["accepted"] = int(rob.get("accepted", 0)) + 1
        new_version = None
        if s.arrivals >= cfg.buffer_size:
            new_version = self._aggregate()
        self._persist()
        return SubmitResult("accepted", "", new_version, s.version, staleness, w)

    def apply_secure_mean(self, update: np.ndarray, contributions: list[tuple[str, list[tuple[int, int]]]],
                          *, samples: int = 0) -> int | None:
        """Secure mode (SecAgg+, ``serverapp.SecureServerLoop``): apply the mean over a group of robots
        of their deltas, unmasked by the protocol as one vector, ``x <- x + eta * update``. The
        aggregator never holds a robot's own vector, so nothing per robot is buffered or persisted:
        ``contributions`` is only the metadata, (robot, its delta sequence ranges in the sum), entered in
        the de-dup table. Returns the new version, or None (counted) when the update is refused: wrong
        shape, non-finite, a range already applied (the sum cannot be taken apart, so the whole group is
        dropped; the robots resend), or DP configured (central DP needs per-robot clipping)."""
        with self._lock:
            s = self._s
            u = np.asarray(update, np.float32).ravel()
            reason = None
            if self.dp is not None:
                reason = "dp"
            elif u.size != s.model.size:
                reason = "shape"
            elif not np.all(np.isfinite(u)):
                reason = "nonfinite"
            elif any(s.seen.overlap(r, f, q) for r, ranges in contributions for f, q in ranges):
                reason = "overlap"
            if reason is not None:
                self._count("secure_refused")
                self._count(f"secure_refused_{reason}")
                self._persist()
                return None
            new_model = (s.model + np.float32(self.config.server_lr) * u).astype(np.float32)
            if self.store is not None and self.config.keep_versions > 0:
                s.history = [*s.history, s.version][-self.config.keep_versions:]
            s.model = new_model
            s.version += 1
            robots = sorted({check_robot_id(r) for r, _ in contributions})
            n_deltas = 0
            for r, ranges in contributions:
                rob = s.robots.setdefault(r, {"accepted": 0})
                rob["last_seen"] = time.time()
                for f, q in ranges:
                    s.seen.add(r, f, q)
                    rob["last_seq"] = max(int(rob.get("last_seq", 0)), int(q))
                    n_deltas += int(q) - int(f) + 1
                rob["accepted"] = int(rob.get("accepted", 0)) + len(ranges)
            s.last_aggregation = {"version": s.version, "time": time.time(), "secure": True,
                                  "group": len(contributions), "deltas": n_deltas, "robots": robots,
                                  "samples": int(samples), "update_norm": l2norm(u)}
            self._count("aggregations")
            self._count("secure_aggregations")
            self._count("accepted_deltas", n_deltas)
            self._persist()
            return s.version

    def flush(self) -> int | None:
        """Aggregate whatever is buffered now (e.g. on shutdown of a simulation). Returns new version."""
        with self._lock:
            if self._s.arrivals == 0:
                return None
            v = self._aggregate()
            self._persist()
            return v

    def _aggregate(self) -> int | None:
        cfg = self.config
        s = self._s
        slots = list(s.slots.items())
        if self.dp is not None:
            if self.dp.would_exceed():
                self._count("dp_budget_exhausted")
                return None
            update = self.dp.aggregate([sl.total for _, sl in slots], divisor=float(s.arrivals))
        elif cfg.robust == "mean":
            update = sum((sl.total for _, sl in slots), np.zeros_like(s.model)) / np.float32(s.arrivals)
        else:
            rows = np.stack([sl.total / np.float32(max(sl.count, 1)) for _, sl in slots])
            update = coordinate_median(rows) if cfg.robust == "median" else trimmed_mean(rows, cfg.trim_ratio)
        new_model = (s.model + np.float32(cfg.server_lr) * update.astype(np.float32)).astype(np.float32)
        if not np.all(np.isfinite(new_model)):
            self._count("aggregation_nonfinite")
            s.slots.clear()
            s.arrivals = 0
            return None
        if self.store is not None and cfg.keep_versions > 0:
            s.history = [*s.history, s.version][-cfg.keep_versions:]
        s.model = new_model
        s.version += 1
        s.last_aggregation = {"version": s.version, "time": time.time(), "deltas": s.arrivals,
                              "robots": sorted(r for r, _ in slots),
                              "samples": int(sum(sl.samples for _, sl in slots)),
                              "update_norm": l2norm(update)}
        s.slots.clear()
        s.arrivals = 0
        self._count("aggregations")
        return s.version


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out
