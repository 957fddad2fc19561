"""Delta codecs: exact round trips where lossless, error bounds where lossy, error feedback, integrity."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sakura_nexus.federated.common.codecs import (
    CodecError,
    ErrorFeedback,
    codec_id,
    decode,
    encode,
    flatten_tensors,
    get_codec,
    parse_header,
    unflatten,
)

RNG = np.random.default_rng(0)
SPECS = ["dense", "f32", "f16", "q8", "q8s", "q8c64", "topk0.01", "topk0.1+q8", "topk0.05+q8s", "topk1+f16"]

finite_f32 = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=40),
                        elements=st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_infinity=False))


@settings(max_examples=60, deadline=None)
@given(finite_f32)
def test_dense_roundtrip_is_bit_exact(x):
    p = encode(x, "dense")
    y = decode(p)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.array_equal(y.view(np.uint32), x.view(np.uint32))


def test_dense_preserves_nan_inf_bits():
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 1.5], np.float32)
    assert np.array_equal(decode(encode(x)).view(np.uint32), x.view(np.uint32))


@settings(max_examples=40, deadline=None)
@given(finite_f32, st.sampled_from([8, 64, 256]))
def test_q8_error_bound_per_chunk(x, chunk):
    spec = "q8" if chunk == 256 else f"q8c{chunk}"
    flat = x.ravel()
    y = decode(encode(x, spec)).ravel()
    for c in range(0, flat.size, chunk):
        seg = flat[c:c + chunk]
        scale = np.abs(seg).max() / 127.0
        # nearest rounding: error <= scale / 2 (+ float32 slack)
        tiny = np.finfo(np.float32).tiny  # values below float32's normal range flush to 0
        assert np.all(np.abs(y[c:c + chunk] - seg) <= scale * 0.5 + 1e-6 * (np.abs(seg) + scale) + tiny)


def test_q8_stochastic_error_bound_and_unbiased():
    x = RNG.normal(size=4096).astype(np.float32)
    scale = np.abs(x.reshape(-1, 256)).max(axis=1) / 127.0
    ys = [decode(encode(x, "q8s", rng=np.random.default_rng(i))) for i in range(200)]
    for y in ys[:5]:
        assert np.all(np.abs(y - x) <= np.repeat(scale, 256) * (1 + 1e-5))
    bias = np.mean(ys, axis=0) - x
    # the mean of 200 unbiased draws: |bias| ~ scale / sqrt(200)
    assert np.abs(bias).mean() < 0.1 * scale.mean()


def test_f16_relative_error_and_range():
    x = RNG.normal(size=10_000).astype(np.float32)
    y = decode(encode(x, "f16"))
    assert np.all(np.abs(y - x) <= np.abs(x) * 2 ** -10 + 1e-7)
    with pytest.raises(CodecError):
        encode(np.array([1e6], np.float32), "f16")


def test_topk_keeps_largest_exactly():
    x = RNG.normal(size=1000).astype(np.float32)
    y = decode(encode(x, "topk0.01"))
    k = 10
    idx = np.argsort(-np.abs(x))[:k]
    assert np.count_nonzero(y) == k
    assert np.array_equal(y[idx], x[idx])
    # composite: indices exact, values within the q8 bound of the selected values
    z = decode(encode(x, "topk0.01+q8"))
    assert set(np.flatnonzero(z)) <= set(idx)
    assert np.all(np.abs(z[idx] - x[idx]) <= np.abs(x[idx]).max() / 127 / 2 + 1e-6)


@pytest.mark.parametrize("spec", SPECS)
def test_every_spec_roundtrips_shape_and_header(spec):
    x = RNG.normal(size=(7, 33)).astype(np.float32)
    p = encode(x, spec)
    h = parse_header(p)
    assert h.codec == spec and h.version == 1 and h.shape == (7, 33)
    assert h.sha256 == hashlib.sha256(p[:h.header_len - 32] + p[h.header_len:]).digest()
    y = decode(p)
    assert y.shape == x.shape
    assert get_codec(spec).decode(p).shape == x.shape
    assert codec_id(spec) == f"{spec}-v1"
    if get_codec(spec).lossless:
        assert np.array_equal(x, y)


def test_sizes_for_realistic_delta():
    x = RNG.normal(size=200_000).astype(np.float32) * 1e-3
    sizes = {s: len(encode(x, s)) for s in ("dense", "f16", "q8", "topk0.01", "topk0.01+q8")}
    assert sizes["dense"] > 800_000
    assert sizes["q8"] < 0.27 * sizes["dense"]
    assert sizes["topk0.01+q8"] < 0.015 * sizes["dense"]


@pytest.mark.parametrize("spec", ["dense", "q8", "topk0.01+q8"])
def test_corrupt_and_truncated_payloads_raise(spec):
    x = RNG.normal(size=500).astype(np.float32)
    p = bytearray(encode(x, spec))
    h = parse_header(bytes(p))
    # flip one body byte
    bad = bytearray(p)
    bad[h.header_len + 3] ^= 0x40
    with pytest.raises(CodecError, match="sha256"):
        decode(bytes(bad))
    # truncate anywhere
    for cut in (0, 3, 5, h.header_len - 1, h.header_len + 1, len(p) - 1):
        with pytest.raises(CodecError):
            decode(bytes(p[:cut]))
    # trailing garbage
    with pytest.raises(CodecError, match="trailing"):
        decode(bytes(p) + b"x")
    # bad magic
    with pytest.raises(CodecError, match="magic"):
        decode(b"XXXX" + bytes(p[4:]))
    # a corrupted header field (the shape) is caught by the hash too
    bad = bytearray(p)
    bad[h.header_len - 32 - 8 - 8] ^= 0x01  # low byte of the (only) dimension
    with pytest.raises(CodecError, match="sha256"):
        decode(bytes(bad))


def _rehash(p: bytes, header_len: int) -> bytes:
    d = hashlib.sha256(p[:header_len - 32] + p[header_len:]).digest()
    return p[:header_len - 32] + d + p[header_len:]


def test_unknown_codec_and_version_rejected():
    x = np.ones(10, np.float32)
    p = encode(x, "dense")
    name = b"dense"
    # a well-formed payload of a codec this build does not know (hash recomputed)
    hl = parse_header(p).header_len
    q = _rehash(p.replace(name, b"zzzzz", 1), hl)
    with pytest.raises(CodecError, match="unknown codec"):
        decode(q)
    # ... or of a newer codec version
    off = 4 + 1 + 1 + len(name)
    q = p[:off] + struct.pack("<H", 2) + p[off + 2:]
    with pytest.raises(CodecError, match="version"):
        decode(_rehash(q, hl))
    with pytest.raises(CodecError):
        decode(p, expected_codecs=["q8"])
    for bad in ("", "topk", "topk2", "q9", "dense+q8", "topk0+q8"):
        with pytest.raises(CodecError):
            get_codec(bad)
    with pytest.raises(CodecError):
        decode("not bytes")  # type: ignore[arg-type]


def test_flatten_list_of_tensors_and_torch_input():
    torch = pytest.importorskip("torch")
    ts = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    flat, shapes = flatten_tensors(ts)
    assert flat.size == 12 + 5 + 8 and shapes == [(3, 4), (5,), (2, 2, 2)]
    y = decode(encode(ts, "dense"))
    parts = unflatten(y, shapes)
    for t, p in zip(ts, parts, strict=True):
        assert np.array_equal(t.numpy(), p)
    assert np.array_equal(decode(encode(ts[0], "dense")), ts[0].numpy())
    with pytest.raises(CodecError):
        unflatten(y, [(3,)])


@pytest.mark.parametrize("spec", ["topk0.01", "topk0.01+q8", "q8s", "topk0.05+q8s"])
def test_error_feedback_running_sum_converges(spec):
    """sum(decoded) - sum(true) == -residual, which stays bounded while the sums grow."""
    rng = np.random.default_rng(1)
    n, steps = 2000, 300
    ef = ErrorFeedback(spec, n, seed=2)
    true_sum = np.zeros(n)
    sent_sum = np.zeros(n)
    no_ef_sum = np.zeros(n)
    drift = rng.normal(size=n) * 1e-3  # a persistent direction, like a real training signal
    gaps, res = [], []
    for t in range(steps):
        d = (drift + rng.normal(size=n) * 1e-3).astype(np.float32)
        true_sum += d
        sent_sum += decode(ef.encode(d))
        no_ef_sum += decode(encode(d, spec, rng=np.random.default_rng(t)))
        gaps.append(np.linalg.norm(sent_sum - true_sum) / np.linalg.norm(true_sum))
        res.append(ef.residual_norm)
        # the identity that makes error feedback exact up to the residual
        assert np.allclose(sent_sum + ef.residual, true_sum, atol=1e-3)
    assert gaps[-1] < 0.2 * gaps[10] + 1e-3  # relative error shrinks as the sum grows (~1/t)
    assert gaps[-1] < 0.2
    assert res[-1] <= 1.3 * res[steps // 2] + 1e-6  # the residual saturates: the error stays bounded
    no_ef_gap = np.linalg.norm(no_ef_sum - true_sum) / np.linalg.norm(true_sum)
    if spec.startswith("topk"):
        assert no_ef_gap > 5 * gaps[-1]  # without error feedback top-k loses most of the signal
    # state survives a restart
    st_ = ef.state_dict()
    ef2 = ErrorFeedback(spec, n)
    ef2.load_state_dict(st_)
    assert np.array_equal(ef2.residual, ef.residual)
    with pytest.raises(CodecError):
        ErrorFeedback("dense").load_state_dict(st_)


def test_error_feedback_refuses_nonfinite():
    ef = ErrorFeedback("topk0.1", 10)
    ef.encode(np.ones(10, np.float32))
    r = ef.residual.copy()
    with pytest.raises(CodecError):
        ef.encode(np.full(10, np.nan, np.float32))
    assert np.array_equal(ef.residual, r)
