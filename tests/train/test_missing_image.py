"""A sample without an image, for a model that reads images, follows ``missing_modality`` as a missing
sound or clip does: skipped and counted, or zero-filled and flagged absent. Before, one such row in a
batch took the images away from the whole batch, and the classifier stopped with a traceback."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from polymodal.config import load_config
from polymodal.data.dataset import Collator, SampleDataset
from polymodal.data.processors import ImageProcessor, ImageProcessorConfig
from polymodal.data.sample import Sample
from polymodal.errors import ConfigError, DataError
from polymodal.train.trainer import Trainer

TEXT = {"name": "text_transformer", "max_length": 16, "width": 32, "depth": 1, "heads": 2, "causal": False}
IMAGE = {"name": "cnn", "image_size": 32, "channels": [8, 16], "width": 32}


def _rows(root: Path) -> list[dict]:
    rows = []
    for i in range(12):
        colour = (200, 0, 0) if i % 2 else (0, 0, 200)
        Image.new("RGB", (32, 32), colour).save(root / f"{i}.png")
        rows.append({"id": i, "image": f"{i}.png", "text": "what colour", "label": "red" if i % 2 else "blue"})
    rows += [{"id": f"t{i}", "text": "a text-only row", "label": "red"} for i in range(3)]  # no image at all
    return rows


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(root)))
    return root


def _config(tmp: Path, data: Path, missing: str, encoders: dict | None = None, image_field: str = "image") -> Path:
    source = {"format": "jsonl", "root": str(data), "path": str(data / "train.jsonl"), "id_field": "id", "image_field": image_field}
    cfg = {
        "seed": 0,
        "output_dir": str(tmp / f"run_{missing}"),
        "data": {"train": source, "test": source},
        "model": {"type": "classifier", "encoders": encoders or {"image": IMAGE, "text": TEXT}, "stage": "late", "fusion": "concat", "fusion_dim": 32},
        "tokenizer": {"vocab_size": 50, "max_length": 16},
        "image": {"size": 32},
        "missing_modality": missing,
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"task": "classification", "epochs": 1, "batch_size": 16, "eval_batch_size": 16, "num_workers": 0, "checkpoint_every": 1000},
    }
    path = tmp / f"run_{missing}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _samples() -> list[Sample]:
    return [Sample("a", image_path=None, text="no image", label="x"), Sample("b", image_path=None, text="none here either", label="y")]


def _processor() -> ImageProcessor:
    return ImageProcessor(ImageProcessorConfig(size=32), train=False)


def _batch(samples: list[Sample], missing: str | None, tmp_path: Path) -> dict:
    Image.new("RGB", (40, 40), (10, 200, 30)).save(tmp_path / "real.png")
    with_image = Sample("c", image_path=tmp_path / "real.png", text="a green square", label="x")
    items = samples + [with_image]
    dataset = SampleDataset(items, _processor(), missing_image=missing)
    return Collator(None, 16)([dataset[i] for i in range(len(items))])


def test_skip_drops_the_samples_without_an_image_and_counts_them(tmp_path: Path) -> None:
    batch = _batch(_samples(), "skip", tmp_path)
    assert batch["num_skipped"] == 2
    assert [s.sample_id for s in batch["samples"]] == ["c"]
    assert batch["image"].shape == (1, 3, 32, 32)


@pytest.mark.parametrize("missing", ["zero", "learned"])
def test_zero_and_learned_fill_the_image_with_zeros_flagged_absent(tmp_path: Path, missing: str) -> None:
    batch = _batch(_samples(), missing, tmp_path)
    assert batch["num_skipped"] == 0
    assert batch["image"].shape == (3, 3, 32, 32)
    assert batch["image_present"].tolist() == [False, False, True]
    assert batch["num_missing"] == {"image": 2}
    assert torch.count_nonzero(batch["image"][:2]) == 0
    assert torch.count_nonzero(batch["image"][2]) > 0


def test_without_a_policy_a_mixed_batch_is_left_as_it_was(tmp_path: Path) -> None:
    """A model that reads no image (a text classifier) has no policy: nothing is skipped or filled."""
    batch = _batch(_samples(), None, tmp_path)
    assert batch["num_skipped"] == 0 and "image" not in batch and "image_present" not in batch


def test_an_unknown_policy_is_named() -> None:
    with pytest.raises(ConfigError, match="missing_modality must be one of"):
        SampleDataset(_samples(), _processor(), missing_image="drop")


@pytest.mark.parametrize("missing", ["skip", "zero"])
def test_an_image_text_classifier_trains_on_rows_without_images_and_evaluates_as_it_trained(
    tmp_path: Path, data: Path, missing: str, caplog: pytest.LogCaptureFixture
) -> None:
    from polymodal.evaluate import evaluate_checkpoint

    with caplog.at_level(logging.WARNING):
        trainer = Trainer(load_config(_config(tmp_path, data, missing)), progress=False)
        trainer.fit()
    assert "3 of 15 samples have no image" in caplog.text
    if missing == "skip":
        assert "has no image, and the model reads one: skipped" in caplog.text
        assert "3 samples skipped" in caplog.text
    else:
        assert "inputs missing and filled (missing_modality: zero): {'image': 3}" in caplog.text
    saved = json.loads(next(trainer.run_dir.glob("checkpoints/step_*/processors.json")).read_text())
    assert saved["missing_image"] == missing
    # evaluation reads the policy from the checkpoint: the same rows are skipped, or filled, as in training
    result = evaluate_checkpoint(trainer.run_dir, _config(tmp_path, data, missing), splits=["test"], report=False)
    assert result["splits"]["test"]["dropped"] == ({"skipped": 3} if missing == "skip" else {"filled/image": 3})


def test_a_source_whose_rows_all_lack_an_image_is_named(tmp_path: Path, data: Path) -> None:
    """Rows whose images sit under another key: every row reads as text-only, and the run would train on nothing."""
    rows = [{"id": i, "picture": f"{i}.png", "text": "what colour", "label": "red" if i % 2 else "blue"} for i in range(4)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = _config(tmp_path, data, "skip")
    cfg = yaml.safe_load(path.read_text())
    for split in cfg["data"].values():
        split.pop("image_field", None)  # the default, 'image': not named explicitly, so the reader does not check it
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(DataError, match=r"data.train: none of the 4 samples has an image.*image_field"):
        Trainer(load_config(path), progress=False).fit()
    # named explicitly, the reader itself says the key appears in no row
    with pytest.raises(DataError, match=r"image_field 'img' appears in no row .* \(keys seen: id, label, picture, text\)"):
        Trainer(load_config(_config(tmp_path, data, "skip", image_field="img")), progress=False).fit()


def test_a_text_only_classifier_keeps_every_row(tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(load_config(_config(tmp_path, data, "skip", encoders={"text": TEXT})), progress=False)
        trainer.fit()
    assert "samples skipped" not in caplog.text and "have no image" not in caplog.text
    assert "missing_image" not in json.loads(next(trainer.run_dir.glob("checkpoints/step_*/processors.json")).read_text())
