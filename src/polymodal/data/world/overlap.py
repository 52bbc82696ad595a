"""Two built-in worlds with the same seed share their scenes; evaluating across them can test on training images.

A world draws scene ``i`` from one seeded stream whatever its size, and only then splits the scenes.
So ``polymodal data world --scenes 2000`` and the quickstart's 10,000-scene world (both seed 0) hold
the same first 2,000 scenes, and most of the small world's test images are training images of a
model trained on the large one: its scores would be inflated with nothing to show it. Evaluation
therefore checks, when the checkpoint's training data and the evaluation data are two different
worlds generated from the same scene stream, how many evaluation images the model trained on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polymodal.data.sample import Sample

MANIFEST = "world.json"
# what decides the scene stream: the seed and the object counts; the image size only changes the rendering
SCENE_KEYS = ("seed", "min_objects", "max_objects")
_IMAGE_ID = re.compile(r"_(\d+)\.png$")
_PATH_KEYS = ("path", "annotations", "questions", "images", "root", "scenes")


@dataclass(frozen=True)
class SeenInTraining:
    """Evaluation images that were training images of the checkpoint (same scene of a same-seed world)."""

    shared: int
    images: int
    train_world: Path
    eval_world: Path
    seed: int

    def message(self, split: str) -> str:
        return (
            f"{split}: {self.shared} of its {self.images} images are training images of this checkpoint. {self.eval_world} and "
            f"the training world {self.train_world} are two built-in worlds generated with seed {self.seed}, and scene i is the "
            "same in both whatever their sizes, so these scores are inflated. Generate the evaluation world with another "
            "seed (polymodal data world --seed 1 ...)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"shared_images": self.shared, "images": self.images, "train_world": str(self.train_world), "seed": self.seed}


def find_world(path: Path, levels: int = 4) -> Path | None:
    """The built-in world folder that holds ``path`` (a file or folder inside it), or None."""
    for folder in [path, *path.parents][: levels + 1]:
        manifest = folder / MANIFEST
        if manifest.is_file():
            try:
                if json.loads(manifest.read_text(encoding="utf-8")).get("name") == "polymodal-world":
                    return folder.resolve()
            except (OSError, json.JSONDecodeError, AttributeError):
                return None
    return None


def _scene_config(world: Path) -> dict[str, Any]:
    config = json.loads((world / MANIFEST).read_text(encoding="utf-8")).get("config", {})
    return {k: config.get(k) for k in SCENE_KEYS}


def _train_world(run_dir: Path) -> Path | None:
    """The world the run trained on, from its resolved ``config.yaml`` (None: not a world, or unknown)."""
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None
    train = (config.get("data") or {}).get("train") if isinstance(config, Mapping) else None
    sources = train if isinstance(train, list) else [train]
    for source in sources:
        for value in (source.get(k) for k in _PATH_KEYS) if isinstance(source, Mapping) else ():
            if isinstance(value, str):
                path = Path(value) if Path(value).is_absolute() else run_dir / value
                world = find_world(path)
                if world is not None:
                    return world
    return None


def _image_ids(paths: Iterable[Path]) -> set[int]:
    return {int(m[1]) for p in paths if (m := _IMAGE_ID.search(p.name))}


def images_seen_in_training(run_dir: Path | None, samples: Sequence[Sample]) -> SeenInTraining | None:
    """How many distinct images of ``samples`` the run at ``run_dir`` trained on, when both are built-in
    worlds from the same scene stream in different folders; None when that is not the case (the splits of
    one world never share a scene)."""
    first = next((s.image_path for s in samples if s.image_path is not None), None)
    if run_dir is None or first is None:
        return None
    train_world, eval_world = _train_world(run_dir), find_world(Path(first))
    if train_world is None or eval_world is None or train_world == eval_world:
        return None
    scene_config = _scene_config(train_world)
    if scene_config != _scene_config(eval_world):
        return None
    trained = _image_ids((train_world / "images" / "train").glob("*.png"))
    evaluated = _image_ids(s.image_path for s in samples if s.image_path is not None)
    return SeenInTraining(len(evaluated & trained), len(evaluated), train_world, eval_world, int(scene_config["seed"]))
