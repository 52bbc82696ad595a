"""The PNG files a report links to: plots and thumbnails, written once into ``report_files/``.

The HTML embeds the same bytes as data URIs (one file to mail around); the Markdown links to the files.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ASSET_DIR = "report_files"
_PREFIXES = ("plot_", "thumb_")


@dataclass(frozen=True)
class Asset:
    path: Path  # on disk
    rel: str  # relative to the report, with forward slashes
    data: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.data).decode("ascii")


@dataclass(frozen=True)
class Missing:
    """An image that could not be shown; ``reason`` is 'missing' or 'unreadable'."""

    original: str
    reason: str


class AssetStore:
    def __init__(self, out_dir: Path, thumb_size: int = 96) -> None:
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / ASSET_DIR
        self.thumb_size = thumb_size
        self._thumbs: dict[str, Asset | Missing] = {}
        self._n_thumbs = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        # A report rewritten into the same folder must not keep the previous run's thumbnails.
        for old in self.dir.glob("*.png"):
            if old.name.startswith(_PREFIXES):
                old.unlink()

    def add_png(self, name: str, data: bytes) -> Asset:
        path = self.dir / name
        path.write_bytes(data)
        return Asset(path=path, rel=f"{ASSET_DIR}/{name}", data=data)

    def thumbnail(self, resolved: Path, original: str) -> Asset | Missing:
        """A small PNG of the image at ``resolved`` (cached per path), or why there is none."""
        key = str(resolved)
        if key in self._thumbs:
            return self._thumbs[key]
        result: Asset | Missing
        if not resolved.is_file():
            result = Missing(original, "missing")
        else:
            try:
                with Image.open(resolved) as im:
                    im.load()
                    im = _to_rgb(im)
                    im.thumbnail((self.thumb_size, self.thumb_size), Image.Resampling.LANCZOS)
                    buf = io.BytesIO()
                    im.save(buf, format="PNG", optimize=True)
                self._n_thumbs += 1
                result = self.add_png(f"thumb_{self._n_thumbs:04d}.png", buf.getvalue())
            except Exception:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError ...: placeholder
                result = Missing(original, "unreadable")
        self._thumbs[key] = result
        return result


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")
