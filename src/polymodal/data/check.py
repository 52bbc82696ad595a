"""``polymodal data check`` / ``data stats``: validate a data spec before a long run, and summarise it.

A SPEC is one of three things (see :func:`load_spec`):

1. a run config YAML with a ``data:`` section - every source of every split;
2. a YAML file holding one data-source mapping (``{format: ..., ...}``) or a list of them;
3. a folder holding ``world.json`` (the built-in world's manifest) - every split's sources.

:func:`check_source` reads a source with a :class:`DataReport` (so record-level problems are
counted, not raised), then checks that every distinct image exists and decodes, and that audio and
video files exist. A file-level problem (a missing annotations file, malformed JSON), which the readers
raise as :class:`~polymodal.errors.DataError`, is reported as ``unreadable_source`` so that one missing
file does not hide the state of every other source.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from polymodal.config import load_config, parse_source, read_yaml
from polymodal.data.formats import describe, read_source
from polymodal.data.report import PROBLEM_KINDS, DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import DataSource
from polymodal.errors import ConfigError, DataError

T = TypeVar("T")
R = TypeVar("R")

SPEC_FORMS = (
    "A data SPEC is one of:\n"
    "  1. a run config YAML with a 'data:' section (data: {train: [...], val: [...], test: [...]});\n"
    "  2. a YAML file holding one data-source mapping such as\n"
    "     {format: coco_captions, annotations: captions_val2014.json, images: val2014/}, or a list of them;\n"
    "  3. a folder holding world.json (a generated built-in world)."
)

_TEXT_KIND = {
    "coco_captions": "captions",
    "cc_tsv": "captions",
    "karpathy": "captions",
    "webdataset": "captions",
    "vqa_v2": "questions",
    "clevr": "questions",
    "gqa": "questions",
}


# --- checking ----------------------------------------------------------------------------------


def image_problem(open_image: Callable[[], Any]) -> str | None:
    """Why an image cannot be decoded, or None when it decodes.

    ``verify()`` catches truncated and damaged PNG/GIF files even when another module has set
    ``ImageFile.LOAD_TRUNCATED_IMAGES``; ``load()`` decodes every pixel (which catches the rest).
    """
    try:
        with Image.open(open_image()) as im:
            im.verify()
        with Image.open(open_image()) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad files
        return f"{type(e).__name__}: {e}"
    return None


def _check_path(path: Path, verify: bool) -> tuple[str, str] | None:
    if not path.is_file():
        return "missing_image", f"image file not found: {path}"
    if verify:
        why = image_problem(lambda: path)
        if why is not None:
            return "corrupt_image", f"cannot decode {path}: {why}"
    return None


def _check_bytes(data: bytes) -> tuple[str, str] | None:
    why = image_problem(lambda: io.BytesIO(data))
    return ("corrupt_image", f"cannot decode the image bytes: {why}") if why is not None else None


def _bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int = 256) -> Iterator[R]:
    """``map`` over a thread pool, in order, holding at most ``window`` items in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        for fut in pending:
            yield fut.result()


