"""The aggregator's Flower 1.42 ServerApps: ``server_app`` (FedBuff) and ``secure_server_app`` (SecAgg+),
referenced from ``flwr_app.toml`` as ``sakura_nexus.federated.fleet.serverapp:server_app``.

FedBuff (one long-running Flower run, :class:`FedBuffServerLoop`): keeps one message in flight per
connected SuperNode, pushes a new one ``sync-interval-s`` after the last reply (immediately if the robot
said it has more), feeds every delta of every reply into :class:`FedBuffAggregator` (persisted in
``store-dir``), and acknowledges the processed ``(robot, seq)`` ranges in the next message to that node. A
node that is offline simply gets no messages; when it returns its spooled deltas are applied with their
staleness weight. The global model goes out whenever a node's inbox is behind.

Secure mode (:class:`SecureServerLoop`, ``sakura-nexus aggregator --secure-aggregation``): synchronous
rounds over every connected SuperNode; Flower's SecAgg+ masks the robots' summed deltas so the ServerApp
only unmasks their mean over the group (docs/federated.md, "Secure aggregation").
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from ..common.durable import atomic_write_json
from ..common.flower_records import LOG, SECURE_WEIGHT, from_recorddict, parse_ranges, to_recorddict
from ..common.protocol import MESSAGE_TYPE, SyncReply, SyncRequest, format_ack
from .aggregator import FedBuffAggregator, FedBuffConfig


@dataclass
class ServerOptions:
    store_dir: str
    model_id: str = "world_model"
    model_codec: str = "dense"
    sync_interval_s: float = 5.0
    message_ttl_s: float = 600.0
    poll_interval_s: float = 0.5
    nodes_poll_s: float = 2.0
    offline_grace_s: float = 30.0
    max_duration_s: float = 0.0  # 0 = until a STOP file appears in store_dir
    max_version: int = 0  # 0 = unlimited
    max_batch: int = 16
    max_batch_bytes: int = 8 << 20
    status_interval_s: float = 1.0
    lock_timeout_s: float = 60.0
    signing_key: str = ""  # Ed25519 private key (PEM) that signs every global model sent down
    # secure mode (secure_server_app, SecAgg+): synchronous rounds over the connected SuperNodes
    secure_min_nodes: int = 3  # start a round only with at least this many SuperNodes connected
    secure_min_group: int = 2  # SecAgg+ reconstruction threshold: no sum of fewer robots is ever unmasked
    secure_clipping_range: float = 1.0  # every delta coordinate is clipped to +-this before quantisation
    secure_quantization_range: int = 1 << 22  # quantisation levels over [-range, range]
    secure_timeout_s: float = 30.0  # per protocol stage: robots that have not answered by then dropped out

    @classmethod
    def from_run_config(cls, rc: dict) -> ServerOptions:
        kw = {}
        for f in cls.__dataclass_fields__.values():
            key = f.name.replace("_", "-")
            if key in rc:
                kw[f.name] = str(rc[key]) if f.name in ("store_dir", "model_id", "model_codec", "signing_key") \
                    else type(f.default)(rc[key])
        if not kw.get("store_dir"):
            raise ValueError("run config 'store-dir' is required")
        return cls(**kw)

def _run_loop(loop, step: Callable[[], float | None], what: str, pause_s: float,
              max_consecutive_errors: int) -> None:
    """Call ``step`` until ``loop.stop_requested()``, pausing ``pause_s`` (or the seconds ``step`` returns)
    between calls. Transient SuperLink / HTTP trouble is logged and backed off; ``max_consecutive_errors``
    failures in a row write the status ``failed`` and re-raise. Ends with the status ``stopped``."""
    errors = 0
    while not loop.stop_requested():
        pause = pause_s
        try:
            pause = step() or pause_s
            errors = 0
        except Exception as e:  # transient SuperLink/HTTP trouble: log, back off, give up if it persists
            errors += 1
            loop.stats["loop_errors"] = loop.stats.get("loop_errors", 0) + 1
            LOG.warning("%s failed (%d in a row): %r", what, errors, e)
            if errors >= max_consecutive_errors:
                loop.write_status(state="failed")
                raise
            time.sleep(min(10.0, 0.5 * errors))
        time.sleep(pause)
    loop.write_status(state="stopped")


@dataclass
class _Node:
    robot: str = ""
    have_version: int = -1
    last_reply: float = 0.0
    more: bool = True
    acks: list[str] = field(default_factory=list)
    inflight: str | None = None
    sent_at: float = 0.0
    last_online: float = 0.0

class FedBuffServerLoop:
    """The asynchronous push/pull loop over a Flower ``Grid`` (see module docstring)."""

    def __init__(self, grid: Grid, agg: FedBuffAggregator, opts: ServerOptions):
        self.grid, self.agg, self.opts = grid, agg, opts
        self.nodes: dict[int, _Node] = {}
        self.online: set[int] = set()
        self.stats = {"messages_sent": 0, "replies": 0, "reply_errors": 0, "expired": 0, "bytes_in": 0,
                      "bytes_out": 0}
        self._last_nodes = 0.0
        self._last_status = 0.0
        self.started = time.time()
        self.signer = None
        if opts.signing_key:
            from ..common.signing import Signer

            self.signer = Signer.load(opts.signing_key)
            LOG.info("global models are signed with key %s", self.signer.key_id)
        else:
            LOG.warning("no signing-key: global models go out unsigned and robots will refuse them")
        self._signature: tuple[int, bytes] | None = None  # (version, signature) of the current model

    def stop_requested(self) -> bool:
        o = self.opts
        if os.path.exists(os.path.join(o.store_dir, "STOP")):
            return True
        if o.max_duration_s > 0 and time.time() - self.started > o.max_duration_s:
            return True
        return o.max_version > 0 and self.agg.version >= o.max_version

    def run(self, max_consecutive_errors: int = 20) -> None:
        LOG.info("FedBuff loop started at version %d", self.agg.version)
        _run_loop(self, self.step, "loop step", self.opts.poll_interval_s, max_consecutive_errors)
        LOG.info("FedBuff loop stopped at version %d", self.agg.version)

    def step(self) -> None:
        now = time.time()
        if now - self._last_nodes >= self.opts.nodes_poll_s:
            self._last_nodes = now
            self.online = set(self.grid.get_node_ids())
            for n in self.online:
                self.nodes.setdefault(n, _Node()).last_online = now
        self._push(now)
        self._pull(time.time())
        if time.time() - self._last_status >= self.opts.status_interval_s:
            self.write_status()

    def _push(self, now: float) -> None:
        msgs, targets = [], []
        for nid in sorted(self.online):
            node = self.nodes[nid]
            if node.inflight is not None:
                continue
            if not node.more and now - node.last_reply < self.opts.sync_interval_s:
                continue
            req = SyncRequest(global_version=self.agg.version, model_id=self.opts.model_id, acks=node.acks,
                              max_batch=self.opts.max_batch, max_batch_bytes=self.opts.max_batch_bytes)
            if node.have_version < self.agg.version:
                req.model_version = self.agg.version
                req.model_payload = self.agg.model_payload(self.opts.model_codec)
                if self.signer is not None:
                    req.model_key_id, req.model_signature = self.signer.key_id, self._sign(
                        self.agg.version, req.model_payload)
            msgs.append(Message(to_recorddict(req.to_records()), dst_node_id=nid, message_type=MESSAGE_TYPE,
                                ttl=self.opts.message_ttl_s))
            targets.append((nid, len(req.model_payload or b"")))
        if not msgs:
            return
        ids = list(self.grid.push_messages(msgs))
        for (nid, nbytes), mid in zip(targets, ids, strict=False):
            if not mid:
                continue
            node = self.nodes[nid]
            node.inflight, node.sent_at = mid, now
            node.acks = []  # delivered with this message; a lost message means resend -> duplicate -> re-ack
            self.stats["messages_sent"] += 1
            self.stats["bytes_out"] += nbytes

    def _sign(self, version: int, payload: bytes) -> bytes:
        from ..common.weights import FLAT_VECTOR

        if self._signature is None or self._signature[0] != version:
            self._signature = (version, self.signer.sign(self.opts.model_id, version, FLAT_VECTOR, payload))
        return self._signature[1]

    def _pull(self, now: float) -> None:
        inflight = {n.inflight: nid for nid, n in self.nodes.items() if n.inflight}
        if not inflight:
            return
        for reply in self.grid.pull_messages(list(inflight)):
            mid = reply.metadata.reply_to_message_id
            nid = inflight.get(mid)
            if nid is None:
                continue
            node = self.nodes[nid]
            node.inflight = None
            node.last_reply = now
            if reply.has_error():
                self.stats["reply_errors"] += 1
                node.more = False
                LOG.warning("node %s replied with error: %s", nid, reply.error.reason)
                continue
            self.stats["replies"] += 1
            try:
                rep = SyncReply.from_records(from_recorddict(reply.content))
            except (KeyError, ValueError, TypeError) as e:
                self.stats["reply_errors"] += 1
                LOG.warning("malformed reply from node %s: %s", nid, e)
                continue
            self._handle_reply(node, rep)
        # forget messages that cannot be answered any more (TTL passed, or node gone for a while)
        for _nid, node in self.nodes.items():
            if node.inflight is None:
                continue
            gone = now - node.last_online > self.opts.offline_grace_s
            if now - node.sent_at > self.opts.message_ttl_s + 5 or gone:
                node.inflight = None
                node.have_version = -1
                self.stats["expired"] += 1

    def _handle_reply(self, node: _Node, rep: SyncReply) -> None:
        node.robot = rep.robot_id
        node.have_version = rep.have_version
        node.more = rep.more
        acks = []
        for d in rep.deltas:
            self.stats["bytes_in"] += len(d.payload)
            try:
                res = self.agg.submit_payload(d.payload, d.base_version, rep.robot_id, d.seq,
                                              seq_first=d.seq_first, sample_count=d.sample_count)
            except ValueError as e:  # invalid robot id etc.: cannot ack meaningfully
                LOG.warning("delta from %r rejected before processing: %s", rep.robot_id, e)
                continue
            if res.new_version is not None:
                LOG.info("global version %d (robots %s)", res.new_version,
                         self.agg.snapshot()["last_aggregation"].get("robots"))
            acks.append(format_ack(rep.robot_id, d.seq_first, d.seq))
        node.acks = acks
        if acks and not node.more:
            node.more = True  # push the acks promptly

    def write_status(self, state: str = "running") -> None:
        self._last_status = time.time()
        snap = self.agg.snapshot()
        snap.update(state=state, heartbeat=time.time(), pid=os.getpid(), loop=dict(self.stats),
                    nodes={str(k): {"robot": v.robot, "have_version": v.have_version,
                                    "inflight": v.inflight is not None, "online": k in self.online}
                           for k, v in self.nodes.items()})
        atomic_write_json(os.path.join(self.opts.store_dir, "status.json"), snap, fsync=False)

@contextlib.contextmanager
def _single_writer(store_dir: str, timeout_s: float):
    """At most one ServerApp per store: a previous one may linger briefly after its SuperLink died."""
    os.makedirs(store_dir, exist_ok=True)
    fd = os.open(os.path.join(store_dir, ".server.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.time() + timeout_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    raise RuntimeError(f"another aggregator holds {store_dir}") from None
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)

def _setup_logging(store_dir: str) -> None:
    if any(isinstance(h, logging.FileHandler) for h in LOG.handlers):
        return
    h = logging.FileHandler(os.path.join(store_dir, "server.log"))
    h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    LOG.addHandler(h)
    LOG.setLevel(logging.INFO)

def _initial_model(rc: dict) -> np.ndarray | None:
    """Initial global weights (used only when ``store-dir`` has no checkpoint yet): ``init-model`` (.npy,
    e.g. written by ``sakura-nexus aggregator --init-world-model``) or zeros of ``model-size``."""
    path = rc.get("init-model", "")
    if path:
        return np.load(str(path), allow_pickle=False).astype(np.float32).ravel()
    size = int(rc.get("model-size", 0))
    return np.zeros(size, np.float32) if size > 0 else None

server_app = ServerApp()

@contextlib.contextmanager
def _aggregator(context: Context):
    """(aggregator, options) of a ServerApp run, held as the store's single writer for the run."""
    rc = dict(context.run_config)
    opts = ServerOptions.from_run_config(rc)
    os.makedirs(opts.store_dir, exist_ok=True)
    _setup_logging(opts.store_dir)
    with _single_writer(opts.store_dir, opts.lock_timeout_s):
        agg = FedBuffAggregator(_initial_model(rc), FedBuffConfig.from_dict(rc), store_dir=opts.store_dir,
                                initial_version=int(rc.get("init-version", 0) or 0))
        yield agg, opts

