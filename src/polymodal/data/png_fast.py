"""Fast decoding of plain 8-bit RGB / RGBA PNGs through libspng (``pyspng``), when it is installed.

A 64 px world PNG takes PIL ~150 us to decode, of which ~60 us is inflating the data; the rest is
PIL's per-file and per-row machinery. libspng decodes the same file in ~100 us (``Image.fromarray``
included), with identical pixels. Training reads every image every epoch (unless the decoded-image
cache holds it), so this is a third of a small image's load.

Only the common case takes this path: 8-bit RGB or RGBA, whose conversion to RGB is unambiguous
(RGBA drops alpha, as PIL's ``convert("RGB")`` does). Everything else, and every file this path has
any doubt about, goes to PIL, which decides: libspng does not check the chunks' CRCs (it decoded a
bit-flipped file that PIL rejects), so they are checked here first, and a file that fails them, or
that libspng cannot decode, is handed to PIL to be decoded or rejected with its usual error. One
difference remains: libspng does not verify the zlib stream's own (Adler-32) checksum, so a file
written with a wrong one but correct chunk CRCs (damaged before its CRCs were computed) decodes here
and is refused by PIL. Transmission and storage damage breaks the CRCs and is caught.
"""

from __future__ import annotations

import zlib
from typing import Any

from PIL import Image

try:
    import pyspng as _pyspng
except ImportError:  # optional (polymodal[train] installs it where wheels exist)
    _pyspng = None

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGB, _RGBA = 2, 6  # PNG colour types


def available() -> bool:
    return _pyspng is not None


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's header, or None when ``data`` does not start like a PNG."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _checksums_hold(data: bytes) -> bool:
    """Every chunk's CRC matches and the file ends with IEND (so it is neither truncated nor bit-flipped)."""
    pos, end = len(PNG_SIGNATURE), len(data)
    while pos + 12 <= end:
        length = int.from_bytes(data[pos : pos + 4], "big")
        body_end = pos + 8 + length
        if body_end + 4 > end:
            return False
        if zlib.crc32(data[pos + 4 : body_end]) != int.from_bytes(data[body_end : body_end + 4], "big"):
            return False
        if data[pos + 4 : pos + 8] == b"IEND":
            return True
        pos = body_end + 4
    return False


def decode_rgb(data: bytes) -> Image.Image | None:
    """The PNG in ``data`` as an RGB image, or None to leave it to PIL (see the module docstring).
    Check the pixel count (:func:`png_size`) before calling: this decodes whatever it is given."""
    if _pyspng is None or png_size(data) is None:
        return None
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    if bit_depth != 8 or colour_type not in (_RGB, _RGBA) or interlace not in (0, 1):
        return None
    if not _checksums_hold(data):
        return None
    try:
        pixels: Any = _pyspng.load(data, "RGB")
    except (RuntimeError, ValueError):
        return None
    return Image.fromarray(pixels)