def check_source(
    spec: DataSource, verify_images: bool = True, *, name: str | None = None, workers: int | None = None
) -> DataReport:
    """Read ``spec`` and check its media; returns the report (counts + located problems).

    Each distinct image file is checked once: that it exists and, with ``verify_images``, that it
    decodes. Images carried as bytes (WebDataset) are decoded when ``verify_images``.
    """
    report = DataReport(source=name or describe(spec))
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    text_kind = _TEXT_KIND.get(spec.format, "texts")
    first_origin: dict[Path, str] = {}
    seen_media: set[Path] = set()  # audio / video files: each checked (and reported) once
    byte_images: list[tuple[str, bytes]] = []

    def check_bytes_batch() -> None:
        for (where, _), problem in zip(
            byte_images, _bounded_map(_check_bytes, [b for _, b in byte_images], workers)
        ):
            if problem is not None:
                report.add(problem[0], where, problem[1])
        byte_images.clear()

    try:
        for sample in read_source(spec, report):
            report.count("samples")
            if sample.text is not None:
                report.count(text_kind)
            if sample.answers:
                report.count("answered")
            if sample.label is not None:
                report.count("labeled")
            for extra in sample.more_images:  # a conversation's second and later images
                first_origin.setdefault(extra, sample.origin)
            if sample.image_path is not None:
                first_origin.setdefault(sample.image_path, sample.origin)
            elif sample.image_bytes is not None:
                report.count("images")
                if verify_images:
                    byte_images.append((sample.origin, sample.image_bytes))
                    if len(byte_images) >= 256:
                        check_bytes_batch()
            else:
                report.count("samples_without_image")
            for path, kind, what in (
                (sample.audio_path, "missing_audio", "audio"),
                (sample.video_path, "missing_video", "video"),
            ):
                if path is not None and path not in seen_media:
                    seen_media.add(path)
                    report.count(what)
                    if not path.is_file():
                        report.add(kind, sample.origin, f"{what} file not found: {path}")
    except DataError as e:  # an unreadable file: reported like any problem, so the other sources are still checked
        report.add("unreadable_source", "whole source", str(e))
    check_bytes_batch()

    report.count("images", len(first_origin))
    paths = list(first_origin)
    for path, problem in zip(paths, _bounded_map(lambda p: _check_path(p, verify_images), paths, workers)):
        if problem is not None:
            report.add(problem[0], first_origin[path], problem[1])
    return report


# --- specs -------------------------------------------------------------------------------------


def _named(prefix: str, sources: list[DataSource]) -> list[tuple[str, DataSource]]:
    if len(sources) == 1:
        return [(prefix, sources[0])]
    return [(f"{prefix}[{i}]", s) for i, s in enumerate(sources)]


def _world_sources(manifest: Path) -> list[tuple[str, DataSource]]:
    try:
        tree = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{manifest}: cannot read the world manifest: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{manifest}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    splits = tree.get("sources") if isinstance(tree, dict) else None
    if not isinstance(splits, dict):
        raise ConfigError(
            f"{manifest}: a world manifest needs a 'sources' mapping of split -> list of sources"
        )
    base = manifest.parent.resolve()
    out: list[tuple[str, DataSource]] = []
    for split, items in splits.items():
        items = items if isinstance(items, list) else [items]
        parsed = [
            parse_source(item, f"{manifest}: sources.{split}[{i}]", base) for i, item in enumerate(items)
        ]
        out.extend(_named(str(split), parsed))
    for split, item in (tree.get("conversations") or {}).items():  # the assistant's instruction data
        out.extend(_named(f"conversations_{split}", [parse_source(item, f"{manifest}: conversations.{split}", base)]))
    return out


def load_spec(path: str | Path) -> list[tuple[str, DataSource]]:
    """Resolve a SPEC (run config, source YAML or world folder) to ``(name, source)`` pairs."""
    path = Path(path)
    if path.is_dir():
        manifest = path / "world.json"
        if not manifest.is_file():
            raise ConfigError(f"{path} is a folder without a world.json manifest.\n{SPEC_FORMS}")
        sources = _world_sources(manifest)
    elif not path.exists():
        raise ConfigError(f"data spec not found: {path}\n{SPEC_FORMS}")
    elif path.suffix.lower() == ".json":
        sources = _world_sources(path)
    else:
        sources = _yaml_sources(path)
    if not sources:
        raise ConfigError(f"{path}: defines no data sources.\n{SPEC_FORMS}")
    return sources


