from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from polymodal.data.dataset import Collator, SampleDataset, StreamingSampleDataset
from polymodal.data.images import open_image
from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.sample import Sample
from polymodal.data.tokenizers import train_tokenizer
from polymodal.errors import DataError


@pytest.fixture()
def images(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(good)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    text = tmp_path / "text.jpg"
    text.write_text("this is not an image")
    return {"good": good, "truncated": truncated, "text": text, "missing": tmp_path / "missing.png"}


@pytest.mark.parametrize("kind, message", [("truncated", "corrupt image"), ("text", "not a readable image"), ("missing", "not found")])
def test_open_image_errors_name_the_file(images: dict[str, Path], kind: str, message: str) -> None:
    with pytest.raises(DataError, match=message) as err:
        open_image(images[kind])
    assert str(images[kind]) in str(err.value)
    if kind != "missing":  # from bytes (an upload, a shard member): named as given, and no stream object in the text
        with pytest.raises(DataError, match=message) as err:
            open_image(images[kind].read_bytes(), name="upload.png")
        assert "upload.png" in str(err.value) and "_io." not in str(err.value)
    if kind == "text":
        assert "starts with b'this is '" in str(err.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("1", (12000, 12000)).save(big)  # 144 megapixels, tiny on disk
    with pytest.raises(DataError, match="more pixels than the limit"):
        open_image(big)


def test_corrupt_samples_are_skipped_and_counted(images: dict[str, Path]) -> None:
    samples = [
        Sample("0", origin="f:0", image_path=images["good"], text="a green square", label=1),
        Sample("1", origin="f:1", image_path=images["truncated"], text="broken", label=0),
        Sample("2", origin="f:2", image_path=images["missing"], text="gone", label=0),
        Sample("3", origin="f:3", image_path=images["good"], text="left of it", label=1),
    ]
    tok = train_tokenizer(["a green square", "left of it", "right"], vocab_size=60)
    ds = SampleDataset(samples, ImageProcessor(ImageProcessorConfig(size=16)))
    loader = DataLoader(ds, batch_size=4, collate_fn=Collator(tok, max_length=8), num_workers=1)
    (batch,) = list(loader)
    assert batch["num_skipped"] == 2
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["text_ids"].shape[0] == 2 and batch["label"].tolist() == [1, 1]
    assert [s.sample_id for s in batch["samples"]] == ["0", "3"]


def test_flip_augmentation_in_the_dataset_swaps_text(images: dict[str, Path]) -> None:
    s = Sample("0", image_path=images["good"], text="the cube is left of the ball", answers=("left",))
    ds = SampleDataset([s], ImageProcessor(ImageProcessorConfig(size=8)), flip_prob=1.0)
    item = ds[0]
    assert item.text == "the cube is right of the ball" and item.answers == ("right",)


def test_streaming_dataset_splits_work_across_workers(images: dict[str, Path]) -> None:
    data = Image.open(images["good"])
    buf = io.BytesIO()
    data.save(buf, format="PNG")
    samples = [Sample(str(i), image_bytes=buf.getvalue(), text=f"item {i}", label=i) for i in range(10)]
    ds = StreamingSampleDataset(lambda: iter(samples), ImageProcessor(ImageProcessorConfig(size=8)))
    loader = DataLoader(ds, batch_size=3, collate_fn=Collator(None), num_workers=2)
    seen = sorted(int(s.sample_id) for b in loader for s in b["samples"])
    assert seen == list(range(10))  # every sample exactly once, none duplicated across workers
    assert all(isinstance(b["image"], torch.Tensor) for b in loader)


def test_augmented_items_are_the_same_when_drawn_again(images: dict[str, Path]) -> None:
    """What a resumed run relies on: item i of epoch e has the same crop and jitter however often it is drawn."""
    s = Sample("0", image_path=images["good"], text="a green square")
    proc = ImageProcessor(ImageProcessorConfig(size=8, random_resized_crop=(0.3, 1.0), brightness=0.4), train=True, seed=0)
    ds = SampleDataset([s], proc, seed=11)
    first = ds[0].image
    assert torch.equal(ds[0].image, first)
    assert not torch.equal(SampleDataset([s], proc, seed=12)[0].image, first)


def test_evaluation_loads_build_no_generator_and_training_loads_do(images: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-(seed, index) generator is what makes augmentation resumable, and building one is a large part
    of a small image's load; an evaluation load draws nothing, so it must not build one."""
    from polymodal.data import dataset

    s = Sample("0", image_path=images["good"], text="a green square left of a cube")
    plain = ImageProcessor(ImageProcessorConfig(size=8), train=False)
    jitter = ImageProcessor(ImageProcessorConfig(size=8, brightness=0.4), train=True)
    built: list[object] = []
    real = dataset.np.random.default_rng
    monkeypatch.setattr(dataset.np.random, "default_rng", lambda *a, **k: built.append(a) or real(*a, **k))
    first = SampleDataset([s], plain)[0]
    assert built == [] and first.image.shape == (3, 8, 8) and first.text == s.text
    SampleDataset([s], plain, flip_prob=0.5, seed=3)[0]  # a flip is a draw
    SampleDataset([s], jitter, seed=3)[0]  # so is jitter
    assert built == [([3, 0],), ([3, 0],)]


def test_decoded_image_cache_reads_each_file_once_and_stays_within_its_budget(tmp_path: Path, caplog) -> None:
    from polymodal.data.dataset import open_or_skip
    from polymodal.data.images import DecodedImageCache

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (16, 16), (i, 2 * i, 3 * i)).save(paths[-1])
    cache = DecodedImageCache(max_bytes=2 * 16 * 16 * 4)  # room for two 16 x 16 RGB images
    proc = ImageProcessor(ImageProcessorConfig(size=16), train=True, decoded=cache)
    samples = [Sample(str(i), image_path=p) for i, p in enumerate(paths)]
    with caplog.at_level("INFO"):
        first = [open_or_skip(s, proc) for s in samples]
        paths[0].unlink()  # a cached image is not read again
        paths[2].unlink()  # one that did not fit is
        again = [open_or_skip(s, proc) for s in samples]
    assert again[0] is first[0] and again[1] is first[1]
    assert again[2] is None  # read again, and now missing: skipped with the usual warning
    assert (cache.hits, cache.used) == (2, 2 * 16 * 16 * 4)
    assert sum("decoded-image cache full" in r.message for r in caplog.records) == 1
    assert first[0].getpixel((0, 0)) == (0, 0, 0) and first[2].getpixel((0, 0)) == (2, 4, 6)


def test_training_batches_are_the_same_with_the_decoded_image_cache(tmp_path: Path) -> None:
    """Cached images feed the same augmentation: every pixel of two epochs' batches is unchanged."""
    from polymodal.config import ImageSettings
    from polymodal.train.data import image_processor

    samples = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.effect_noise((24, 20), 40 + i).convert("RGB").save(path)
        samples.append(Sample(str(i), image_path=path, text=f"image {i} left", label=i % 2))
    tok = train_tokenizer([s.text for s in samples], vocab_size=60)
    settings = {"size": 16, "random_resized_crop": (0.5, 1.0), "brightness": 0.2, "contrast": 0.2}

    def two_epochs(cache_mb: int) -> tuple[list[torch.Tensor], ImageProcessor]:
        proc = image_processor(ImageSettings(**settings, cache_mb=cache_mb), train=True)
        out = []
        for epoch in range(2):
            ds = SampleDataset(samples, proc, flip_prob=0.5, seed=epoch)
            out += [b["image"] for b in DataLoader(ds, batch_size=3, collate_fn=Collator(tok, max_length=8))]
        return out, proc

    plain, plain_proc = two_epochs(0)
    cached, cached_proc = two_epochs(1)
    assert plain_proc.decoded is None and cached_proc.decoded.hits == 6  # the second epoch read nothing
    assert all(torch.equal(a, b) for a, b in zip(plain, cached, strict=True))
    assert image_processor(ImageSettings(**settings, cache_mb=1), train=False).decoded is None  # training only
