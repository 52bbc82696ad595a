"""Image preprocessing and augmentation in PIL + torch (no torchvision), and the cross-modal flip.

A processor's settings travel with a checkpoint (``to_dict``/``from_dict``), so a model is always run
with the exact preprocessing it was trained with.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from polymodal.data.images import DecodedImageCache, as_rgb

# CLIP's statistics are the usual default for pretrained towers; world models use them too.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# resize-then-crop is kept (pixel-identical to Hugging Face's processors) up to this many times the output
# area; beyond it (aspect ratios past 16:1) only the crop is resampled
_MAX_RESIZED_AREA = 16


@dataclass(frozen=True)
class ImageProcessorConfig:
    size: int = 64
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    resize_mode: str = "shortest_then_center_crop"  # or "squash" (resize to size x size, no crop)
    interpolation: str = "bicubic"
    # training-only augmentation; defaults keep colour words true (no hue shift: 'red' must stay red)
    random_resized_crop: tuple[float, float] | None = None  # area scale range, e.g. (0.8, 1.0)
    brightness: float = 0.0
    contrast: float = 0.0
    # decode JPEGs at 1/2, 1/4 or 1/8 scale (in the DCT) when the output needs no more pixels: ~2x
    # faster (640x480 photos to 224), pixels within a few levels of a full decode
    jpeg_draft: bool = False
    # the resized long side: "round" (polymodal's own) or "floor" (Hugging Face's image processors, so a
    # converted checkpoint sees exactly the pixels it saw there: 640x480 to 224 is 298 wide, not 299)
    resize_rounding: str = "round"

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"image processor: size must be >= 8, got {self.size}")
        if self.resize_mode not in ("shortest_then_center_crop", "squash"):
            raise ValueError(f"image processor: resize_mode must be 'shortest_then_center_crop' or 'squash', got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"image processor: interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize_rounding not in ("round", "floor"):
            raise ValueError(f"image processor: resize_rounding must be 'round' or 'floor', got {self.resize_rounding!r}")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ValueError(f"image processor: {name} must be three finite numbers (R, G, B), got {list(values)}")
        if min(self.std) <= 0:  # a zero std turns every pixel into inf/NaN, and every embedding with it
            raise ValueError(f"image processor: std must be > 0 in every channel, got {list(self.std)}")


# ITU-R 601-2 luma, the weights of PIL's convert("L") (and of torchvision's rgb_to_grayscale)
_GREY_WEIGHTS = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)

# interpolation name -> PIL resampling filter (also how Hugging Face image processors store "resample")
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}


@dataclass(frozen=True)
class CropBox:
    """The part of the source image that was kept, as fractions of its width and height."""

    left: float
    top: float
    right: float
    bottom: float

    def point(self, x: float, y: float) -> tuple[float, float] | None:
        """Where a point given in source-image fractions lands in the crop, or None when it was cut off."""
        nx = (x - self.left) / (self.right - self.left)
        ny = (y - self.top) / (self.bottom - self.top)
        return (nx, ny) if 0.0 <= nx <= 1.0 and 0.0 <= ny <= 1.0 else None


@dataclass(frozen=True)
class ProcessedImage:
    pixels: torch.Tensor
    box: CropBox | None  # None: the whole image was kept (resized, not cropped)


class ImageProcessor:
    """PIL image -> normalised float tensor [3, size, size]; ``train=True`` adds the configured augmentation."""

    def __init__(
        self, config: ImageProcessorConfig | None = None, train: bool = False, seed: int | None = None, decoded: DecodedImageCache | None = None
    ) -> None:
        self.config = config or ImageProcessorConfig()
        self.train = train
        # The decoded-image cache travels with the processor: it is what every dataset is handed, and
        # what an image decodes to depends on it (JPEG draft size). Not part of the saved config.
        self.decoded = decoded
        self._rng = np.random.default_rng(seed)
        mean = torch.tensor(self.config.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.config.std, dtype=torch.float32).view(3, 1, 1)
        # (x / 255 - mean) / std as one multiply and one subtract over the image
        self._scale, self._shift = 1.0 / (255.0 * std), mean / std

    def draft_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The smallest size a ``width x height`` JPEG may be decoded at without losing output pixels
        (None: decode it whole). Scaling keeps both sides' ratio, so crop boxes in image fractions hold.

        Random resized crops may take as little as ``lo`` of the area at aspect 3/4, so training keeps
        that crop's shorter side at ``size`` pixels or more.
        """
        c = self.config
        if not c.jpeg_draft:
            return None
        if self.train and c.random_resized_crop is not None:
            factor = math.sqrt(c.random_resized_crop[0] * width * height * 3 / 4) / c.size
        else:
            factor = min(width, height) / c.size
        if factor < 2:  # PIL's smallest reduction halves the image
            return None
        return math.ceil(width / factor), math.ceil(height / factor)

    def _resize(self, img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, CropBox | None]:
        c, interp = self.config, INTERPOLATIONS[self.config.interpolation]
        if self.train and c.random_resized_crop is not None:
            return self._random_resized_crop(img, interp, rng)
        if c.resize_mode == "squash":
            return (img.resize((c.size, c.size), interp) if img.size != (c.size, c.size) else img), None
        w, h = img.size
        if (w, h) == (c.size, c.size):
            return img, None
        if c.resize_rounding == "floor":  # in integers, as Hugging Face computes it (no 447.99999 for 448)
            short = min(w, h)
            nw, nh = max(c.size, c.size * w // short), max(c.size, c.size * h // short)
        else:
            scale = c.size / min(w, h)
            nw, nh = max(c.size, round(w * scale)), max(c.size, round(h * scale))
        left, top = (nw - c.size) // 2, (nh - c.size) // 2
        box = CropBox(left / nw, top / nh, (left + c.size) / nw, (top + c.size) / nh)
        if nw * nh > _MAX_RESIZED_AREA * c.size * c.size:
            # a 100000 x 1 strip would be resized whole to 6.4M x 64 pixels (GBs, an OverflowError past
            # ~33M): resample only the crop's own box, the same sampling grid within a level of rounding
            sx, sy = nw / w, nh / h
            return img.resize((c.size, c.size), interp, box=(left / sx, top / sy, (left + c.size) / sx, (top + c.size) / sy)), box
        img = img.resize((nw, nh), interp)
        return img.crop((left, top, left + c.size, top + c.size)), box

    def _random_resized_crop(self, img: Image.Image, interp: int, rng: np.random.Generator) -> tuple[Image.Image, CropBox | None]:
        lo, hi = self.config.random_resized_crop  # type: ignore[misc]
        w, h = img.size
        for _ in range(10):
            area = w * h * rng.uniform(lo, hi)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                crop = img.resize((self.config.size, self.config.size), interp, box=(x, y, x + cw, y + ch))
                return crop, CropBox(x / w, y / h, (x + cw) / w, (y + ch) / h)
        return img.resize((self.config.size, self.config.size), interp), None

    def process(self, img: Image.Image, rng: np.random.Generator | None = None) -> ProcessedImage:
        """Pixels plus the crop that made them, so annotations in image fractions can follow the pixels.

        ``rng`` drives the augmentation; datasets pass one seeded by (epoch, index) so that a resumed run
        draws the very same crops and colour jitter. Without one the processor's own generator is used.
        """
        rng = rng if rng is not None else self._rng
        img = as_rgb(img)
        img, box = self._resize(img, rng)
        w, h = img.size
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(h, w, 3).permute(2, 0, 1)
        pixels = pixels.to(torch.float32, memory_format=torch.contiguous_format)
        if self.train and (self.config.brightness > 0 or self.config.contrast > 0):
            self._jitter(pixels, rng)
        return ProcessedImage(pixels.mul_(self._scale).sub_(self._shift), box)

    def _jitter(self, pixels: torch.Tensor, rng: np.random.Generator) -> None:
        """Brightness, then contrast, on 0-255 float pixels in place, each clipped to 0-255 as PIL's
        ``ImageEnhance`` and torchvision's ``ColorJitter`` do: brightness scales the pixels, contrast
        pulls them towards (or pushes them away from) the image's mean grey.

        On the float tensor the conversion makes anyway, these are a few passes over 12k values; PIL's
        two enhancers build two more images, and contrast a greyscale copy for its mean (55 of the
        ~135 us a 64 px world image took to process, measured)."""
        c = self.config
        if c.brightness > 0:
            pixels.mul_(1 + rng.uniform(-c.brightness, c.brightness)).clamp_(0.0, 255.0)  # brightness > 1 may draw a negative factor
        if c.contrast > 0:
            factor = 1 + rng.uniform(-c.contrast, c.contrast)
            grey = float(torch.dot(pixels.mean(dim=(1, 2)), _GREY_WEIGHTS))
            pixels.mul_(factor).add_(grey * (1 - factor)).clamp_(0.0, 255.0)

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        return self.process(img, rng).pixels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    @classmethod
    def from_dict(cls, d: dict[str, Any], train: bool = False) -> "ImageProcessor":
        d = dict(d)
        for key in ("mean", "std", "random_resized_crop"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(ImageProcessorConfig(**d), train=train)


# ----- cross-modal augmentation ---------------------------------------------------------------------

_SWAPS = {"left": "right", "right": "left", "leftmost": "rightmost", "rightmost": "leftmost"}
_SWAP_RE = re.compile(r"\b(" + "|".join(sorted(_SWAPS, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """'a cube left of a ball' -> 'a cube right of a ball', keeping the case of each word."""

    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        out = _SWAPS[word.lower()]
        return out.upper() if word.isupper() else out.capitalize() if word[0].isupper() else out

    return _SWAP_RE.sub(repl, text)


@dataclass
class FlipResult:
    image: Image.Image
    text: str | None
    answers: tuple[str, ...] = field(default_factory=tuple)


def consistent_hflip(image: Image.Image, text: str | None, answers: Sequence[str] = ()) -> FlipResult:
    """Mirror the image and swap 'left'/'right' in the text and answers, so the pair stays true.

    A plain horizontal flip silently turns "the cube left of the ball" into a false caption; flipping
    both sides together keeps it an augmentation instead of label noise.
    """
    return FlipResult(
        image=image.transpose(Image.FLIP_LEFT_RIGHT),
        text=swap_left_right(text) if text is not None else None,
        answers=tuple(swap_left_right(a) for a in answers),
    )
