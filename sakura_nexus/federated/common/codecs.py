"""Codecs for model deltas: self-describing, versioned, integrity-checked byte payloads.

A payload is ``header || body``. The header is little-endian binary::

    magic      4s   b"SKFD"
    fmt        u8   header format version (1)
    name_len   u8   length of the codec spec string
    name       ...  codec spec, ASCII (e.g. "dense", "topk0.01+q8")
    codec_ver  u16  codec family version (CODEC_VERSION)
    ndim       u8   number of dimensions of the encoded array
    dims       ndim x u64
    body_len   u64
    sha256     32s  sha256 of (all header bytes before this field || body)

Anything that does not parse, has an unknown codec/version, a body of the wrong length (truncated)
or a header/body whose hash does not match (corrupted) raises :class:`CodecError`. The hash covers
the header fields too, so a flipped bit in the shape or codec name is caught as well.

Codec specs (composable with ``+``: an optional sparsifier, then a value encoder)::

    dense | f32        float32 values (lossless for float32 input)
    f16                float16 values (lossy, ~1e-3 relative)
    q8 | q8s           int8 per-chunk symmetric quantisation; ``q8s`` rounds stochastically (unbiased)
    q8c<N> / q8sc<N>   same with chunk size N (default 256)
    topk<frac>         keep the ``ceil(frac * n)`` largest-magnitude entries (e.g. ``topk0.01``)
    topk<frac>+q8      top-k indices + int8-quantised values

Lossy codecs are meant to be used through :class:`ErrorFeedback`, which keeps the part of each delta
that was not transmitted on the robot and adds it to the next one.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAGIC = b"SKFD"
HEADER_FORMAT = 1
CODEC_VERSION = 1
MAX_NDIM = 8
MAX_ELEMENTS = 1 << 31  # indices are uint32

__all__ = [
    "CODEC_VERSION",
    "CodecError",
    "Codec",
    "ErrorFeedback",
    "PayloadHeader",
    "codec_id",
    "decode",
    "decode_verified",
    "encode",
    "flatten_tensors",
    "get_codec",
    "parse_header",
    "unflatten",
]


class CodecError(ValueError):
    """A payload could not be decoded (corrupt, truncated, unknown codec or version) or encoded."""


@dataclass(frozen=True)
class PayloadHeader:
    codec: str
    version: int
    shape: tuple[int, ...]
    body_len: int
    sha256: bytes
    header_len: int

    @property
    def size(self) -> int:
        return int(math.prod(self.shape)) if self.shape else 1

    @property
    def total_len(self) -> int:
        return self.header_len + self.body_len


# --------------------------------------------------------------------------- value encoders


class _ValueCodec:
    name = ""
    lossless = False

    def encode(self, x: np.ndarray, rng: np.random.Generator | None) -> bytes:
        raise NotImplementedError

    def decode(self, body: memoryview, n: int) -> tuple[np.ndarray, int]:
        """Decode ``n`` values from the start of ``body``; return (values, bytes consumed)."""
        raise NotImplementedError


class _Float(_ValueCodec):
    """IEEE floats of ``dtype`` (little-endian); ``limit``: the largest magnitude it holds (None: any float32)."""

    dtype = "<f4"
    limit: float | None = None
    range_name = ""

    def encode(self, x, rng):
        x = np.asarray(x, dtype=np.float32)
        if self.limit is not None and np.any(np.isfinite(x) & (np.abs(x) > self.limit)):
            raise CodecError(f"{self.name} codec: value out of {self.range_name} range")
        return np.ascontiguousarray(x, dtype=self.dtype).tobytes()

    def decode(self, body, n):
        need = np.dtype(self.dtype).itemsize * n
        if len(body) < need:
            raise CodecError(f"{self.name} body truncated")
        return np.frombuffer(body[:need], dtype=self.dtype).astype(np.float32), need


class _F32(_Float):
    name = "f32"
    lossless = True


class _F16(_Float):
    name, dtype, limit, range_name = "f16", "<f2", 65504.0, "float16"


class _Q8(_ValueCodec):
    """Symmetric int8 per chunk: ``x ~= scale[c] * q`` with ``scale = max|x| / 127`` over the chunk."""

    def __init__(self, chunk: int = 256, stochastic: bool = False):
        if chunk < 1 or chunk > (1 << 24):
            raise CodecError(f"q8 chunk size out of range: {chunk}")
        self.chunk = int(chunk)
        self.stochastic = bool(stochastic)
        self.name = ("q8s" if stochastic else "q8") + ("" if chunk == 256 else f"c{chunk}")

    def encode(self, x, rng):
        x = np.asarray(x, dtype=np.float32).ravel()
        if not np.all(np.isfinite(x)):
            raise CodecError("q8 codec cannot encode NaN/Inf")
        n = x.size
        nchunks = (n + self.chunk - 1) // self.chunk
        pad = nchunks * self.chunk - n
        xp = np.concatenate([x, np.zeros(pad, np.float32)]) if pad else x
        xp = xp.reshape(nchunks, self.chunk) if nchunks else xp.reshape(0, self.chunk)
        scale = (np.abs(xp).max(axis=1) / 127.0).astype(np.float32) if nchunks else np.zeros(0, np.float32)
        safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
        y = xp / safe[:, None]
        if self.stochastic:
            rng = rng if rng is not None else np.random.default_rng()
            q = np.floor(y + rng.random(y.shape, dtype=np.float32))
        else:
            q = np.rint(y)
        q = np.clip(q, -127, 127).astype(np.int8).ravel()[:n]
        return struct.pack("<I", self.chunk) + scale.astype("<f4").tobytes() + q.tobytes()

    def decode(self, body, n):
        if len(body) < 4:
            raise CodecError("q8 body truncated")
        (chunk,) = struct.unpack_from("<I", body, 0)
        if chunk < 1:
            raise CodecError("q8 chunk size is zero")
        nchunks = (n + chunk - 1) // chunk
        need = 4 + 4 * nchunks + n
        if len(body) < need:
            raise CodecError("q8 body truncated")
        scale = np.frombuffer(body[4:4 + 4 * nchunks], dtype="<f4").astype(np.float32)
        q = np.frombuffer(body[4 + 4 * nchunks:need], dtype=np.int8).astype(np.float32)
        out = q * np.repeat(scale, chunk)[:n]
        return out.astype(np.float32), need


# --------------------------------------------------------------------------- codecs


class Codec:
    """An encoder/decoder for one codec spec (see module docstring)."""

    def __init__(self, spec: str, topk: float | None, values: _ValueCodec):
        self.spec = spec
        self.topk = topk
        self.values = values

    @property
    def lossless(self) -> bool:
        return self.topk is None and self.values.lossless

    @property
    def codec_id(self) -> str:
        """Name for ``ModelDelta.codec``: spec plus family version, e.g. ``"topk0.01+q8-v1"``."""
        return f"{self.spec}-v{CODEC_VERSION}"

    def __repr__(self) -> str:
        return f"Codec({self.spec!r})"

    def encode(self, x, *, rng: np.random.Generator | None = None) -> bytes:
        """Encode an array (any shape; float32 after conversion) or a list of tensors (flattened)."""
        arr = _as_float32_array(x)
        if arr.ndim > MAX_NDIM:
            raise CodecError(f"too many dimensions: {arr.ndim}")
        if arr.size >= MAX_ELEMENTS:
            raise CodecError(f"too many elements: {arr.size}")
        flat = arr.ravel()
        if self.topk is None:
            body = self.values.encode(flat, rng)
        else:
            k = topk_count(flat.size, self.topk)
            if k == flat.size:
                idx = np.arange(flat.size, dtype=np.uint32)
            elif k == 0:
                idx = np.zeros(0, np.uint32)
            else:
                mag = np.abs(np.nan_to_num(flat, nan=np.inf))  # NaN/Inf always selected: surfaces errors
                idx = np.sort(np.argpartition(mag, flat.size - k)[flat.size - k:]).astype(np.uint32)
            body = (struct.pack("<I", idx.size) + idx.astype("<u4").tobytes()
                    + self.values.encode(flat[idx], rng))
        return _pack(self.spec, arr.shape, body)

    def decode(self, payload: bytes | bytearray | memoryview) -> np.ndarray:
        header = parse_header(payload)
        if header.codec != self.spec:
            raise CodecError(f"payload codec {header.codec!r} does not match {self.spec!r}")
        return _decode_body(self, header, payload)


def topk_count(n: int, frac: float) -> int:
    return min(n, max(1 if n > 0 else 0, int(math.ceil(frac * n))))


_SPEC_RE = re.compile(r"^(?:(topk)(\d*\.?\d+(?:e-?\d+)?)\+?)?(dense|f32|f16|q8s?(?:c\d+)?)?$")
_CODEC_CACHE: dict[str, Codec] = {}


def get_codec(spec: str) -> Codec:
    """Parse a codec spec such as ``"dense"``, ``"q8"``, ``"topk0.01"``, ``"topk0.01+q8"``."""
    if not isinstance(spec, str):
        raise CodecError(f"codec spec must be str, got {type(spec).__name__}")
    spec = spec.strip()
    if spec.endswith(f"-v{CODEC_VERSION}"):
        spec = spec[: -len(f"-v{CODEC_VERSION}")]
    cached = _CODEC_CACHE.get(spec)
    if cached is not None:
        return cached
    m = _SPEC_RE.match(spec)
    if not spec or m is None or len(spec) > 64:
        raise CodecError(f"unknown codec spec {spec!r}")
    topk = float(m.group(2)) if m.group(1) else None
    if topk is not None and not (0.0 < topk <= 1.0):
        raise CodecError(f"top-k fraction must be in (0, 1], got {topk}")
    vname = m.group(3) or ("f32" if topk is not None else None)
    if vname is None:
        raise CodecError(f"unknown codec spec {spec!r}")
    if vname in ("dense", "f32"):
        values: _ValueCodec = _F32()
    elif vname == "f16":
        values = _F16()
    else:
        stochastic = vname.startswith("q8s")
        cm = re.search(r"c(\d+)$", vname)
        values = _Q8(chunk=int(cm.group(1)) if cm else 256, stochastic=stochastic)
    codec = Codec(spec, topk, values)
    _CODEC_CACHE[spec] = codec
    return codec


def codec_id(spec: str) -> str:
    return get_codec(spec).codec_id


def encode(x, codec: str | Codec = "dense", *, rng: np.random.Generator | None = None) -> bytes:
    """Encode ``x`` (ndarray, torch tensor or list of tensors) with ``codec``."""
    c = codec if isinstance(codec, Codec) else get_codec(codec)
    return c.encode(x, rng=rng)


def decode(payload: bytes | bytearray | memoryview, *,
           expected_codecs: Sequence[str] | None = None) -> np.ndarray:
    """Decode a payload to a float32 array of the encoded shape (codec read from the header)."""
    header = parse_header(payload)
    if expected_codecs is not None and header.codec not in expected_codecs:
        raise CodecError(f"codec {header.codec!r} not allowed (expected one of {list(expected_codecs)})")
    return _decode_body(get_codec(header.codec), header, payload)


def decode_verified(payload: bytes | bytearray | memoryview, header: PayloadHeader) -> np.ndarray:
    """Decode a payload whose header was already parsed (and verified) by :func:`parse_header`."""
    return _decode_body(get_codec(header.codec), header, payload)


# --------------------------------------------------------------------------- header


_FIXED = struct.Struct("<4sBB")


def _pack(spec: str, shape: tuple[int, ...], body: bytes) -> bytes:
    name = spec.encode("ascii")
    head = _FIXED.pack(MAGIC, HEADER_FORMAT, len(name)) + name
    head += struct.pack("<HB", CODEC_VERSION, len(shape)) + struct.pack(f"<{len(shape)}Q", *shape)
    head += struct.pack("<Q", len(body))
    h = hashlib.sha256(head)
    h.update(body)
    return head + h.digest() + body


def parse_header(payload: bytes | bytearray | memoryview, *, verify: bool = True) -> PayloadHeader:
    """Parse and validate the header (and, with ``verify``, the body length and hash)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    buf = memoryview(payload)
    if len(buf) < _FIXED.size:
        raise CodecError(f"payload truncated: {len(buf)} bytes")
    magic, fmt, name_len = _FIXED.unpack_from(buf, 0)
    if magic != MAGIC:
        raise CodecError("bad magic: not a sakura_nexus delta payload")
    if fmt != HEADER_FORMAT:
        raise CodecError(f"unsupported header format {fmt}")
    off = _FIXED.size
    if len(buf) < off + name_len + 3:
        raise CodecError("payload truncated in header")
    try:
        name = bytes(buf[off:off + name_len]).decode("ascii")
    except UnicodeDecodeError as e:
        raise CodecError("codec name is not ASCII") from e
    off += name_len
    version, ndim = struct.unpack_from("<HB", buf, off)
    off += 3
    if version != CODEC_VERSION:
        raise CodecError(f"unsupported codec version {name}-v{version} (this build decodes v{CODEC_VERSION})")
    if ndim > MAX_NDIM:
        raise CodecError(f"too many dimensions: {ndim}")
    if len(buf) < off + 8 * ndim + 8 + 32:
        raise CodecError("payload truncated in header")
    shape = tuple(int(d) for d in struct.unpack_from(f"<{ndim}Q", buf, off))
    off += 8 * ndim
    (body_len,) = struct.unpack_from("<Q", buf, off)
    off += 8
    digest = bytes(buf[off:off + 32])
    off += 32
    header = PayloadHeader(name, version, shape, int(body_len), digest, off)
    if header.size >= MAX_ELEMENTS:
        raise CodecError(f"too many elements: {header.size}")
    if verify:
        if len(buf) < header.total_len:
            raise CodecError(f"payload truncated: body has {len(buf) - off} of {body_len} bytes")
        if len(buf) > header.total_len:
            raise CodecError(f"payload has {len(buf) - header.total_len} trailing bytes")
        h = hashlib.sha256(buf[:off - 32])
        h.update(buf[off:])
        if h.digest() != digest:
            raise CodecError("payload corrupt: sha256 mismatch")
    return header


