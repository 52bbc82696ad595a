"""A tiny trained assistant (mllm) checkpoint for the chat tests, built once per test session.

Why a shared module: the library tests (tests/test_chat.py) and the server tests (tests/serve/) both need
an assistant; building one takes a few seconds (a 30-scene world, a random-weight tiny LM, 2 training
steps), so it is cached per process. Import the fixture into a test module (or a conftest) to use it
as ``assistant``:

    from tests.mllm_fixtures import Assistant, assistant_fixture  # noqa: F401 - registers the fixture
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

__all__ = ["Assistant", "assistant_fixture", "build_assistant"]


@dataclass
class Assistant:
    run: Path  # the run folder, for load_model / the CLI
    world: Path
    model: Any
    processors: Any

    @property
    def images(self) -> list[Path]:
        return sorted((self.world / "images/test").iterdir())


_CACHE: dict[str, Assistant] = {}


def build_assistant(root: Path) -> Assistant:
    """World (30 scenes) -> tiny LM (random weights) -> 2 training steps of the mllm task -> load_model."""
    from polymodal.api import load_model
    from polymodal.config import load_config
    from polymodal.data.world import WorldConfig, generate_world
    from polymodal.models.tiny_lm import build_tiny_lm, world_corpus
    from polymodal.train.trainer import Trainer

    world = root / "world"
    generate_world(world, WorldConfig(num_scenes=30, seed=3, image_size=32), workers=1)
    lm, _ = build_tiny_lm(world_corpus(world), root / "lm", width=32, depth=1, heads=2, context=256, vocab_size=300, steps=0, progress=False)
    source = {"format": "coco_captions"}
    cfg = {
        "seed": 0,
        "output_dir": str(root / "run"),
        "data": {split: {**source, "annotations": str(world / f"annotations/captions_{split}.json"), "images": str(world / f"images/{split}")}
                 for split in ("train", "val")},
        "model": {"type": "mllm", "vision": {"name": "cnn", "image_size": 32, "channels": [8, 16], "width": 32},
                  "lm": str(lm), "connector": {"kind": "mlp"}, "freeze": ["vision", "lm"]},
        "image": {"size": 32},
        "optim": {"lr": 1.0e-3, "warmup_steps": 1},
        "train": {"task": "mllm", "epochs": 1, "max_steps": 2, "batch_size": 8, "num_workers": 0, "checkpoint_every": 100,
                  "max_eval_samples": 4, "device": "cpu"},
    }
    path = root / "assistant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    Trainer(load_config(path), progress=False).fit()
    model, processors = load_model(root / "run")
    return Assistant(root / "run", world, model, processors)


@pytest.fixture(scope="session", name="assistant")
def assistant_fixture(tmp_path_factory: pytest.TempPathFactory) -> Assistant:
    if "assistant" not in _CACHE:
        _CACHE["assistant"] = build_assistant(tmp_path_factory.mktemp("assistant"))
    return _CACHE["assistant"]
