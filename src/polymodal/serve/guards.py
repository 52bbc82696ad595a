"""Input checks that run before anything reaches the model, each failing with a clear 4xx.

Why here and not in the model code: a request is refused on its own, before it joins a micro-batch, so
one bad upload can never fail the other requests batched with it. Images are sniffed by their magic
bytes (the client's filename and content type are never trusted, nor used as paths), their header is
read to refuse a decompression bomb before decoding, and only then are they decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Sequence
from pathlib import PurePosixPath

from PIL import Image

from polymodal.data.images import open_image
from polymodal.serve.errors import ApiError
from polymodal.serve.settings import ServeSettings

__all__ = ["check_image", "check_k", "check_labels", "check_rel_path", "check_text", "decode_base64_image", "sniff_format"]

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format named by ``data``'s first bytes, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC if data.startswith(magic)), None)


def check_image(data: bytes, field: str, settings: ServeSettings) -> Image.Image:
    """Decode an uploaded image to RGB, or raise a 413/415/422 :class:`ApiError` naming ``field``."""
    if not data:
        raise ApiError(422, "invalid_input", f"{field}: the uploaded image is empty")
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, "too_large", f"{field}: the upload is {len(data)} bytes, more than the limit of {settings.max_upload_bytes}")
    fmt = sniff_format(data)
    allowed = ", ".join(settings.image_formats)
    if fmt is None:
        raise ApiError(415, "unsupported_media_type", f"{field}: not an image in a supported format ({allowed})")
    if fmt not in settings.image_formats:
        raise ApiError(415, "unsupported_media_type", f"{field}: {fmt} images are not accepted here; use {allowed}")
    try:  # the header alone: its declared size, before any pixel is decoded
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as head:
                w, h = head.size
                declared = head.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(422, "image_too_large", f"{field}: the image has more pixels than PIL's decompression-bomb limit") from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a corrupt header
        raise ApiError(422, "invalid_image", f"{field}: not a readable image ({type(e).__name__}: {e})") from None
    if declared not in settings.image_formats:
        raise ApiError(415, "unsupported_media_type", f"{field}: {declared} images are not accepted here; use {allowed}")
    if w * h > settings.max_pixels:
        raise ApiError(422, "image_too_large", f"{field}: the image is {w}x{h} pixels, more than the limit of {settings.max_pixels} pixels")
    try:
        return open_image(data, name=field, max_pixels=settings.max_pixels)
    except Exception as e:  # noqa: BLE001 - DataError for corrupt data; anything else is still bad input
        raise ApiError(422, "invalid_image", f"{field}: {e}") from None


def decode_base64_image(value: str, field: str, settings: ServeSettings) -> Image.Image:
    """An image sent inside JSON: base64, or a ``data:image/...;base64,`` URL; then :func:`check_image`."""
    payload = value.strip()
    if payload.startswith("data:"):
        head, sep, payload = payload.partition(",")
        if not sep or not head.endswith(";base64"):
            raise ApiError(422, "invalid_input", f"{field}: a data URL must look like 'data:image/png;base64,...'")
    if len(payload) > settings.max_upload_bytes * 4 // 3 + 4:
        raise ApiError(413, "too_large", f"{field}: the image is more than the limit of {settings.max_upload_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_input", f"{field}: not base64 image data (give base64 or a 'data:image/png;base64,...' URL)") from None
    return check_image(data, field, settings)


def one_input(has_image: bool, has_text: bool, image: str, text: str) -> None:
    """Exactly one of the two inputs. An empty form field arrives as no field at all, so 'neither'
    says that a text must hold words."""
    if has_image and has_text:
        raise ApiError(422, "invalid_input", f"give either {image} or {text}, not both")
    if not has_image and not has_text:
        raise ApiError(422, "invalid_input", f"give {image} or {text} (a text field must not be empty)")


def check_text(text: str | None, field: str, settings: ServeSettings) -> str:
    """A stripped, non-empty text of at most ``max_text_chars`` characters (any unicode)."""
    if text is None:
        raise ApiError(422, "invalid_input", f"{field}: a text is required")
    if "\x00" in text:
        raise ApiError(422, "invalid_input", f"{field}: the text holds a NUL character")
    out = text.strip()
    if not out:
        raise ApiError(422, "invalid_input", f"{field}: the text is empty; give some words")
    if len(out) > settings.max_text_chars:
        raise ApiError(422, "invalid_input", f"{field}: the text has {len(out)} characters, more than the limit of {settings.max_text_chars}")
    return out


def check_labels(labels: Sequence[str], settings: ServeSettings) -> tuple[str, ...]:
    """Zero-shot labels: 2 or more, distinct, each a valid text."""
    out = tuple(check_text(x, f"labels[{i}]", settings) for i, x in enumerate(labels))
    if len(out) < 2:
        raise ApiError(422, "invalid_input", f"labels: give at least two labels to choose between, got {len(out)}")
    if len(out) > settings.max_texts:
        raise ApiError(422, "invalid_input", f"labels: at most {settings.max_texts} labels, got {len(out)}")
    if len(set(out)) != len(out):
        raise ApiError(422, "invalid_input", "labels: the labels must be distinct")
    return out


def check_k(k: int, settings: ServeSettings) -> int:
    """``1 <= k <= max_k``; a larger k is refused (422), not clamped, so the client learns the limit."""
    if k < 1 or k > settings.max_k:
        raise ApiError(422, "invalid_input", f"k must be between 1 and {settings.max_k}, got {k}")
    return k


def check_rel_path(path: str) -> str:
    """A collection-relative POSIX path with no ``..``, no absolute start, no backslash or NUL."""
    pure = PurePosixPath(path)
    if not path or "\x00" in path or "\\" in path or pure.is_absolute() or ".." in pure.parts:
        raise ApiError(400, "bad_path", f"{path!r} is not a path relative to the collection (no '..', no leading '/')")
    return pure.as_posix()