@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    with _aggregator(context) as (agg, opts):
        FedBuffServerLoop(grid, agg, opts).run()

@dataclass
class _SecNode:
    robot: str = ""
    have_version: int = -1
    acks: list[str] = field(default_factory=list)

class SecureServerLoop:
    """Synchronous SecAgg+ rounds over a Flower ``Grid`` (see the section comment above)."""

    def __init__(self, grid: Grid, agg: FedBuffAggregator, opts: ServerOptions, context: Context):
        from flwr.server import ServerConfig
        from flwr.server.compat import LegacyContext
        if agg.dp is not None:
            raise ValueError("secure aggregation and central DP (dp-noise-multiplier > 0) are exclusive: "
                             "central DP clips each robot's delta, which the aggregator never sees")
        if opts.secure_min_group < 2 or opts.secure_min_nodes < opts.secure_min_group:
            raise ValueError("secure-min-group >= 2 and secure-min-nodes >= secure-min-group")
        self.grid, self.agg, self.opts = grid, agg, opts
        self.nodes: dict[int, _SecNode] = {}
        self.stats = {"rounds": 0, "rounds_applied": 0, "rounds_halted": 0, "rounds_refused": 0,
                      "dropouts": 0, "last_round_group": 0, "loop_errors": 0}
        self.started = time.time()
        self._sampled: list[int] = []
        self._done = False
        self.signer = None
        if opts.signing_key:
            from ..common.signing import Signer

            self.signer = Signer.load(opts.signing_key)
        self._signature: tuple[int, bytes] | None = None
        self.workflow = _secaggplus_workflow()(num_shares=1.0, reconstruction_threshold=int(opts.secure_min_group),
                                           max_weight=float(SECURE_WEIGHT),
                                           clipping_range=float(opts.secure_clipping_range),
                                           quantization_range=int(opts.secure_quantization_range),
                                           timeout=float(opts.secure_timeout_s))
        self.ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=1), strategy=_SecureStrategy(self))

    stop_requested = FedBuffServerLoop.stop_requested
    _sign = FedBuffServerLoop._sign

    def run(self, max_consecutive_errors: int = 20) -> None:
        from flwr.app import ArrayRecord
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        LOG.info("secure aggregation (SecAgg+) loop started at version %d: min nodes %d, min group %d, "
                 "clip +-%g, stage timeout %.0f s", self.agg.version, self.opts.secure_min_nodes,
                 self.opts.secure_min_group, self.opts.secure_clipping_range, self.opts.secure_timeout_s)
        cfg = ConfigRecord({Key.START_TIME: time.time()})
        self.ctx.state.config_records[MAIN_CONFIGS_RECORD] = cfg
        self.ctx.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # the model travels in FitIns.config
        self._round = 0

        def one_round() -> float | None:
            self.write_status()
            ids = sorted(self.grid.get_node_ids())
            if len(ids) < self.opts.secure_min_nodes:
                return self.opts.nodes_poll_s  # wait for more SuperNodes
            self._round += 1
            cfg[Key.CURRENT_ROUND] = self._round
            self._sampled, self._done = ids, False
            self.stats["rounds"] += 1
            LOG.info("secure round %d: %d SuperNodes", self._round, len(ids))
            self.workflow(self.grid, self.ctx)
            self.write_status()
            if not self._done:  # SecAgg+ halted (too few robots left to unmask): nothing was learned
                self.stats["rounds_halted"] += 1
                LOG.warning("secure round %d halted by SecAgg+ (fewer than %d robots left)", self._round,
                            self.opts.secure_min_group)
            return None

        _run_loop(self, one_round, "secure round", self.opts.sync_interval_s, max_consecutive_errors)
        LOG.info("secure aggregation loop stopped at version %d", self.agg.version)

    def configure(self, server_round: int) -> list:
        from flwr.common import FitIns, Parameters
        from flwr.server.compat.grid_client_proxy import GridClientProxy

        v = self.agg.version
        out = []
        for nid in self._sampled:
            node = self.nodes.setdefault(nid, _SecNode())
            conf = {"round": int(server_round), "global-version": int(v), "model-id": self.opts.model_id,
                    "model-size": int(self.agg.size), "clip": float(self.opts.secure_clipping_range),
                    "max-batch": int(self.opts.max_batch), "acks": ",".join(node.acks)}
            if node.have_version < v:
                payload = self.agg.model_payload(self.opts.model_codec)
                conf.update({"model-version": int(v), "model-payload": payload})
                if self.signer is not None:
                    conf.update({"model-key-id": self.signer.key_id, "model-signature": self._sign(v, payload)})
            out.append((GridClientProxy(node_id=nid, grid=self.grid, run_id=self.grid.run.run_id),
                        FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), conf)))
        return out

    def aggregate(self, server_round: int, results: list, failures: list):
        from flwr.common import parameters_to_ndarrays

        self._done = True
        contributions, samples = [], 0
        for proxy, fitres in results:
            m = fitres.metrics
            node = self.nodes.setdefault(proxy.node_id, _SecNode())
            node.robot = str(m.get("robot-id", ""))
            node.have_version = int(m.get("have-version", -1))
            node.acks = []  # they went down with this round's instructions
            contributions.append((node.robot, parse_ranges(m.get("ranges", "")), int(m.get("deltas", 0))))
            samples += int(m.get("samples", 0))
        dropped = len(self._sampled) - len(results)
        self.stats["dropouts"] += max(0, dropped)
        self.stats["last_round_group"] = len(results)
        if len(results) < self.opts.secure_min_group:
            self.stats["rounds_refused"] += 1
            return None, {}
        if not any(c[2] for c in contributions):
            LOG.info("secure round %d: no robot had a delta", server_round)
            return None, {}
        mean = parameters_to_ndarrays(results[0][1].parameters)[0]
        v = self.agg.apply_secure_mean(mean, [(r, rg) for r, rg, _ in contributions], samples=samples)
        if v is None:
            self.stats["rounds_refused"] += 1
            LOG.warning("secure round %d refused by the aggregator: %s", server_round, self.agg.counters)
            return None, {}
        self.stats["rounds_applied"] += 1
        for (proxy, _), (robot, ranges, _) in zip(results, contributions, strict=True):
            self.nodes[proxy.node_id].acks = [format_ack(robot, f, q) for f, q in ranges]
        LOG.info("global version %d (secure round %d: mean of %d robots %s, %d dropped out)", v, server_round,
                 len(results), sorted(r for r, _, _ in contributions), max(0, dropped))
        return None, {}

    def write_status(self, state: str = "running") -> None:
        snap = self.agg.snapshot()
        snap.update(state=state, mode="secure", heartbeat=time.time(), pid=os.getpid(), loop=dict(self.stats),
                    nodes={str(k): {"robot": v.robot, "have_version": v.have_version} for k, v in self.nodes.items()})
        atomic_write_json(os.path.join(self.opts.store_dir, "status.json"), snap, fsync=False)

