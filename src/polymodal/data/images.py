"""Decoding images safely: every failure names the file, and huge images are refused before decoding."""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from polymodal.data import png_fast
from polymodal.errors import DataError

# A 20k x 20k PNG decodes to 1.2 GB; refuse anything past ~90 megapixels before decoding it.
MAX_PIXELS = 90_000_000

log = logging.getLogger(__name__)


class DecodedImageCache:
    """Decoded images kept in memory, up to ``max_bytes``, keyed by file path (used when the main
    process loads the training data: see ``make_train_loader``).

    A dataset trained for several epochs then decodes each image once instead of once per epoch: the
    built-in world's 64 px PNGs take ~0.3 ms each to open and decode, ~20 ms of every quickstart
    step's 64 images. Once full it keeps what it has and decodes the rest every time; with shuffled
    epochs every image is equally likely next, so evicting one for another would gain nothing.
    Images are shared, not copied: the processors never modify an image in place.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self.hits = 0
        self.misses = 0
        self._images: dict[str, Image.Image] = {}
        self._full_logged = False

    def get(self, path: Path | str) -> Image.Image | None:
        img = self._images.get(str(path))
        if img is None:
            self.misses += 1
        else:
            self.hits += 1
        return img

    def put(self, path: Path | str, img: Image.Image) -> None:
        size = img.width * img.height * (1 if len(img.getbands()) == 1 else 4)  # PIL keeps RGB in 4 bytes a pixel
        if self.used + size > self.max_bytes:
            if not self._full_logged:
                self._full_logged = True
                log.info(
                    "decoded-image cache full (%.0f MB, %d images): later images are decoded every epoch; raise image.cache_mb to keep them",
                    self.used / 2**20, len(self._images),
                )
            return
        self._images[str(path)] = img
        self.used += size


_STREAM_REPR = re.compile(r"<_io\.\w+ (?:object at 0x[0-9a-f]+|name=[^>]*)>")


def _too_many_pixels(label: str, width: int, height: int, max_pixels: int) -> DataError:
    return DataError(f"image {label} is {width}x{height}: more pixels than the limit of {max_pixels} (decompression-bomb guard)")


def open_image(
    source: Path | bytes,
    name: str | None = None,
    max_pixels: int = MAX_PIXELS,
    draft: Callable[[int, int], tuple[int, int] | None] | None = None,
) -> Image.Image:
    """Decode to RGB, raising :class:`DataError` for missing, truncated, corrupt or oversized images.

    ``draft(width, height)`` may name a smaller size for a JPEG, which is then decoded at a reduced
    scale (:meth:`ImageProcessor.draft_size`); other formats are always decoded whole.
    """
    label = name or (str(source) if isinstance(source, Path) else "<image bytes>")
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else None
    try:
        if data is None and png_fast.available() and str(source).lower().endswith(".png"):
            with open(source, "rb") as f:
                data = f.read()
        fp = io.BytesIO(data) if data is not None else open(source, "rb")
    except FileNotFoundError:
        raise DataError(f"image file not found: {label}") from None
    except OSError as e:
        raise DataError(f"cannot read image {label}: {e.strerror or e}") from None
    if data is not None and (size := png_fast.png_size(data)) is not None:
        # PIL's own guard (below) refuses past Image.MAX_IMAGE_PIXELS as well: the fast path must too
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        if size[0] * size[1] > limit:
            raise _too_many_pixels(label, *size, limit)
        if (fast := png_fast.decode_rgb(data)) is not None:
            return fast
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                w, h = img.size
                if w * h > max_pixels:
                    raise _too_many_pixels(label, w, h, max_pixels)
                target = draft(w, h) if draft is not None and img.format == "JPEG" else None
                if target is not None:
                    img.draft("RGB", target)
                img.load()
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"image {label} has more pixels than the limit of {max_pixels} (decompression-bomb guard)") from None
        except UnidentifiedImageError:  # its message names the stream object (<_io.BytesIO object at 0x...>), not the image
            fp.seek(0)
            raise DataError(f"not a readable image: {label} (no image format PIL reads starts with {fp.read(8)!r})") from None
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
            raise DataError(f"corrupt image {label}: {_STREAM_REPR.sub('the file', str(e))}") from None
    return as_rgb(img)


def as_rgb(img: Image.Image) -> Image.Image:
    """``img`` in 8-bit RGB. PIL's convert("RGB") clips 16- and 32-bit greyscale (I;16, I, F) at 255,
    so a 16-bit scan or depth map came out all white; those are scaled to 0-255 first."""
    if img.mode == "RGB":
        return img  # convert() would copy it
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            full_scale = 65535.0
        else:  # 32-bit: read by its range (16-bit data in an I image, or F in [0, 1] or [0, 255])
            top = float(values.max()) if values.size else 0.0
            full_scale = 65535.0 if top > 255 else 1.0 if img.mode == "F" and top <= 1.0 else 255.0
        grey = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")  # 2-D uint8: mode L
    return img.convert("RGB")