def _yaml_sources(path: Path) -> list[tuple[str, DataSource]]:
    from polymodal.config import RunConfig

    tree = read_yaml(path)
    base = path.parent.resolve()
    if isinstance(tree, list):
        if not all(isinstance(item, dict) for item in tree):
            raise ConfigError(
                f"{path}: a list of data sources must hold mappings with a 'format' key.\n{SPEC_FORMS}"
            )
        parsed = [parse_source(item, f"{path}: [{i}]", base) for i, item in enumerate(tree)]
        return _named(path.name, parsed)
    if isinstance(tree, dict) and "format" in tree:
        return [(path.name, parse_source(tree, str(path), base))]
    if isinstance(tree, dict) and set(tree) & set(RunConfig.model_fields):
        cfg = load_config(path)  # rejects misspelled keys, naming the key and the file
        out: list[tuple[str, DataSource]] = []
        for split in type(cfg.data).model_fields:
            out.extend(_named(split, list(getattr(cfg.data, split))))
        return out
    got = f"top-level keys {sorted(map(str, tree))}" if isinstance(tree, dict) else f"a {type(tree).__name__}"
    raise ConfigError(f"{path}: not a data spec (got {got}).\n{SPEC_FORMS}")


def check_spec(path: str | Path, verify_images: bool = True) -> list[DataReport]:
    """Check every source a SPEC names; one report per source, titled ``split: format main-file``."""
    return [
        check_source(spec, verify_images, name=f"{name}: {describe(spec)}") for name, spec in load_spec(path)
    ]


# --- statistics --------------------------------------------------------------------------------


def _top(counter: Counter, n: int) -> str:
    items = ", ".join(f"{k} {v}" for k, v in counter.most_common(n))
    more = len(counter) - n
    return items + (f", ... ({more} more)" if more > 0 else "")


def _main_answer(sample: Sample) -> str | None:
    mca = sample.meta.get("multiple_choice_answer") if sample.meta else None
    if isinstance(mca, str):
        return mca
    if sample.answers:
        return Counter(sample.answers).most_common(1)[0][0]
    return None


def source_stats(spec: DataSource, name: str | None = None) -> str:
    """A readable summary of one source (reads the records only, never the images)."""
    report = DataReport(source=name or describe(spec))
    images: set[str] = set()
    lengths: list[int] = []
    answers: Counter = Counter()
    labels: Counter = Counter()
    splits: Counter = Counter()
    families: Counter = Counter()
    answer_types: Counter = Counter()
    held_out = 0
    n = 0
    for s in read_source(spec, report):
        n += 1
        if s.has_image:
            images.add(s.image_id or (str(s.image_path) if s.image_path is not None else s.sample_id))
        if s.text is not None:
            lengths.append(len(s.text.split()))
        answer = _main_answer(s)
        if answer is not None:
            answers[answer] += 1
        if s.label is not None:
            labels[s.label] += 1
        if s.split is not None:
            splits[s.split] += 1
        meta = s.meta or {}
        if meta.get("family") is not None:
            families[str(meta["family"])] += 1
        if meta.get("answer_type") is not None:
            answer_types[str(meta["answer_type"])] += 1
        if meta.get("held_out"):
            held_out += 1

    lines = [report.source, f"  samples: {n}", f"  distinct images: {len(images)}"]
    if splits:
        lines.append(f"  splits: {_top(splits, 10)}")
    if lengths:
        mean = sum(lengths) / len(lengths)
        lines.append(f"  text length (words): min {min(lengths)}, mean {mean:.1f}, max {max(lengths)}")
    if answers:
        lines.append(f"  top answers ({len(answers)} distinct): {_top(answers, 10)}")
    if answer_types:
        lines.append(f"  answer types: {_top(answer_types, 10)}")
    if labels:
        lines.append(f"  labels ({len(labels)} distinct): {_top(labels, 20)}")
    if families:
        lines.append(f"  families ({len(families)}): {_top(families, 20)}")
    if held_out:
        lines.append(f"  held out: {held_out}")
    problems = Counter({k: v for k, v in report.counts.items() if k in PROBLEM_KINDS and v})
    lines.append(f"  problems: {_top(problems, len(problems)) if problems else 'none'}")
    return "\n".join(lines)


def stats_spec(path: str | Path) -> list[str]:
    """One readable block per source of a SPEC: sizes, text lengths, answers, labels, families."""
    return [source_stats(spec, name=f"{name}: {describe(spec)}") for name, spec in load_spec(path)]


__all__ = [
    "SPEC_FORMS",
    "check_source",
    "check_spec",
    "image_problem",
    "load_spec",
    "source_stats",
    "stats_spec",
]
