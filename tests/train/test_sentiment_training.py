"""Tri-modal sentiment regression end to end: a CMU-MOSI-layout pickle -> features batches -> a MulT /
late-fusion classifier -> the MOSI metrics, and the checkpoint evaluates the same way."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from polymodal.config import load_config
from polymodal.train.trainer import Trainer

DIMS = {"text": 6, "audio": 4, "video": 3}


def _split(rng: np.random.Generator, n: int) -> dict:
    """MultiBench layout (left-padded sequences, labels [N, 1, 1]) whose score lives in audio and video."""
    steps = 6
    feats = {m: rng.normal(size=(n, steps, d)).astype(np.float32) for m, d in DIMS.items()}
    lengths = rng.integers(2, steps + 1, size=n)
    for i, length in enumerate(lengths):
        for values in feats.values():
            values[i, : steps - length] = 0.0
    real = [slice(steps - length, steps) for length in lengths]
    score = np.array([feats["audio"][i, r, 0].mean() + feats["video"][i, r, 1].mean() for i, r in enumerate(real)])
    labels = np.clip(2.5 * np.tanh(score), -3, 3).astype(np.float32)
    return {"text": feats["text"], "audio": feats["audio"], "vision": feats["video"], "labels": labels[:, None, None], "id": np.arange(n)}


@pytest.fixture(scope="module")
def pickle_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("mosi") / "mosi_raw.pkl"
    path.write_bytes(pickle.dumps({"train": _split(rng, 256), "valid": _split(rng, 32), "test": _split(rng, 64)}))
    return path


def _encoders() -> dict:
    return {m: {"name": "features", "input_dim": d, "width": 32, "depth": 1, "heads": 2, "modality": m} for m, d in DIMS.items()}


@pytest.mark.parametrize(
    "model",
    [
        {"stage": "late", "fusion": "concat"},
        {"stage": "early", "early_fusion": "mult", "early_options": {"num_heads": 2, "num_layers": 1}},
    ],
    ids=["late", "mult"],
)
def test_mosi_pickle_trains_a_regressor_and_reports_the_mosi_metrics(tmp_path: Path, pickle_path: Path, model: dict) -> None:
    from polymodal.evaluate import evaluate_checkpoint

    data = {split: {"format": "mosi", "path": str(pickle_path), "split": split} for split in ("train", "val", "test")}
    cfg = {
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": data,
        "model": {"type": "classifier", "encoders": _encoders(), "fusion_dim": 32} | model,
        "optim": {"lr": 3e-3, "warmup_steps": 5},
        "train": {"task": "regression", "epochs": 6, "batch_size": 32, "num_workers": 0, "checkpoint_every": 1000},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    summary = Trainer(load_config(tmp_path / "run.yaml"), progress=False).fit()
    test = summary["test"]
    assert {"acc2", "acc2_has0", "f1", "acc7", "mae", "corr"} <= set(test)
    truth = np.asarray(pickle.loads(pickle_path.read_bytes())["test"]["labels"]).ravel()
    constant_mae = float(np.abs(truth - np.median(truth)).mean())
    assert test["mae"] < 0.8 * constant_mae and test["corr"] > 0.5 and test["acc2"] > 0.7
    spec = tmp_path / "data.yaml"
    spec.write_text(yaml.safe_dump({"data": data}))
    again = evaluate_checkpoint(tmp_path / "run", spec, splits=["test"], report=False)["metrics"]["test"]
    assert again["mae"] == pytest.approx(test["mae"], abs=1e-4)
