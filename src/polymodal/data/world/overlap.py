"""Two built-in worlds with the same seed share their items; evaluating across them can test on training data.

A world draws scene ``i`` (an audio-visual world: clip ``i``) from its seed alone, whatever the world's
size, and only then splits the items. So ``polymodal data world --scenes 2000`` and the quickstart's
10,000-scene world (both seed 0) hold the same first 2,000 scenes, and most of the small world's test
images are training images of a model trained on the large one: its scores would be inflated with
nothing to show it. Evaluation therefore checks, when the checkpoint's training data and the
evaluation data are two different worlds of one kind generated from the same stream, how many
evaluation items the model trained on.
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

_PATH_KEYS = ("path", "annotations", "questions", "images", "root", "scenes")


@dataclass(frozen=True)
class WorldKind:
    """A kind of built-in world: its manifest, what decides its content, and how items are numbered."""

    manifest: str
    name: str
    command: str  # how to generate one with another seed

    def stream(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """The settings that decide item i's content (a world's size does not)."""
        if self.name == IMAGE_WORLD.name:  # the seed and the object counts; the image size only changes the rendering
            return {k: manifest.get("config", {}).get(k) for k in ("seed", "min_objects", "max_objects")}
        return {k: manifest.get("media", {}).get(k) for k in ("seed", "frames")}  # a clip's events depend on its length

    def trained(self, root: Path) -> set[int]:
        """The numbers of the world's training items."""
        if self.name == IMAGE_WORLD.name:
            return _numbers(p.name for p in (root / "images" / "train").glob("*.png"))
        rows = (json.loads(line) for line in (root / "train.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
        return _numbers(Path(r["video"]).name for r in rows if r.get("video"))

    def item(self, sample: Sample) -> str | None:
        path = sample.image_path if self.name == IMAGE_WORLD.name else sample.video_path
        return None if path is None else Path(path).name


IMAGE_WORLD = WorldKind("world.json", "polymodal-world", "polymodal data world --seed 1 ...")
AV_WORLD = WorldKind("av_world.json", "polymodal-av-world", "polymodal data av-world --seed 1 ...")
KINDS = (IMAGE_WORLD, AV_WORLD)
_NUMBER = re.compile(r"(\d+)\.(?:png|mp4)$")  # images/train/train_000123.png, videos/000123.mp4


def _numbers(names: Iterable[str]) -> set[int]:
    return {int(m[1]) for n in names if (m := _NUMBER.search(n))}


@dataclass(frozen=True)
class SeenInTraining:
    """Evaluation items (images or clips) that were training items of the checkpoint: the same item of a same-seed world."""

    shared: int
    items: int
    train_world: Path
    eval_world: Path
    seed: int
    kind: WorldKind

    def message(self, split: str) -> str:
        what = "images" if self.kind is IMAGE_WORLD else "clips"
        return (
            f"{split}: {self.shared} of its {self.items} {what} are training {what} of this checkpoint. {self.eval_world} and "
            f"the training world {self.train_world} are two built-in worlds generated with seed {self.seed}, and item i is the "
            f"same in both whatever their sizes, so these scores are inflated. Generate the evaluation world with another "
            f"seed ({self.kind.command})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"shared": self.shared, "of": self.items, "train_world": str(self.train_world), "seed": self.seed}


def find_world(path: Path, levels: int = 4) -> tuple[Path, WorldKind] | None:
    """The built-in world folder that holds ``path`` (a file or folder inside it) and its kind, or None."""
    for folder in [path, *path.parents][: levels + 1]:
        for kind in KINDS:
            manifest = folder / kind.manifest
            if manifest.is_file():
                try:
                    found = json.loads(manifest.read_text(encoding="utf-8")).get("name") == kind.name
                except (OSError, json.JSONDecodeError, AttributeError):
                    return None
                return (folder.resolve(), kind) if found else None
    return None


def _manifest(world: tuple[Path, WorldKind]) -> dict[str, Any]:
    return json.loads((world[0] / world[1].manifest).read_text(encoding="utf-8"))


def _train_world(run_dir: Path) -> tuple[Path, WorldKind] | None:
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
                world = find_world(Path(value) if Path(value).is_absolute() else run_dir / value)
                if world is not None:
                    return world
    return None


def seen_in_training(run_dir: Path | None, samples: Sequence[Sample]) -> SeenInTraining | None:
    """How many distinct items of ``samples`` the run at ``run_dir`` trained on, when both come from built-in
    worlds of one kind and one item stream in different folders; None when that is not the case (the splits
    of one world never share an item)."""
    train_world = _train_world(run_dir) if run_dir is not None else None
    if train_world is None:
        return None
    kind = train_world[1]
    first = next((s for s in samples if kind.item(s) is not None), None)
    eval_world = None if first is None else find_world(Path(first.video_path if kind is AV_WORLD else first.image_path))  # type: ignore[arg-type]
    if eval_world is None or eval_world == train_world or eval_world[1] is not kind:
        return None
    stream = kind.stream(_manifest(train_world))
    if stream != kind.stream(_manifest(eval_world)):
        return None
    evaluated = _numbers(name for s in samples if (name := kind.item(s)) is not None)
    shared = len(evaluated & kind.trained(train_world[0]))
    return SeenInTraining(shared, len(evaluated), train_world[0], eval_world[0], int(stream["seed"]), kind)
