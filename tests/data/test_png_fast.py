"""libspng decoding gives PIL's pixels, and every file it is unsure of goes to PIL, which decides."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymodal.data import png_fast
from polymodal.data.images import open_image
from polymodal.errors import DataError

needs_pyspng = pytest.mark.skipif(not png_fast.available(), reason="pyspng is not installed")


def _png(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def _pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _random(shape: tuple[int, ...], dtype: type = np.uint8, high: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, high, shape, dtype=dtype)


@needs_pyspng
@pytest.mark.parametrize(
    "kind, array, save",
    [
        ("rgb", _random((37, 53, 3)), {}),
        ("rgba (alpha dropped, as PIL's convert does)", _random((20, 30, 4)), {}),
        ("interlaced rgb", _random((33, 17, 3)), {"interlace": 1}),
        ("uncompressed rgb", _random((16, 16, 3)), {"compress_level": 0}),
    ],
)
def test_fast_decode_equals_pil(kind, array, save):
    data = _png(array, **save)
    fast = png_fast.decode_rgb(data)
    assert fast is not None, kind
    assert fast.mode == "RGB" and fast.size == (array.shape[1], array.shape[0])
    assert np.array_equal(np.asarray(fast), _pil_rgb(data))


@pytest.mark.parametrize(
    "kind, array",
    [
        ("greyscale", _random((12, 10))),
        ("16-bit greyscale", _random((12, 10), np.uint16, 65536)),
    ],
)
def test_other_pngs_are_left_to_pil_and_still_open(kind, array, tmp_path):
    data = _png(array)
    assert png_fast.decode_rgb(data) is None, kind
    path = tmp_path / "x.png"
    path.write_bytes(data)
    # 16-bit grey is scaled to 8 bits (PIL's convert("RGB") clips it at 255: all white)
    grey = np.rint(array / 257).astype(np.uint8) if array.dtype == np.uint16 else array
    assert np.array_equal(np.asarray(open_image(path)), np.repeat(grey[..., None], 3, axis=2))


def test_palette_png_is_left_to_pil():
    data = _png(_random((9, 9, 3), high=4) * 60)
    palette = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("P").save(palette, format="PNG")
    assert png_fast.decode_rgb(palette.getvalue()) is None
    assert png_fast.decode_rgb(b"not a png at all, but long enough to have a header") is None


@needs_pyspng
def test_a_bit_flip_in_the_image_data_goes_to_pil_which_rejects_it(tmp_path):
    """libspng itself decodes this file without complaint; the checksums catch it."""
    data = bytearray(_png(_random((20, 30, 4))))
    data[60] ^= 0xFF  # inside the IDAT chunk
    assert png_fast.decode_rgb(bytes(data)) is None
    path = tmp_path / "flipped.png"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="flipped.png"):
        open_image(path)


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_png_raises_a_data_error_naming_the_file(keep, tmp_path):
    data = _png(_random((40, 40, 3)))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: int(len(data) * keep)])
    assert png_fast.decode_rgb(path.read_bytes()) is None
    with pytest.raises(DataError, match="cut.png"):
        open_image(path)


def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(_png(_random((10, 400, 3))))
    with pytest.raises(DataError, match=r"wide.png is 400x10: more pixels than the limit of 1000"):
        open_image(path, max_pixels=1000)
    assert open_image(path, max_pixels=4000).size == (400, 10)


def test_without_pyspng_the_same_pixels_come_from_pil(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    array = _random((21, 22, 3))
    path.write_bytes(_png(array))
    with_fast = np.asarray(open_image(path))
    monkeypatch.setattr(png_fast, "_pyspng", None)
    assert not png_fast.available()
    assert np.array_equal(np.asarray(open_image(path)), with_fast)
    assert np.array_equal(with_fast, array)


def test_missing_png_names_the_file(tmp_path):
    with pytest.raises(DataError, match="image file not found: .*absent.png"):
        open_image(Path(tmp_path / "absent.png"))


def test_pils_own_pixel_limit_holds_on_the_fast_path_too(tmp_path, monkeypatch):
    """open_image refuses what PIL's decompression-bomb guard refuses, whichever decoder would run."""
    path = tmp_path / "x.png"
    path.write_bytes(_png(_random((20, 20, 3))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for source in (path, path.read_bytes()):
        with pytest.raises(DataError, match="more pixels than the limit"):
            open_image(source, max_pixels=1000)
