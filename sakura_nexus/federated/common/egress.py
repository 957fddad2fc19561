"""Egress check: what leaves the robot must be model-delta codec payloads, never images or embeddings.

``check_egress(payloads)`` is meant for captured upstream bytes (``ModelDelta.payload`` on the ROS side,
or the ``deltas.payload`` entries of Flower replies). Each payload must parse as a codec payload
(magic, known codec/version, sha256 of the body) and decode to a *flat* float vector; a payload is
flagged if its shape looks like an image (H x W x C, C x H x W, N x C x H x W) or an embedding batch
(N x E), if its length equals a flattened camera frame, if it is not one of ``expected_sizes`` (when
given), or if its values look like raw pixels (all integers in [0, 255]).

Audit trail: with ``egress-audit-dir`` in a SuperNode's node config (the ``federated_sync_node``
parameter ``egress_audit_dir``), the ClientApp writes every reply it sends upstream with
:func:`write_audit` (byte fields to separate files, everything else as JSON) *before* returning it to
Flower; :func:`load_audit` reads that back for :func:`check_egress` and for inspecting the non-payload
fields (small integers and strings only).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sakura_nexus.atomic import atomic_write

from .codecs import CodecError, decode, parse_header

# flattened camera frames we must never see upstream (RGB / gray at the resolutions the project uses)
_IMAGE_SIDES = ((32, 32), (48, 48), (64, 64), (84, 84), (96, 96), (128, 128), (224, 224), (240, 320),
                (480, 640), (720, 1280))
IMAGE_SIZES = frozenset(h * w * c for h, w in _IMAGE_SIDES for c in (1, 3, 4))
EMBEDDING_DIMS = (32, 64, 128, 256, 512)

__all__ = ["EgressReport", "check_egress", "load_audit", "looks_like_image_or_embedding", "write_audit"]


@dataclass
class EgressReport:
    ok: bool
    n_payloads: int = 0
    total_bytes: int = 0
    codecs: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AssertionError("egress check failed:\n" + "\n".join(self.violations))


def looks_like_image_or_embedding(shape: Sequence[int]) -> str | None:
    shape = tuple(int(d) for d in shape)
    if len(shape) == 3 and (shape[-1] in (1, 3, 4) or shape[0] in (1, 3, 4)):
        return f"image-like shape {shape}"
    if len(shape) == 4 and (shape[1] in (1, 3, 4) or shape[-1] in (1, 3, 4)):
        return f"image-batch-like shape {shape}"
    if len(shape) == 2 and (shape[1] in EMBEDDING_DIMS or shape[0] in EMBEDDING_DIMS):
        return f"embedding-like shape {shape}"
    if len(shape) != 1:
        return f"non-flat shape {shape}"
    return None


def check_egress(payloads: Iterable[bytes], *, expected_sizes: Iterable[int] | None = None,
                 allowed_codecs: Iterable[str] | None = None, max_payload_bytes: int | None = None,
                 forbidden_sizes: Iterable[int] = IMAGE_SIZES) -> EgressReport:
    exp = set(int(s) for s in expected_sizes) if expected_sizes is not None else None
    allowed = set(allowed_codecs) if allowed_codecs is not None else None
    forbidden = set(int(s) for s in forbidden_sizes) - (exp or set())
    rep = EgressReport(ok=True)
    for i, p in enumerate(payloads):
        rep.n_payloads += 1
        try:
            raw = bytes(p)
        except TypeError:
            rep.violations.append(f"#{i}: not bytes ({type(p).__name__})")
            continue
        rep.total_bytes += len(raw)
        if max_payload_bytes is not None and len(raw) > max_payload_bytes:
            rep.violations.append(f"#{i}: {len(raw)} bytes > {max_payload_bytes}")
        try:
            h = parse_header(raw)
            x = decode(raw)
        except CodecError as e:
            rep.violations.append(f"#{i}: not a codec payload: {e}")
            continue
        rep.codecs[h.codec] = rep.codecs.get(h.codec, 0) + 1
        if allowed is not None and h.codec not in allowed:
            rep.violations.append(f"#{i}: codec {h.codec!r} not allowed")
        why = looks_like_image_or_embedding(h.shape)
        if why:
            rep.violations.append(f"#{i}: {why}")
        if exp is not None and h.size not in exp:
            rep.violations.append(f"#{i}: {h.size} elements, expected one of {sorted(exp)}")
        if h.size in forbidden:
            rep.violations.append(f"#{i}: {h.size} elements = a flattened camera frame")
        if x.size >= 1024 and np.all(np.isfinite(x)):
            if np.all((x >= 0) & (x <= 255) & (x == np.round(x))) and np.any(x > 1):
                rep.violations.append(f"#{i}: values look like raw 8-bit pixels")
    rep.ok = not rep.violations
    return rep


# --------------------------------------------------------------------------- audit trail


def write_audit(directory: str, records: dict[str, dict], robot_id: str = "") -> str:
    """Store one upstream message: ``<stamp>.json`` with its records, every ``bytes`` value (alone or in a
    list) replaced by ``{"$bytes": file, "len": n}`` and written to ``<stamp>.<n>.bin``. Returns the JSON
    path. Written with plain writes (an audit copy, not state): a crash may leave a partial record."""
    os.makedirs(directory, exist_ok=True)
    stamp = f"{time.time_ns():020d}-{robot_id or 'robot'}-{uuid.uuid4().hex[:8]}"
    blobs: list[bytes] = []

    def conv(v):
        if isinstance(v, (bytes, bytearray, memoryview)):
            blobs.append(bytes(v))
            return {"$bytes": f"{stamp}.{len(blobs) - 1}.bin", "len": len(blobs[-1])}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    doc = {"robot_id": robot_id, "time": time.time(),
           "records": {rk: {k: conv(v) for k, v in rec.items()} for rk, rec in records.items()}}
    for i, b in enumerate(blobs):
        with open(os.path.join(directory, f"{stamp}.{i}.bin"), "wb") as f:
            f.write(b)
    path = os.path.join(directory, f"{stamp}.json")
    atomic_write(path, json.dumps(doc).encode(), fsync=False)
    return path


def load_audit(directory: str) -> tuple[list[bytes], list[dict]]:
    """(every byte blob sent upstream, every message's JSON document) from an audit directory."""
    payloads: list[bytes] = []
    docs: list[dict] = []
    if not os.path.isdir(directory):
        return payloads, docs

    def walk(v):
        if isinstance(v, dict) and "$bytes" in v:
            with open(os.path.join(directory, v["$bytes"]), "rb") as f:
                payloads.append(f.read())
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for name in sorted(os.listdir(directory)):
        if name.endswith(".json"):
            with open(os.path.join(directory, name)) as f:
                doc = json.load(f)
            docs.append(doc)
            for rec in doc["records"].values():
                for v in rec.values():
                    walk(v)
    return payloads, docs
