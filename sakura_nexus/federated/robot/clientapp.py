"""The robot's Flower 1.42 ClientApp (spool uplink): ``client_app`` (FedBuff) and ``secure_client_app``
(SecAgg+), referenced from ``flwr_app.toml`` as ``sakura_nexus.federated.robot.clientapp:client_app``.

A short-lived process per message, started by the SuperNode (warm-forked by ``light_clientapp``): applies
the acknowledgements to the robot's spool, stores a new global model in the spool inbox and replies with
the oldest pending deltas (:func:`handle_sync`). In the secure mode it answers with the sum of its
unacknowledged deltas (:func:`secure_contribution`) through Flower's ``secaggplus_mod``. All robot state
lives in the spool owned by the ROS node; this module imports nothing of the aggregator.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ..common.egress import write_audit
from ..common.flower_records import LOG, SECURE_WEIGHT, format_ranges, from_recorddict, to_recorddict
from ..common.protocol import DeltaItem, SyncReply, SyncRequest, parse_ack
from .spool import Spool


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
    req = SyncRequest.from_records(from_recorddict(msg.content))
    reply = handle_sync(req, Spool(str(spool_dir)), robot_id)
    records = reply.to_records()
    audit_dir = _cfg(context, "egress-audit-dir")
    if audit_dir:  # a copy of exactly what goes upstream (federated_sync_node's egress_audit_dir)
        write_audit(str(audit_dir), records, reply.robot_id)
    return Message(to_recorddict(records), reply_to=msg)

def secure_contribution(spool: Spool, robot_id: str | None, size: int, clip: float,
                        max_batch: int = 1 << 30) -> tuple[str, np.ndarray, list, dict]:
    """Robot side of a secure round (Flower-free): the sum of the robot's unacknowledged deltas as one
    dense float32 vector of ``size``, every coordinate clipped to ``+-clip`` (SecAgg+ quantises within
    that range); a robot with nothing pending sends zeros. Returns (robot_id, vector, entries, info)."""
    from ..common.codecs import decode

    pending = spool.pending(robot_id)
    rid = robot_id or (pending[0].robot_id if pending else "")
    pending = [e for e in pending if e.robot_id == rid][:max_batch]
    vec = np.zeros(int(size), np.float64)
    used, samples = [], 0
    for e in pending:
        try:
            d = decode(spool.read(e))
        except (OSError, ValueError, RuntimeError):  # vanished (acked meanwhile) or corrupt entry
            continue
        if d.size != vec.size or not np.all(np.isfinite(d)):
            LOG.warning("secure round: spooled delta %s:%d has %d values (model %d) or is not finite; skipped",
                        e.robot_id, e.seq, d.size, vec.size)
            continue
        vec += d
        used.append(e)
        samples += int(e.sample_count)
    clipped = int(np.count_nonzero(np.abs(vec) > clip))
    vec = np.clip(vec, -clip, clip).astype(np.float32)
    return rid, vec, used, {"deltas": len(used), "samples": samples, "clipped": clipped}

def _secure_client_fn(context: Context):
    from flwr.client import NumPyClient

    spool_dir = _cfg(context, "spool-dir")
    if not spool_dir:
        raise RuntimeError("node_config 'spool-dir' is not set")
    robot_id = _cfg(context, "robot-id") or None
    audit_dir = _cfg(context, "egress-audit-dir")

    class _Robot(NumPyClient):
        def fit(self, parameters, config):
            spool = Spool(str(spool_dir))
            acks = [a for a in str(config.get("acks", "")).split(",") if a]
            if acks:  # the deltas of our last completed round: applied, drop them before summing the rest
                spool.ack([parse_ack(a) for a in acks])
            payload = config.get("model-payload")
            model_id = str(config.get("model-id", "world_model"))
            if payload:
                spool.inbox.put(int(config["model-version"]), bytes(payload), model_id=model_id,
                                meta={"key_id": str(config.get("model-key-id", "")),
                                      "signature": bytes(config.get("model-signature", b"")).hex()})
            rid, vec, used, info = secure_contribution(spool, robot_id, int(config["model-size"]),
                                                       float(config["clip"]), int(config.get("max-batch", 1 << 30)))
            if used:
                spool.mark_sent(used)
            spool.record_sync(bytes_sent=4 * vec.size, bytes_received=len(payload or b""),
                              global_version=int(config.get("global-version", 0)))
            metrics = {"robot-id": rid, "ranges": format_ranges(used), "deltas": info["deltas"],
                       "samples": info["samples"], "clipped": info["clipped"],
                       "have-version": spool.inbox.latest_version(model_id),
                       "spool-pending": len(spool.pending(robot_id))}
            if audit_dir:  # what leaves the robot besides the masked vector (the vector itself never in clear)
                write_audit(str(audit_dir), {"secure_metrics": dict(metrics)}, rid)
            return [vec], SECURE_WEIGHT, metrics

    return _Robot().to_client()

def _make_secure_client_app():
    from flwr.client.mod import secaggplus_mod

    return ClientApp(client_fn=_secure_client_fn, mods=[secaggplus_mod])

secure_client_app = _make_secure_client_app()
