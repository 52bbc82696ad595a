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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from polymodal.data.sample import Sample

_PATH_KEYS = ("path", "annotations", "questions", "images", "root", "scenes")


def _image_world_train(root: Path) -> Iterable[str]:
    return (p.name for p in (root / "images" / "train").glob("*.png"))


def _av_world_train(root: Path) -> Iterable[str]:  # videos/ holds every split: the train rows say which are training clips
    rows = (json.loads(line) for line in (root / "train.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    return (Path(r["video"]).name for r in rows if r.get("video"))


@dataclass(frozen=True)
class WorldKind:
    """A kind of built-in world: its manifest, what decides its items' content, and where they are."""

    manifest: str
    name: str
    section: str  # the manifest section holding ``stream_keys``
    stream_keys: tuple[str, ...]  # the settings that decide item i's content (a world's size does not)
    item_path: str  # the Sample field naming an item's file ("image_path" / "video_path")
    items: str  # what the items are called in messages
    command: str  # how to generate one with another seed
    train_names: Callable[[Path], Iterable[str]]  # the file names of a world's training items

    def stream(self, root: Path) -> dict[str, Any]:
        section = json.loads((root / self.manifest).read_text(encoding="utf-8")).get(self.section, {})
        return {k: section.get(k) for k in self.stream_keys}


# the image world: the seed and the object counts (the image size only changes the rendering); the AV
# world: the seed and the clip length, on which a clip's events depend
IMAGE_WORLD = WorldKind("world.json", "polymodal-world", "config", ("seed", "min_objects", "max_objects"), "image_path", "images",
                        "polymodal data world --seed 1 ...", _image_world_train)
AV_WORLD = WorldKind("av_world.json", "polymodal-av-world", "media", ("seed", "frames"), "video_path", "clips",
                     "polymodal data av-world --seed 1 ...", _av_world_train)
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
        what = self.kind.items
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


class TrainingWorld:
    """The built-in world a run trained on; compares evaluation splits with its training items.

    Built once per evaluation: the training items are listed (a folder glob or a JSONL read) the first
    time a split from a same-stream world needs them, not once per split.
    """

    def __init__(self, root: Path, kind: WorldKind) -> None:
        self.root, self.kind = root, kind
        self.stream = kind.stream(root)
        self._trained: set[int] | None = None

    @classmethod
    def of_run(cls, run_dir: Path | None) -> TrainingWorld | None:
        """From the run's resolved ``config.yaml``; None when it did not train on a built-in world (or it is unknown)."""
        if run_dir is None:
            return None
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
                        return cls(*world)
        return None

    def seen_in(self, samples: Sequence[Sample]) -> SeenInTraining | None:
        """How many distinct items of ``samples`` this world trained, when they come from another world of
        its kind and item stream; None when that is not the case (the splits of one world never share an item)."""
        paths = [Path(p) for s in samples if (p := getattr(s, self.kind.item_path)) is not None]
        eval_world = find_world(paths[0]) if paths else None
        if eval_world is None or eval_world[1] is not self.kind or eval_world[0] == self.root:
            return None
        if self.kind.stream(eval_world[0]) != self.stream:
            return None
        if self._trained is None:
            self._trained = _numbers(self.kind.train_names(self.root))
        evaluated = _numbers(p.name for p in paths)
        return SeenInTraining(len(evaluated & self._trained), len(evaluated), self.root, eval_world[0], int(self.stream["seed"]), self.kind)
