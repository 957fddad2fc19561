"""Image decoding and preprocessing (ROS-free)."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sakura_nexus import vision


def _img(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_LINEAR)
    return base


def _pad(rows: np.ndarray, pad: int) -> tuple[bytes, int]:
    h = rows.shape[0]
    flat = rows.reshape(h, -1).view(np.uint8)
    step = flat.shape[1] + pad
    out = np.zeros((h, step), np.uint8)
    out[:, : flat.shape[1]] = flat
    return out.tobytes(), step


@pytest.mark.parametrize("pad", [0, 7 * 4])
def test_colour_encodings_decode_to_the_same_rgb(pad):
    rgb = _img()
    h, w = rgb.shape[:2]
    cases = {
        "rgb8": rgb, "bgr8": rgb[:, :, ::-1],
        "rgba8": np.dstack([rgb, np.full((h, w), 255, np.uint8)]),
        "bgra8": np.dstack([rgb[:, :, ::-1], np.zeros((h, w), np.uint8)]),
    }
    for enc, arr in cases.items():
        data, step = _pad(np.ascontiguousarray(arr), pad)
        out = vision.decode(enc, h, w, step, False, data)
        np.testing.assert_array_equal(out, rgb, err_msg=enc)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono_and_depth_encodings_match_grey_rgb(bigendian):
    grey = _img()[:, :, 0]
    h, w = grey.shape
    want = np.repeat(grey[:, :, None], 3, axis=2)
    be = ">" if bigendian else "<"
    mono16 = (grey.astype(np.uint16) * 257).astype(be + "u2")
    depth_max = 10.0
    mm = np.rint(grey.astype(np.float64) / 255 * depth_max * 1000).astype(be + "u2")
    metres = (grey.astype(np.float32) / 255 * depth_max).astype(be + "f4")
    for enc, arr, tol in (("mono8", grey, 0), ("mono16", mono16, 0), ("16UC1", mm, 1), ("32FC1", metres, 1)):
        data, step = _pad(np.ascontiguousarray(arr), 3 * arr.dtype.itemsize)
        out = vision.decode(enc, h, w, step, bigendian, data, depth_max=depth_max)
        assert np.abs(out.astype(int) - want).max() <= tol, enc


def test_nan_depth_is_no_return():
    d = np.full((4, 5), np.nan, np.float32)
    d[0, 0] = 5.0
    out = vision.decode("32FC1", 4, 5, 20, False, d.tobytes(), depth_max=10.0)
    assert out[0, 0, 0] == 128 and out[1:, :].max() == 0


@pytest.mark.parametrize("enc,h,w,step,n,reason", [
    ("yuv422", 2, 2, 4, 8, "encoding"), ("rgb8", 0, 4, 12, 0, "size"), ("rgb8", 2, 4, 11, 22, "step"),
    ("rgb8", 2, 4, 12, 23, "size"), ("mono16", 2, 3, 7, 14, "step"), ("32FC1", 2, 2, 8, 8, "size"),
])
def test_inconsistent_images_raise_image_error(enc, h, w, step, n, reason):
    with pytest.raises(vision.ImageError) as e:
        vision.decode(enc, h, w, step, False, bytes(n))
    assert e.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(enc=st.sampled_from(sorted(vision.ENCODINGS) + ["bayer_rggb8", ""]), h=st.integers(-2, 40),
       w=st.integers(-2, 40), step=st.integers(-5, 200), n=st.integers(0, 4000), be=st.booleans())
def test_decode_never_raises_anything_but_image_error(enc, h, w, step, n, be):
    try:
        out = vision.decode(enc, h, w, step, be, bytes(n))
    except vision.ImageError:
        return
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_undistortion_maps_are_cached_and_change_the_image():
    rgb = _img(120, 160)
    u = vision.Undistorter()
    k = [100.0, 0, 80, 0, 100.0, 60, 0, 0, 1]
    assert u.update(160, 120, k, [0, 0, 0, 0, 0]) and not u.active
    np.testing.assert_array_equal(u.apply(rgb), rgb)
    assert u.update(160, 120, k, [-0.4, 0.2, 0, 0, 0]) and u.active
    assert not u.update(160, 120, k, [-0.4, 0.2, 0, 0, 0])  # same model: maps reused
    assert u._maps[0].dtype == np.int16  # fixed-point maps
    out = u.apply(rgb)
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() > 2


def test_crop_resize_and_normalise():
    rgb = _img(480, 640)
    cfg = vision.PreprocessConfig(width=64, height=48, crop=(0.25, 0.0, 0.75, 1.0), mean=(0.5,) * 3, std=(0.25,) * 3)
    small = vision.crop_resize(rgb, cfg)
    assert small.shape == (48, 64, 3)
    x = vision.normalise(small, cfg)
    assert x.shape == (3, 48, 64) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0, 0], (small[0, 0] / 255.0 - 0.5) / 0.25, atol=1e-5)


def test_quality_penalises_blur_and_bad_exposure():
    sharp = _img(64, 64, seed=3)
    sharp = np.where(np.indices((64, 64)).sum(0)[..., None] % 8 < 4, sharp, 255 - sharp).astype(np.uint8)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 4)
    dark = (sharp // 16).astype(np.uint8)
    q = vision.quality(sharp)
    assert q > vision.quality(blurred) and q > vision.quality(dark)
    assert 0.0 <= vision.quality(np.zeros((64, 64, 3), np.uint8)) <= 0.01
