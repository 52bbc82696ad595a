from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from polymodal.data.processors import ImageProcessor, ImageProcessorConfig, consistent_hflip, swap_left_right


def _gradient_image(w: int, h: int) -> Image.Image:
    x = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    return Image.fromarray(np.stack([x, np.zeros_like(x), 255 - x], axis=-1))


def test_eval_transform_shape_and_normalisation() -> None:
    cfg = ImageProcessorConfig(size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = ImageProcessor(cfg)(Image.new("RGB", (100, 60), (255, 0, 128)))
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[0], torch.ones(32, 32)) and torch.allclose(out[1], -torch.ones(32, 32))
    assert torch.allclose(out[2], torch.full((32, 32), 128 / 255 * 2 - 1), atol=1e-6)


def test_center_crop_keeps_the_middle_of_a_wide_image() -> None:
    img = Image.new("RGB", (400, 100), (0, 0, 0))
    img.paste((255, 255, 255), (100, 0, 300, 100))  # white middle half; the crop keeps its centre
    out = ImageProcessor(ImageProcessorConfig(size=16, mean=(0, 0, 0), std=(1, 1, 1)))(img)
    assert out.min() > 0.95  # only the white middle survives the crop


def test_train_augmentation_varies_and_is_seeded() -> None:
    cfg = ImageProcessorConfig(size=24, random_resized_crop=(0.5, 1.0), brightness=0.3)
    img = _gradient_image(64, 64)
    a = [ImageProcessor(cfg, train=True, seed=1)(img) for _ in range(2)]
    p = ImageProcessor(cfg, train=True, seed=1)
    b = [p(img), p(img)]
    assert torch.equal(a[0], b[0])  # same seed, same first draw
    assert not torch.equal(b[0], b[1])  # successive draws differ
    assert not torch.equal(ImageProcessor(cfg)(img), b[0])  # eval mode is untouched by augmentation


def test_processor_config_round_trips() -> None:
    cfg = ImageProcessorConfig(size=48, random_resized_crop=(0.8, 1.0))
    again = ImageProcessor.from_dict(ImageProcessor(cfg).to_dict())
    assert again.config == cfg


def test_bad_processor_settings_name_the_option() -> None:
    with pytest.raises(ValueError, match="resize_mode"):
        ImageProcessorConfig(resize_mode="stretch")
    with pytest.raises(ValueError, match="size"):
        ImageProcessorConfig(size=2)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a cube left of a ball", "a cube right of a ball"),
        ("Left of the cone is the rightmost sphere", "Right of the cone is the leftmost sphere"),
        ("LEFT and right", "RIGHT and left"),
        ("the leftover cube is bright", "the leftover cube is bright"),  # whole words only
    ],
)
def test_swap_left_right(text: str, expected: str) -> None:
    assert swap_left_right(text) == expected


def test_flip_mirrors_image_and_keeps_text_true() -> None:
    img = Image.new("RGB", (8, 4), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))
    out = consistent_hflip(img, "the red dot is left of the rest", ("left", "yes"))
    assert out.image.getpixel((7, 0)) == (255, 0, 0) and out.image.getpixel((0, 0)) == (0, 0, 0)
    assert out.text == "the red dot is right of the rest"
    assert out.answers == ("right", "yes")
    # flipping twice restores everything
    back = consistent_hflip(out.image, out.text, out.answers)
    assert back.text == "the red dot is left of the rest" and back.answers == ("left", "yes")
    assert np.array_equal(np.asarray(back.image), np.asarray(img))