def _decode_body(codec: Codec, header: PayloadHeader, payload) -> np.ndarray:
    body = memoryview(payload)[header.header_len:header.total_len]
    n = header.size
    if codec.topk is None:
        values, used = codec.values.decode(body, n)
        flat = values
    else:
        if len(body) < 4:
            raise CodecError("top-k body truncated")
        (k,) = struct.unpack_from("<I", body, 0)
        if k > n:
            raise CodecError(f"top-k count {k} exceeds size {n}")
        if len(body) < 4 + 4 * k:
            raise CodecError("top-k body truncated")
        idx = np.frombuffer(body[4:4 + 4 * k], dtype="<u4").astype(np.int64)
        if k and (idx.max() >= n):
            raise CodecError("top-k index out of range")
        values, vused = codec.values.decode(body[4 + 4 * k:], k)
        used = 4 + 4 * k + vused
        flat = np.zeros(n, np.float32)
        flat[idx] = values
    if used != len(body):
        raise CodecError(f"body length mismatch: used {used} of {len(body)} bytes")
    return flat.reshape(header.shape)


# --------------------------------------------------------------------------- tensors


def _as_float32_array(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return np.asarray(x, dtype=np.float32)
    if isinstance(x, (list, tuple)):
        return flatten_tensors(x)[0]
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        return x.detach().cpu().numpy().astype(np.float32, copy=False)
    return np.asarray(x, dtype=np.float32)


def flatten_tensors(tensors: Sequence) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Concatenate tensors/arrays into one flat float32 vector; return it and the shapes."""
    parts, shapes = [], []
    for t in tensors:
        a = t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)
        shapes.append(tuple(int(d) for d in a.shape))
        parts.append(a.astype(np.float32, copy=False).ravel())
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return flat.astype(np.float32, copy=False), shapes


def unflatten(flat: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Inverse of :func:`flatten_tensors` (returns numpy views)."""
    flat = np.asarray(flat).ravel()
    total = sum(int(math.prod(s)) for s in shapes)
    if total != flat.size:
        raise CodecError(f"shape list covers {total} elements, vector has {flat.size}")
    out, off = [], 0
    for s in shapes:
        n = int(math.prod(s))
        out.append(flat[off:off + n].reshape(tuple(s)))
        off += n
    return out


# --------------------------------------------------------------------------- error feedback


class ErrorFeedback:
    """Error-feedback compression: the un-transmitted part of each delta stays on the robot.

    ``encode(delta)`` encodes ``delta + residual`` and keeps ``residual <- (delta + residual) - decoded``.
    Over many updates the sum of decoded deltas tracks the sum of true deltas up to the (bounded)
    current residual. Persist :meth:`state_dict` with the robot's other state to survive restarts.
    """

    def __init__(self, codec: str | Codec, size: int | None = None, *, seed: int | None = None):
        self.codec = codec if isinstance(codec, Codec) else get_codec(codec)
        self.residual = np.zeros(size, np.float32) if size is not None else None
        self._rng = np.random.default_rng(seed)

    def encode(self, delta) -> bytes:
        arr = _as_float32_array(delta)
        flat = arr.ravel()
        if self.residual is None or self.residual.size != flat.size:
            if self.residual is not None and np.any(self.residual):
                raise CodecError(f"delta size {flat.size} != residual size {self.residual.size}")
            self.residual = np.zeros(flat.size, np.float32)
        if not np.all(np.isfinite(flat)):
            raise CodecError("delta contains NaN/Inf; refusing to encode (residual unchanged)")
        corrected = flat + self.residual
        payload = self.codec.encode(corrected.reshape(arr.shape), rng=self._rng)
        sent = decode(payload).ravel()
        self.residual = (corrected - sent).astype(np.float32)
        return payload

    @property
    def residual_norm(self) -> float:
        if self.residual is None:
            return 0.0
        return float(np.sqrt(np.square(self.residual, dtype=np.float64).sum()))

    def reset(self) -> None:
        if self.residual is not None:
            self.residual[:] = 0

    def state_dict(self) -> dict:
        return {"codec": self.codec.spec, "residual": None if self.residual is None else self.residual.copy()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("codec") != self.codec.spec:
            raise CodecError(
                f"error-feedback state is for codec {state.get('codec')!r}, not {self.codec.spec!r}")
        r = state.get("residual")
        self.residual = None if r is None else np.asarray(r, np.float32).ravel().copy()