def _secaggplus_workflow():
    """Flower's SecAggPlusWorkflow with one fix for robots that drop out BEFORE the key-share stage ends.

    Flower 1.42 counts every sampled node that is not active after the masked-vector stage as "dead" in
    the unmask stage and asks the survivors for their shares of its key. A node that dropped out during
    setup or key sharing never sent shares (and nobody masked with it: the pairwise masks are only
    with the nodes whose shares arrived), so every survivor fails with ``KeyError`` in
    ``secaggplus_mod._unmask`` and the round is lost (seen here: a robot killed during the key exchange
    halted the round). After the key-share stage the sampled set and the neighbour sets are therefore
    narrowed to the nodes that completed it: only those can be dead for the unmask stage."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class _Workflow(SecAggPlusWorkflow):
        def share_keys_stage(self, grid, context, state) -> bool:
            ok = super().share_keys_stage(grid, context, state)
            keep = set(state.active_node_ids)
            state.sampled_node_ids = keep
            # and nobody has pairwise masks with them: drop them from the neighbour sets the unmask uses
            state.nid_to_neighbours = {n: nb & keep for n, nb in state.nid_to_neighbours.items() if n in keep}
            return ok

    return _Workflow

def _secure_strategy_base():
    from flwr.server.strategy import Strategy

    return Strategy

class _SecureStrategy(_secure_strategy_base()):
    """The legacy Strategy interface SecAggPlusWorkflow drives, delegating to :class:`SecureServerLoop`."""

    def __init__(self, loop: SecureServerLoop):
        self.loop = loop

    def initialize_parameters(self, client_manager):
        return None

    def configure_fit(self, server_round, parameters, client_manager):
        return self.loop.configure(server_round)

    def aggregate_fit(self, server_round, results, failures):
        return self.loop.aggregate(server_round, results, failures)

    def configure_evaluate(self, server_round, parameters, client_manager):
        return []

    def aggregate_evaluate(self, server_round, results, failures):
        return None, {}

    def evaluate(self, server_round, parameters):
        return None

secure_server_app = ServerApp()

@secure_server_app.main()
def _secure_server_main(grid: Grid, context: Context) -> None:
    with _aggregator(context) as (agg, opts):
        SecureServerLoop(grid, agg, opts, context).run()
