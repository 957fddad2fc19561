"""Camera encoder: (B, 3, 64, 64) RGB in [0, 1] -> (B, 64) embedding.

Four stride-2 convolutions (64 -> 32 -> 16 -> 8 -> 4 pixels, 16/32/64/128 channels) and one linear
layer, ~0.25 M parameters, ~6 M multiply-adds per image. The embedding is layer-normalised (no
affine), so its scale is fixed whatever the weights: consumers (world model, online learning,
federated averaging of the world model) see a stable input distribution across encoder versions.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .serialization import PayloadError, load_into, pack_state, unpack_state

ENCODER_ID = "conv64-v1"


class ConvEncoder(nn.Module):
    """Small CNN. ``version`` is the weight version (0 = as shipped; model updates raise it)."""

    def __init__(self, embed_dim: int = 64, channels: tuple[int, ...] = (16, 32, 64, 128),
                 image_size: int = 64, version: int = 0):
        super().__init__()
        if image_size % 16:
            raise ValueError("image_size must be a multiple of 16")
        self.embed_dim, self.image_size = int(embed_dim), int(image_size)
        self.channels = tuple(int(c) for c in channels)
        if len(self.channels) != 4:
            raise ValueError("channels must have 4 entries")
        self.version = int(version)
        c0, c1, c2, c3 = self.channels
        self.conv = nn.Sequential(
            nn.Conv2d(3, c0, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c0, c1, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 4, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, 3, 2, 1), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(c3 * (image_size // 16) ** 2, self.embed_dim)
        self.norm = nn.LayerNorm(self.embed_dim, elementwise_affine=False)

    @property
    def config(self) -> dict:
        return {"embed_dim": self.embed_dim, "channels": list(self.channels), "image_size": self.image_size}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.conv(images - 0.5)
        return self.norm(self.fc(h.flatten(1)))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) RGB -> float (N, 3, H, W) in [0, 1]."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    flat = np.ascontiguousarray(arr.reshape(-1, *arr.shape[-3:]))
    return torch.from_numpy(flat).permute(0, 3, 1, 2).float() / 255.0


def inference_encoder(encoder: ConvEncoder, mode: str = "frozen") -> nn.Module:
    """A copy of ``encoder`` prepared for 1-thread CPU inference.

    ``eager``: plain eval module; ``channels_last``: eval module in NHWC memory format;
    ``frozen``: TorchScript-traced and frozen (constants folded, less per-op dispatch). bench/
    bench_world_model.py measures all three (docs/world_model.md has the numbers); ``frozen`` is the
    default because it was fastest at p50 and p99 there. The returned module takes NCHW input.
    """
    enc = ConvEncoder(**encoder.config, version=encoder.version)
    enc.load_state_dict(encoder.state_dict())
    enc.eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    if mode == "eager":
        return enc
    if mode == "channels_last":
        return _ChannelsLast(enc.to(memory_format=torch.channels_last))
    if mode == "frozen":
        example = torch.zeros(1, 3, enc.image_size, enc.image_size)
        with torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(enc, example))
    raise ValueError(f"unknown mode {mode!r}")


class _ChannelsLast(nn.Module):
    def __init__(self, enc: ConvEncoder):
        super().__init__()
        self.enc = enc

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.enc(images.contiguous(memory_format=torch.channels_last))


def encoder_to_bytes(encoder: ConvEncoder, version: int | None = None) -> bytes:
    """Encoder weights as a ``state-dict-v1`` payload (the ``ModelUpdate`` payload for "encoder")."""
    meta = {"model_id": "encoder", "encoder_id": ENCODER_ID, "config": encoder.config,
            "version": int(encoder.version if version is None else version)}
    return pack_state(encoder.state_dict(), meta)


def encoder_from_bytes(payload: bytes, expected_sha256: str | None = None,
                       like: ConvEncoder | None = None) -> ConvEncoder:
    """Build a new encoder from a payload (for hot-swap: the caller swaps its reference).

    Raises :class:`PayloadError` when the payload is corrupt, its sha256 differs from
    ``expected_sha256``, it is not an encoder, or its shapes differ from ``like`` (when given).
    """
    tensors, meta = unpack_state(payload, expected_sha256)
    if meta.get("model_id") != "encoder" or meta.get("encoder_id") != ENCODER_ID:
        raise PayloadError(f"not a {ENCODER_ID} encoder payload: {meta.get('model_id')!r}")
    config = dict(meta["config"])
    if like is not None and config != like.config:
        raise PayloadError(f"encoder architecture mismatch: {config} vs {like.config}")
    enc = ConvEncoder(**config, version=int(meta.get("version", 0)))
    load_into(enc, tensors, "encoder")
    return enc.eval()
