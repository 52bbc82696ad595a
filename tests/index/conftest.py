"""Tiny models and a tiny world for the index tests: one retrieval run (3 steps), and a second one trained
with another seed, so its weights differ (the "different model" an index must refuse).

FAISS is an optional dependency (the ``serve`` extra): each test module skips itself without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


@dataclass
class Tiny:
    world: Path
    run: Path  # the index's model
    other: Path  # another retrieval run (different seed, so different weights)

    @property
    def test_images(self) -> list[Path]:
        return sorted((self.world / "images/test").iterdir())


def _train_retrieval(root: Path, world: Path, seed: int) -> Path:
    from polymodal.config import load_config
    from polymodal.train.trainer import Trainer
    from tests.test_api import MODELS, _source

    _, model = MODELS["retrieval"]
    cfg = {
        "seed": seed,
        "output_dir": str(root / f"retrieval_seed{seed}"),
        "data": {split: _source(world, "captions", split) for split in ("train", "val", "test")},
        "model": model,
        "tokenizer": {"vocab_size": 200, "max_length": 32},
        "image": {"size": 32},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"task": "retrieval", "epochs": 1, "max_steps": 3, "batch_size": 16, "eval_batch_size": 64,
                  "num_workers": 0, "log_every": 1, "checkpoint_every": 1000, "device": "cpu"},
    }
    path = root / f"retrieval_seed{seed}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    Trainer(load_config(path), progress=False).fit()
    return root / f"retrieval_seed{seed}"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    """Reuses the suite's tiny runs when test_api trained them already in this process; else trains only what is needed."""
    from tests import test_api

    root = tmp_path_factory.mktemp("index_models")
    cached = test_api._CACHE.get("runs")
    if cached is not None:
        world, run = cached.world, cached.runs["retrieval"]
    else:
        from polymodal.data.world import WorldConfig, generate_world

        world = root / "world"
        generate_world(world, WorldConfig(num_scenes=60, seed=2, image_size=32), workers=1)
        run = _train_retrieval(root, world, seed=1)
    return Tiny(world, run, _train_retrieval(root, world, seed=7))


def spy_on_vector_search(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record the effort keywords (nprobe / ef_search) of every VectorIndex.search call, which still runs."""
    from polymodal.index import vectors as V

    seen: list[dict] = []
    real = V.VectorIndex.search

    def spy(self, queries, k, **effort):
        seen.append(effort)
        return real(self, queries, k, **effort)

    monkeypatch.setattr(V.VectorIndex, "search", spy)
    return seen