def test_crop_box_reports_what_the_crop_kept() -> None:
    cfg = ImageProcessorConfig(size=16, random_resized_crop=(0.3, 0.5))
    img = _gradient_image(64, 64)
    out = ImageProcessor(cfg, train=True).process(img, np.random.default_rng(3))
    box = out.box
    assert box is not None and 0 <= box.left < box.right <= 1 and 0 <= box.top < box.bottom <= 1
    assert (box.right - box.left) * (box.bottom - box.top) < 0.6  # the area range, give or take the aspect ratio
    cx, cy = (box.left + box.right) / 2, (box.top + box.bottom) / 2
    assert box.point(cx, cy) == pytest.approx((0.5, 0.5))
    assert box.point(box.left - 0.01, cy) is None  # cut off
    centre = ImageProcessor(ImageProcessorConfig(size=16)).process(Image.new("RGB", (64, 32)))
    assert (centre.box.left, centre.box.right, centre.box.top, centre.box.bottom) == (0.25, 0.75, 0.0, 1.0)


def test_augmentation_follows_the_generator_it_is_given() -> None:
    """Datasets hand in a generator seeded by (epoch, index): the same draw on a resumed run."""
    cfg = ImageProcessorConfig(size=24, random_resized_crop=(0.5, 1.0), brightness=0.3, contrast=0.3)
    img = _gradient_image(64, 64)
    p = ImageProcessor(cfg, train=True, seed=0)
    first = p(img, np.random.default_rng([7, 3]))
    p(img)  # the processor's own generator moves on ...
    assert torch.equal(p(img, np.random.default_rng([7, 3])), first)  # ... a given one does not care
    assert not torch.equal(p(img, np.random.default_rng([8, 3])), first)


def _photo_jpeg(path, w: int = 640, h: int = 480) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    noise = rng.normal(0, 8, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)  # smooth-ish texture
    Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)


def test_jpeg_draft_decodes_smaller_and_gives_nearly_the_same_pixels(tmp_path) -> None:
    from polymodal.data.images import open_image

    path = tmp_path / "photo.jpg"
    _photo_jpeg(path)
    full_cfg = ImageProcessorConfig(size=64, mean=(0, 0, 0), std=(1, 1, 1))
    fast = ImageProcessor(ImageProcessorConfig(size=64, mean=(0, 0, 0), std=(1, 1, 1), jpeg_draft=True))
    assert ImageProcessor(full_cfg).draft_size(640, 480) is None  # off unless asked for
    assert fast.draft_size(640, 480) == (86, 64)  # PIL then picks 1/4: 160 x 120, still >= 64 on the short side
    drafted = open_image(path, draft=fast.draft_size)
    assert drafted.size == (160, 120)
    whole = open_image(path)
    assert whole.size == (640, 480)
    diff = (fast(drafted) - ImageProcessor(full_cfg)(whole)).abs()
    assert diff.mean() < 2 / 255 and diff.max() < 24 / 255
    # PNGs and images that are small already are decoded whole
    whole.save(tmp_path / "photo.png")
    assert open_image(tmp_path / "photo.png", draft=fast.draft_size).size == (640, 480)
    assert fast.draft_size(100, 90) is None


def test_jpeg_draft_leaves_random_crops_enough_pixels() -> None:
    cfg = ImageProcessorConfig(size=64, random_resized_crop=(0.5, 1.0), jpeg_draft=True)
    train = ImageProcessor(cfg, train=True)
    w, h = train.draft_size(640, 480)  # type: ignore[misc]
    # the smallest crop (half the area at aspect 3/4) of the drafted image still spans >= 64 px
    assert (0.5 * w * h * 3 / 4) ** 0.5 >= 64
    assert ImageProcessor.from_dict(train.to_dict()).config.jpeg_draft is True


def test_the_run_config_switches_jpeg_draft_on_for_training_and_evaluation() -> None:
    from polymodal.config import ImageSettings
    from polymodal.train.data import image_processor

    settings = ImageSettings(jpeg_draft=True)
    assert image_processor(settings, train=True).config.jpeg_draft and image_processor(settings, train=False).config.jpeg_draft
    assert not image_processor(ImageSettings(), train=True).config.jpeg_draft


