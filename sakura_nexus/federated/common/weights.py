"""World-model weights <-> the flat vectors the fleet exchanges (ROS-free; needs torch).

The federated layer only sees flat float32 vectors: every parameter of the world model in
``model.named_parameters()`` order (the order of ``OnlineLearner.delta_since_base()``). These helpers
turn a checkpoint into the aggregator's initial global vector and a global vector back into the
``world_model_to_bytes`` payload that ``world_model_node`` hot-swaps (``ModelUpdate``).

Buffers (normalisation scales) are not part of the vector: they come from the template checkpoint,
which must be the one the robots run.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .durable import atomic_write

SHIPPED = "shipped"
# ModelUpdate codecs: a state-dict-v1 payload (world_model_to_bytes / encoder_to_bytes), or the
# aggregator's global model as it was signed: a codecs payload of the flat parameter vector, which the
# receiving node copies into (a copy of) the model it runs (whose buffers it keeps).
STATE_DICT, FLAT_VECTOR = "state-dict-v1", "flat-vector-v1"

__all__ = ["FLAT_VECTOR", "SHIPPED", "STATE_DICT", "load_world_model", "update_to_world_model_payload",
           "vector_to_payload", "world_model_vector", "write_init_model"]


def load_world_model(checkpoint: str | None = None):
    """The world model of a checkpoint directory / ``world_model.bin`` file; ``None``, ``""`` or
    ``"shipped"`` = the shipped ``models/``."""
    from sakura_nexus.models import checkpoint as ckpt

    return ckpt.load_world_model(None if checkpoint in (None, "", SHIPPED) else checkpoint)


def world_model_vector(model) -> np.ndarray:
    """All parameters flattened in ``named_parameters()`` order (float32, a copy)."""
    import torch

    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).cpu().numpy() \
            .astype(np.float32)


def vector_to_payload(template, vector: np.ndarray, version: int) -> bytes:
    """Copy ``vector`` into ``template``'s parameters (in place) and return
    ``world_model_to_bytes(template, version)``. Raises ValueError on a size mismatch or non-finite values
    (the template is left unchanged then)."""
    import torch

    from sakura_nexus.models.world_model import world_model_to_bytes

    vec = np.asarray(vector, np.float32).ravel()
    params = list(template.named_parameters())
    n = sum(p.numel() for _, p in params)
    if vec.size != n:
        raise ValueError(f"global vector has {vec.size} values, the world model has {n} parameters")
    if not np.all(np.isfinite(vec)):
        raise ValueError("global vector is not finite")
    off = 0
    with torch.no_grad():
        for _, p in params:
            k = p.numel()
            p.copy_(torch.from_numpy(vec[off:off + k].copy()).reshape(p.shape).to(p.dtype))
            off += k
    template.version = int(version)
    return world_model_to_bytes(template, int(version))


def update_to_world_model_payload(codec: str, payload: bytes, template, version: int) -> bytes:
    """The ``world_model_to_bytes`` payload of a (verified) world-model update: ``state-dict-v1`` as it
    is; ``flat-vector-v1`` decoded and copied into a deep copy of ``template`` (the running model,
    which is not modified). Raises ValueError (CodecError) on a bad payload or an unknown codec."""
    import copy

    from .codecs import decode

    if codec == STATE_DICT:
        return bytes(payload)
    if codec == FLAT_VECTOR:
        return vector_to_payload(copy.deepcopy(template), decode(bytes(payload)), version)
    raise ValueError(f"unknown model codec {codec!r}")


def write_init_model(checkpoint: str | None, store_dir: str) -> dict:
    """Flatten a checkpoint's world model into ``<store_dir>/init_world_model.npy`` (atomic) for the
    aggregator's ``init-model``; returns ``{"path", "version", "size", "sha256", "checkpoint"}`` (also
    written next to it as ``init_world_model.json``)."""
    import io

    model = load_world_model(checkpoint)
    vec = world_model_vector(model)
    os.makedirs(store_dir, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, vec, allow_pickle=False)
    data = buf.getvalue()
    path = os.path.join(os.path.abspath(store_dir), "init_world_model.npy")
    atomic_write(path, data)
    info = {"path": path, "version": int(model.version), "size": int(vec.size),
            "sha256": hashlib.sha256(data).hexdigest(),
            "checkpoint": checkpoint if checkpoint not in (None, "") else SHIPPED}
    atomic_write(path[:-4] + ".json", json.dumps(info, indent=1).encode())
    return info
