"""Wire protocol between the FedBuff ServerApp and the robot ClientApp (Flower-free data layer).

One exchange = one Flower message of type ``"train"`` from the ServerApp to a SuperNode and its reply.

Server -> robot (``RecordDict``):
    ``sync``  ConfigRecord: proto, global_version, model_id, acks (list of "robot:first:last"),
              has_model, max_batch, max_batch_bytes
    ``model`` ConfigRecord (only when the robot's inbox is behind): version, payload (codec bytes), sha256,
              key_id, signature (the aggregator's Ed25519 signature of the update, codec
              ``flat-vector-v1``: :mod:`sakura_nexus.federated.common.signing`; empty when it has no key)

Robot -> server:
    ``sync``   ConfigRecord: proto, robot_id, have_version, more, spool_pending, spool_bytes, error
    ``deltas`` ConfigRecord of parallel lists: payload (bytes), seq, seq_first, base_version,
               sample_count, codec

Only codec payloads (flat weight deltas) and small integers/strings travel upstream: see
:mod:`sakura_nexus.federated.common.egress`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

PROTO_VERSION = 1
MESSAGE_TYPE = "train"

__all__ = ["MESSAGE_TYPE", "PROTO_VERSION", "DeltaItem", "SyncReply", "SyncRequest", "format_ack",
           "parse_ack"]


def format_ack(robot_id: str, first: int, last: int) -> str:
    return f"{robot_id}:{int(first)}:{int(last)}"


def parse_ack(s: str) -> tuple[str, int, int]:
    robot, first, last = s.rsplit(":", 2)
    return robot, int(first), int(last)


@dataclass
class SyncRequest:
    global_version: int
    model_id: str = "world_model"
    acks: list[str] = field(default_factory=list)
    model_version: int | None = None
    model_payload: bytes | None = None
    max_batch: int = 16
    max_batch_bytes: int = 8 << 20
    model_key_id: str = ""
    model_signature: bytes = b""

    def to_records(self) -> dict[str, dict]:
        out = {"sync": {"proto": PROTO_VERSION, "global_version": int(self.global_version),
                        "model_id": self.model_id, "acks": list(self.acks),
                        "has_model": self.model_payload is not None, "max_batch": int(self.max_batch),
                        "max_batch_bytes": int(self.max_batch_bytes)}}
        if self.model_payload is not None:
            out["model"] = {"version": int(self.model_version), "payload": bytes(self.model_payload),
                            "sha256": hashlib.sha256(self.model_payload).hexdigest(),
                            "key_id": str(self.model_key_id), "signature": bytes(self.model_signature)}
        return out

    @classmethod
    def from_records(cls, rec: dict[str, dict]) -> SyncRequest:
        s = rec["sync"]
        if int(s.get("proto", 0)) != PROTO_VERSION:
            raise ValueError(f"unsupported sync protocol {s.get('proto')}")
        req = cls(global_version=int(s["global_version"]), model_id=str(s.get("model_id", "world_model")),
                  acks=[str(a) for a in s.get("acks", [])], max_batch=int(s.get("max_batch", 16)),
                  max_batch_bytes=int(s.get("max_batch_bytes", 8 << 20)))
        if s.get("has_model") and "model" in rec:
            m = rec["model"]
            payload = bytes(m["payload"])
            if hashlib.sha256(payload).hexdigest() != m.get("sha256"):
                raise ValueError("global model payload sha256 mismatch")
            req.model_version, req.model_payload = int(m["version"]), payload
            req.model_key_id, req.model_signature = str(m.get("key_id", "")), bytes(m.get("signature", b""))
        return req


@dataclass
class DeltaItem:
    payload: bytes
    seq: int
    seq_first: int
    base_version: int
    sample_count: int = 0
    codec: str = ""


@dataclass
class SyncReply:
    robot_id: str
    have_version: int = -1
    deltas: list[DeltaItem] = field(default_factory=list)
    more: bool = False
    spool_pending: int = 0
    spool_bytes: int = 0
    error: str = ""

    def to_records(self) -> dict[str, dict]:
        d = self.deltas
        return {
            "sync": {"proto": PROTO_VERSION, "robot_id": self.robot_id,
                     "have_version": int(self.have_version), "more": bool(self.more),
                     "spool_pending": int(self.spool_pending),
                     "spool_bytes": int(self.spool_bytes), "error": self.error},
            "deltas": {"payload": [bytes(x.payload) for x in d], "seq": [int(x.seq) for x in d],
                       "seq_first": [int(x.seq_first) for x in d],
                       "base_version": [int(x.base_version) for x in d],
                       "sample_count": [int(x.sample_count) for x in d], "codec": [str(x.codec) for x in d]},
        }

    @classmethod
    def from_records(cls, rec: dict[str, dict]) -> SyncReply:
        s = rec["sync"]
        if int(s.get("proto", 0)) != PROTO_VERSION:
            raise ValueError(f"unsupported sync protocol {s.get('proto')}")
        r = cls(robot_id=str(s["robot_id"]), have_version=int(s.get("have_version", -1)),
                more=bool(s.get("more", False)), spool_pending=int(s.get("spool_pending", 0)),
                spool_bytes=int(s.get("spool_bytes", 0)), error=str(s.get("error", "")))
        d = rec.get("deltas") or {}
        payloads = list(d.get("payload", []))
        n = len(payloads)
        cols = {k: list(d.get(k, [])) for k in ("seq", "seq_first", "base_version", "sample_count", "codec")}
        if any(len(v) != n for v in cols.values()):
            raise ValueError("delta columns have different lengths")
        for i in range(n):
            r.deltas.append(DeltaItem(payload=bytes(payloads[i]), seq=int(cols["seq"][i]),
                                      seq_first=int(cols["seq_first"][i]),
                                      base_version=int(cols["base_version"][i]),
                                      sample_count=int(cols["sample_count"][i]), codec=str(cols["codec"][i])))
        return r
