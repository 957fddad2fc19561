"""Pickle-free tensor containers ("state-dict-v1") and atomic, checksummed files.

Layout of one payload (all little-endian)::

    MAGIC (8 bytes) | header length (u32) | header (UTF-8 JSON) | tensor data | sha256 (32 bytes)

The header lists ``{"name", "dtype", "shape"}`` per tensor (data concatenated in that order) and a
free-form ``meta`` dict. The trailing digest covers everything before it, so a truncated or
bit-flipped payload is detected without any outside information; ``sha256_hex(payload)`` is the
digest of the whole payload that ``ModelUpdate.sha256`` carries. Loading never unpickles, so a
payload from the network cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping

import numpy as np
import torch

from sakura_nexus.atomic import atomic_write as atomic_write  # the one atomic write, re-exported

MAGIC = b"SNXSD\x00v1"
CODEC = "state-dict-v1"
_DIGEST = 32
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64,
           "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}
_NAMES = {v: k for k, v in _DTYPES.items()}


class PayloadError(ValueError):
    """A payload is truncated, corrupt, of another format, or does not fit the target model."""


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def pack_state(tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> bytes:
    """Serialise named tensors + JSON-able ``meta`` (deterministic bytes for equal inputs)."""
    entries, chunks = [], []
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _NAMES:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        entries.append({"name": name, "dtype": _NAMES[t.dtype], "shape": list(t.shape)})
        chunks.append(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    header = json.dumps({"format": CODEC, "meta": dict(meta or {}), "tensors": entries},
                        sort_keys=True, separators=(",", ":")).encode()
    body = MAGIC + struct.pack("<I", len(header)) + header + b"".join(chunks)
    return body + hashlib.sha256(body).digest()


def unpack_state(payload: bytes, expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of :func:`pack_state`; raises :class:`PayloadError` on any inconsistency."""
    payload = bytes(payload)
    if expected_sha256 is not None and sha256_hex(payload) != expected_sha256.lower():
        raise PayloadError("sha256 of the payload does not match the announced digest")
    if len(payload) < len(MAGIC) + 4 + _DIGEST or not payload.startswith(MAGIC):
        raise PayloadError(f"not a {CODEC} payload (bad magic or too short)")
    body, digest = payload[:-_DIGEST], payload[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise PayloadError("payload checksum mismatch (truncated or corrupt)")
    (hlen,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        header = json.loads(body[start:start + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError(f"bad header: {e}") from e
    if header.get("format") != CODEC:
        raise PayloadError(f"unknown format {header.get('format')!r}")
    offset, tensors = start + hlen, {}
    for e in header["tensors"]:
        dtype = _DTYPES[e["dtype"]]
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype.newbyteorder("<")
        count = int(np.prod(e["shape"], dtype=np.int64))
        nbytes = count * np_dtype.itemsize
        if offset + nbytes > len(body):
            raise PayloadError(f"tensor {e['name']} runs past the end of the payload")
        arr = np.frombuffer(body, dtype=np_dtype, count=count, offset=offset).reshape(e["shape"])
        tensors[e["name"]] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="), copy=True))
        offset += nbytes
    if offset != len(body):
        raise PayloadError("trailing bytes after the last tensor")
    return tensors, header["meta"]


def load_into(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """``module.load_state_dict`` that first checks names and shapes and raises PayloadError."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise PayloadError(f"{what}: state mismatch (missing {missing[:5]}, unexpected {extra[:5]})")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise PayloadError(f"{what}: shape mismatch for {k}: "
                               f"{tuple(tensors[k].shape)} vs {tuple(v.shape)}")
        if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all():
            raise PayloadError(f"{what}: non-finite values in {k}")
    module.load_state_dict({k: tensors[k].to(v.dtype) for k, v in own.items()})