class _Draws:
    """A stand-in generator whose ``uniform`` returns chosen values, in order (brightness, then contrast)."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def uniform(self, lo: float, hi: float) -> float:
        value = self.values.pop(0)
        assert lo <= value <= hi
        return value


@pytest.mark.parametrize(
    "brightness, contrast, amount", [(0.3, -0.3, 0.3), (-0.3, 0.3, 0.3), (0.25, 0.0, 0.3), (0.0, -0.25, 0.3), (-1.4, 0.0, 1.5)]
)
def test_colour_jitter_matches_pil_image_enhance(brightness, contrast, amount) -> None:
    """Brightness then contrast, each clipped to 0-255, as PIL's ImageEnhance does them; PIL rounds to
    whole levels after each step and polymodal does not, so they agree to within two levels. A
    brightness range over 1 can draw a negative factor: clipped to black, as PIL does."""
    from PIL import ImageEnhance

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    pixels[:4] = 255  # saturated rows: brightening must clip them before contrast reads them
    pixels[4:6] = 0
    img = Image.fromarray(pixels)
    cfg = ImageProcessorConfig(size=16, mean=(0, 0, 0), std=(1, 1, 1), brightness=amount, contrast=amount)
    ours = ImageProcessor(cfg, train=True)(img, _Draws(brightness, contrast)) * 255
    expected = ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1 + brightness)).enhance(1 + contrast)
    expected_t = torch.from_numpy(np.asarray(expected, dtype=np.float32)).permute(2, 0, 1)
    assert (ours - expected_t).abs().max() <= 2.0
    assert ours.min() >= 0 and ours.max() <= 255.0 + 1e-3
    if brightness > 0 and contrast < 0:  # the clipped white rows come out exactly where PIL puts them
        assert (ours[:, :4] - expected_t[:, :4]).abs().max() <= 1.0


@pytest.mark.parametrize("width", [100_000, 40_000_000])
def test_a_thin_strip_is_resampled_at_its_crop_not_whole(width: int) -> None:
    """A 100000 x 1 strip was resized whole to 6.4M x 64 pixels (2 GB); 40M x 1 raised an OverflowError."""
    strip = Image.new("RGB", (width, 1), (200, 30, 30))
    px = ImageProcessor(ImageProcessorConfig(size=64)).process(strip).pixels
    assert px.shape == (3, 64, 64) and torch.isfinite(px).all()
    assert torch.allclose(px, px[:, :1, :1].expand_as(px))  # one colour in, one colour out


def test_ordinary_aspect_ratios_keep_resize_then_crop_exactly() -> None:
    """The crop-box shortcut is only for extreme strips: up to 16x the output area the pixels are
    exactly those of resizing the whole image and cropping its centre (as Hugging Face does)."""
    rng = np.random.default_rng(0)
    for w, h in [(640, 480), (333, 97), (256, 64)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        scale = 64 / min(w, h)
        nw, nh = max(64, round(w * scale)), max(64, round(h * scale))
        left, top = (nw - 64) // 2, (nh - 64) // 2
        expected = np.asarray(img.resize((nw, nh), Image.BICUBIC).crop((left, top, left + 64, top + 64)))
        proc = ImageProcessor(ImageProcessorConfig(size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
        got = (proc.process(img).pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        assert np.array_equal(got, expected), (w, h)


@pytest.mark.parametrize("kwargs, message", [
    ({"std": (0.0, 0.5, 0.5)}, "std must be > 0"),
    ({"std": (0.5, 0.5)}, "std must be three finite numbers"),
    ({"mean": (float("nan"), 0.0, 0.0)}, "mean must be three finite numbers"),
])
def test_normalisation_that_would_make_nan_pixels_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImageProcessorConfig(**kwargs)


def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white() -> None:
    from polymodal.data.images import as_rgb

    grey = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    for mode_image in (Image.fromarray(grey.astype(np.uint16) * 257), Image.fromarray(grey.astype(np.int32) * 257)):
        assert mode_image.mode in ("I;16", "I")
        rgb = np.asarray(as_rgb(mode_image))
        assert rgb.shape == (16, 16, 3) and np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 2], grey)
    unit = np.asarray(as_rgb(Image.fromarray(grey.astype(np.float32) / 255)))  # F in [0, 1]
    assert np.array_equal(unit[..., 1], grey)
