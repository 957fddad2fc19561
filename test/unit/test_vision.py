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


# --- CompressedImage ------------------------------------------------------------------------------
def _encoded(ext: str, img=None, **kw) -> bytes:
    ok, buf = cv2.imencode(ext, (img if img is not None else _img())[:, :, ::-1], **kw)
    assert ok
    return buf.tobytes()


def _claims(data: bytes, w: int, h: int) -> bytes:
    """The same (valid) file with its header announcing w x h pixels (PNG IHDR / JPEG SOF0)."""
    b = bytearray(data)
    if data.startswith(vision.PNG_MAGIC):
        b[16:24] = w.to_bytes(4, "big") + h.to_bytes(4, "big")
        import zlib

        b[29:33] = zlib.crc32(bytes(b[12:29])).to_bytes(4, "big")  # keep the IHDR checksum valid
    else:
        i = data.index(b"\xff\xc0")
        b[i + 5:i + 9] = h.to_bytes(2, "big") + w.to_bytes(2, "big")
    return bytes(b)


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed rgb8", "mono8; png compressed mono8"])
def test_png_decodes_exactly(fmt):
    img = _img()
    if "mono8" in fmt:
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        ok, buf = cv2.imencode(".png", grey)
        np.testing.assert_array_equal(vision.decode_compressed(fmt, buf.tobytes()), np.dstack([grey] * 3))
    else:
        np.testing.assert_array_equal(vision.decode_compressed(fmt, _encoded(".png")), img)
    assert vision.compressed_header(fmt, _encoded(".png")) == ("png", 64, 48)


@pytest.mark.parametrize("fmt", ["jpeg", "bgr8; jpeg compressed bgr8", "JPG"])
def test_jpeg_decodes_close_to_the_original(fmt):
    img = _img()
    got = vision.decode_compressed(fmt, _encoded(".jpg", img, params=[cv2.IMWRITE_JPEG_QUALITY, 95]))
    assert got.shape == img.shape and np.abs(got.astype(int) - img).mean() < 3
    prog = _encoded(".jpg", img, params=[cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert vision.compressed_header(fmt, prog) == ("jpeg", 64, 48)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_huge_dimensions_in_a_valid_header_are_refused_before_decoding(ext, monkeypatch):
    bomb = _claims(_encoded(ext), 60000, 60000)
    assert len(bomb) < 20000
    calls = []
    monkeypatch.setattr(vision.cv2, "imdecode", lambda *a: calls.append(a))
    with pytest.raises(vision.ImageError) as e:
        vision.decode_compressed("png" if ext == ".png" else "jpeg", bomb)
    assert e.value.reason == "size" and "60000x60000" in str(e.value)
    assert calls == []  # the decoder was never reached
    # the limit is a parameter: a small limit refuses a normal frame, too
    with pytest.raises(vision.ImageError, match="above the limit"):
        vision.compressed_header("png" if ext == ".png" else "jpeg", _encoded(ext), max_pixels=100)


@pytest.mark.parametrize("fmt,data,reason", [
    ("jpeg", b"", "corrupt"),
    ("jpeg", b"\x00" * 100, "corrupt"),
    ("jpeg", b"\xff\xd8\xff", "corrupt"),  # no frame header
    ("png", vision.PNG_MAGIC + b"\x00" * 4, "corrupt"),
    ("rgb8", b"\xff\xd8", "format"),  # raw encoding name, not a codec
    ("", b"\xff\xd8", "format"),
    ("16UC1; compressedDepth png", vision.PNG_MAGIC, "format"),
    ("png", b"\xff\xd8\xff\xe0", "format"),  # JPEG bytes announced as png
])
def test_malformed_compressed_images_raise_image_error(fmt, data, reason):
    with pytest.raises(vision.ImageError) as e:
        vision.decode_compressed(fmt, data)
    assert e.value.reason == reason


def test_truncated_and_corrupted_payloads_raise_image_error():
    for ext, fmt in ((".png", "png"), (".jpg", "jpeg")):
        data = _encoded(ext)
        with pytest.raises(vision.ImageError):
            vision.decode_compressed(fmt, data[: len(data) // 3])
        # a smaller size in the header than the data has: PNG fails its checks, libjpeg decodes the
        # announced 8x8 (and warns about extraneous bytes); never anything larger than announced
        try:
            assert vision.decode_compressed(fmt, _claims(data, 8, 8)).shape == (8, 8, 3)
            assert fmt == "jpeg"
        except vision.ImageError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["jpeg", "png", "x", ""]), st.binary(max_size=400), st.integers(0, 2**16 - 1),
       st.integers(0, 2**16 - 1))
def test_decode_compressed_never_raises_anything_but_image_error(fmt, tail, w, h):
    for base in (_encoded(".png")[:33], _encoded(".jpg")[:200]):
        data = _claims(base, w, h) + tail
        try:
            out = vision.decode_compressed(fmt, data, max_pixels=10**6)
            assert out.dtype == np.uint8 and out.shape[2] == 3
        except vision.ImageError:
            pass
