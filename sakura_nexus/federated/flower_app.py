"""Flower 1.42 apps: the FedBuff ``server_app`` (aggregator) and the robot ``client_app`` (spool uplink).

Referenced from the Flower App config (``flwr_app.toml``) as
``sakura_nexus.federated.flower_app:server_app`` / ``:client_app``; the FAB itself only carries that
``pyproject.toml`` and the code comes from the installed ``sakura_nexus`` package, so nothing is
downloaded at run time.

ServerApp (long-running, one Flower run): keeps one message in flight per connected SuperNode, pushes
a new one ``sync-interval-s`` after the last reply (immediately if the robot said it has more),
feeds every delta of every reply into :class:`FedBuffAggregator` (persisted in ``store-dir``), and
acknowledges the processed ``(robot, seq)`` ranges in the next message to that node. A node that is
offline simply gets no messages; when it returns its spooled deltas are applied with their staleness
weight. The global model goes out whenever a node's inbox is behind.

ClientApp (short-lived process per message, started by the SuperNode): applies acks to the robot's
spool, stores a new global model in the spool inbox, replies with the oldest pending deltas.
All robot state lives in the spool directory owned by the ROS node.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from .aggregator import FedBuffAggregator, FedBuffConfig
from .durable import atomic_write_json
from .egress import write_audit
from .protocol import MESSAGE_TYPE, DeltaItem, SyncReply, SyncRequest, format_ack, parse_ack
from .spool import Spool

LOG = logging.getLogger("sakura_nexus.federated")

__all__ = ["ServerOptions", "client_app", "handle_sync", "server_app", "FedBuffServerLoop"]


# --------------------------------------------------------------------------- record conversion


def _to_recorddict(recs: dict[str, dict]) -> RecordDict:
    return RecordDict({k: ConfigRecord(v) for k, v in recs.items()})


def _from_recorddict(rd: RecordDict) -> dict[str, dict]:
    out = {}
    for k in rd.keys():
        with contextlib.suppress(TypeError, KeyError):
            out[k] = dict(rd.config_records[k])
    return out


# --------------------------------------------------------------------------- client side


def _cfg(context: Context, key: str, default=None):
    for src in (context.node_config, context.run_config):
        if key in src and src[key] != "":
            return src[key]
    return default


def handle_sync(req: SyncRequest, spool: Spool, robot_id: str | None = None) -> SyncReply:
    """Robot side of one exchange (Flower-free, so it is unit-testable): acks, inbox, next batch."""
    if req.acks:
        spool.ack([parse_ack(a) for a in req.acks])
    if req.model_payload is not None:
        # the signature travels with the model (federated_sync_node checks it before publishing)
        spool.inbox.put(req.model_version, req.model_payload, model_id=req.model_id,
                        meta={"key_id": req.model_key_id, "signature": req.model_signature.hex()})
    rid = robot_id or ""
    pending = spool.pending(robot_id)
    if not rid and pending:
        rid = pending[0].robot_id
    pending = [e for e in pending if e.robot_id == rid]
    batch: list[DeltaItem] = []
    sent = []
    size = 0
    for e in pending:
        if len(batch) >= req.max_batch or (batch and size + e.payload_len > req.max_batch_bytes):
            break
        try:
            payload = spool.read(e)
        except (OSError, ValueError, RuntimeError):  # vanished (acked meanwhile) or corrupt entry
            continue
        batch.append(DeltaItem(payload=payload, seq=e.seq, seq_first=e.seq_first, base_version=e.base_version,
                               sample_count=e.sample_count, codec=e.codec))
        sent.append(e)
        size += len(payload)
    if sent:
        spool.mark_sent(sent)
    spool.record_sync(bytes_sent=size, bytes_received=len(req.model_payload or b""),
                      global_version=req.global_version)
    return SyncReply(robot_id=rid, have_version=spool.inbox.latest_version(req.model_id), deltas=batch,
                     more=len(pending) > len(batch), spool_pending=len(pending),
                     spool_bytes=spool.bytes_used())


client_app = ClientApp()


@client_app.train()
def _client_sync(msg: Message, context: Context) -> Message:
    spool_dir = _cfg(context, "spool-dir")
    if not spool_dir:
        raise RuntimeError("node_config 'spool-dir' is not set "
                           "(flower-supernode --node-config 'spool-dir=\"...\"')")
    robot_id = _cfg(context, "robot-id") or None
    req = SyncRequest.from_records(_from_recorddict(msg.content))
    reply = handle_sync(req, Spool(str(spool_dir)), robot_id)
    records = reply.to_records()
    audit_dir = _cfg(context, "egress-audit-dir")
    if audit_dir:  # a copy of exactly what goes upstream (federated_sync_node's egress_audit_dir)
        write_audit(str(audit_dir), records, reply.robot_id)
    return Message(_to_recorddict(records), reply_to=msg)


# --------------------------------------------------------------------------- server side


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
            from .signing import Signer

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
        errors = 0
        while not self.stop_requested():
            try:
                self.step()
                errors = 0
            except Exception as e:  # transient SuperLink/HTTP trouble: log, back off, give up if it persists
                errors += 1
                self.stats["loop_errors"] = self.stats.get("loop_errors", 0) + 1
                LOG.warning("loop step failed (%d in a row): %r", errors, e)
                if errors >= max_consecutive_errors:
                    self.write_status(state="failed")
                    raise
                time.sleep(min(10.0, 0.5 * errors))
            time.sleep(self.opts.poll_interval_s)
        self.write_status(state="stopped")
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
            msgs.append(Message(_to_recorddict(req.to_records()), dst_node_id=nid, message_type=MESSAGE_TYPE,
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
        from .weights import FLAT_VECTOR

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
                rep = SyncReply.from_records(_from_recorddict(reply.content))
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


@server_app.main()
def _server_main(grid: Grid, context: Context) -> None:
    rc = dict(context.run_config)
    opts = ServerOptions.from_run_config(rc)
    os.makedirs(opts.store_dir, exist_ok=True)
    _setup_logging(opts.store_dir)
    with _single_writer(opts.store_dir, opts.lock_timeout_s):
        cfg = FedBuffConfig.from_dict(rc)
        agg = FedBuffAggregator(_initial_model(rc), cfg, store_dir=opts.store_dir,
                                initial_version=int(rc.get("init-version", 0) or 0))
        FedBuffServerLoop(grid, agg, opts).run()
