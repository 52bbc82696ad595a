"""Decoding images safely: every failure names the file, and huge images are refused before decoding."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from polymodal.errors import DataError

# A 20k x 20k PNG decodes to 1.2 GB; refuse anything past ~90 megapixels before decoding it.
MAX_PIXELS = 90_000_000


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
    try:
        fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    except FileNotFoundError:
        raise DataError(f"image file not found: {label}") from None
    except OSError as e:
        raise DataError(f"cannot read image {label}: {e.strerror or e}") from None
    with fp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                w, h = img.size
                if w * h > max_pixels:
                    raise DataError(f"image {label} is {w}x{h} pixels, more than the limit of {max_pixels} pixels")
                target = draft(w, h) if draft is not None and img.format == "JPEG" else None
                if target is not None:
                    img.draft("RGB", target)
                img.load()
        except DataError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"image {label} has more pixels than the limit of {max_pixels} (decompression-bomb guard)") from None
        except UnidentifiedImageError as e:
            raise DataError(f"not a readable image: {label} ({e})") from None
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
            raise DataError(f"corrupt image {label}: {e}") from None
    return img if img.mode == "RGB" else img.convert("RGB")  # convert() copies even an RGB image
