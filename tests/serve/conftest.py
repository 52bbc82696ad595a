"""Tiny models for the server tests: a multi-task run (caption / answer / classify / match) and a
retrieval run (embed / zero-shot / search) with an index over the tiny world's test images.

Reuses the suite's tiny runs when tests/test_api.py trained them already in this process; otherwise
trains just these two (3 steps each). FastAPI, httpx and FAISS are the ``serve`` extra: skipped without.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("faiss")


@dataclass
class Served:
    world: Path
    multitask: tuple[Any, Any]  # (model, processors)
    retrieval: tuple[Any, Any]
    index: Any  # SearchIndex over world/images/test, built with the retrieval model

    @property
    def images(self) -> list[Path]:
        return sorted((self.world / "images/test").iterdir())


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    from polymodal.api import load_model
    from polymodal.index import SearchIndex
    from tests import test_api

    cached = test_api._CACHE.get("runs")
    if cached is not None:
        world, runs = cached.world, cached.runs
    else:
        from polymodal.data.world import WorldConfig, generate_world

        root = tmp_path_factory.mktemp("serve_models")
        world = root / "world"
        generate_world(world, WorldConfig(num_scenes=60, seed=2, image_size=32), workers=1)
        runs = {task: test_api._train(root, world, task)[0] for task in ("multitask", "retrieval")}
    retrieval = load_model(runs["retrieval"])
    index = SearchIndex.create(tmp_path_factory.mktemp("serve_index") / "idx", retrieval, root=world / "images/test")
    index.add_images(world / "images/test", progress=False)
    index.add_texts(["a red cube", "two blue spheres", "a green cylinder"], progress=False)
    yield Served(world, load_model(runs["multitask"]), retrieval, index)
    index.close()
