"""The samples a task uses from a split's sources, for training and evaluation alike.

Two things go wrong between reading sources and handing samples to a task unless they are handled
here, once:

* records the task cannot use (a caption row without an image) must be counted, not dropped in
  silence, in evaluation as in training;
* image ids are only unique within a source: two COCO files both number their images from 0, and
  WebDataset shards written one at a time restart their keys at 000000. Tasks group texts by image
  id (retrieval's gallery, captioning's references), so two images with one id became one image with
  the other's captions. Ids that name different images are kept apart by the file they came from.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from polymodal.data.formats import describe, read_source
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample

log = logging.getLogger(__name__)


def select_samples(sources: Iterable[Any], task: Any, split: str, max_samples: int | None = None) -> tuple[list[Sample], int]:
    """``(samples the task uses, problem records skipped)`` from ``sources`` in order, reading no further
    than ``max_samples``; what is left out is counted in the log, source by source."""
    samples: list[Sample] = []
    source_of: list[int] = []
    problems = 0
    for number, spec in enumerate(sources):
        if max_samples is not None and len(samples) >= max_samples:
            break
        report = DataReport(describe(spec))
        unusable: Counter[str] = Counter()  # records the task cannot use, by reason
        first: dict[str, str] = {}
        other_kinds = 0
        kept: list[Sample] = []
        records = read_source(spec, report)
        for sample in records:
            if task.select(sample):
                kept.append(sample)
                if max_samples is not None and len(samples) + len(kept) >= max_samples:
                    break
            elif (reason := task.rejection(sample)) is not None:
                unusable[reason] += 1
                first.setdefault(reason, sample.origin or sample.sample_id)
            else:
                other_kinds += 1
        if report.num_problems:
            problems += report.num_problems
            log.warning("%s: %d problem records skipped\n%s", describe(spec), report.num_problems, report.format())
        if unusable:
            reasons = "; ".join(f"{n} x {reason} (first: {first[reason]})" for reason, n in unusable.most_common())
            log.warning("%s: %d records the %s task cannot use, left out: %s", describe(spec), sum(unusable.values()), task.name, reasons)
        more = f" ({other_kinds} records of other kinds left to other tasks)" if other_kinds else ""
        # a source with nothing for the task is said once, by whoever needed its samples (a skipped split, a DataError)
        log.log(logging.INFO if kept else logging.DEBUG, "%s split: %d %s samples from %s%s", split, len(kept), task.name, describe(spec), more)
        samples += kept
        source_of += [number] * len(kept)
    return keep_images_apart(samples, source_of, split), problems


def _origin_file(sample: Sample) -> str:
    return sample.origin.rsplit(":", 1)[0] if ":" in sample.origin else sample.origin


def _image_identity(sample: Sample, source: int) -> tuple[Any, ...] | None:
    """What one image is: its file, or for images carried as bytes (shards) the file that holds them."""
    if sample.image_path is not None:
        return ("path", str(sample.image_path))
    if sample.image_bytes is not None:
        return ("bytes", source, _origin_file(sample))
    return None


def _same_file(ident: tuple[Any, ...]) -> tuple[Any, ...]:
    """A path identity as the file it reaches (one image may be named through a symlinked folder)."""
    if ident[0] != "path":
        return ident
    try:
        st = os.stat(ident[1])
    except OSError:
        return ("path", os.path.realpath(ident[1]))
    return ("file", st.st_dev, st.st_ino)


def keep_images_apart(samples: Sequence[Sample], source_of: Sequence[int], split: str = "") -> list[Sample]:
    """``samples`` with each image id that names more than one image made unique (``'0@captions_val.json'``):
    the id, then the name of the file the record came from (with its source's number where names repeat).

    One pass keeps only each id's first image; the ids met with another are looked at again, with the
    files resolved, so the cost stays near a dict lookup per sample on collections without clashes."""
    first: dict[str, tuple[Any, ...]] = {}
    suspects: set[str] = set()
    for s, source in zip(samples, source_of):
        ident = _image_identity(s, source)
        if ident is not None and first.setdefault(s.image_key, ident) != ident:
            suspects.add(s.image_key)
    if not suspects:
        return list(samples)
    found: dict[str, dict[tuple[Any, ...], list[int]]] = {}
    for i, (s, source) in enumerate(zip(samples, source_of)):
        if s.image_key in suspects and (ident := _image_identity(s, source)) is not None:
            found.setdefault(s.image_key, {}).setdefault(_same_file(ident), []).append(i)
    shared = {key: images for key, images in found.items() if len(images) > 1}
    if not shared:  # one file reached by two names
        return list(samples)
    renamed = list(samples)
    for key, images in shared.items():
        files = {ident: (source_of[rows[0]], Path(_origin_file(samples[rows[0]])).name) for ident, rows in images.items()}
        labels = {ident: name for ident, (_, name) in files.items()}
        if len(set(labels.values())) < len(labels):  # never a full path: the label is part of the data's fingerprint
            labels = {ident: f"source {n + 1}:{name}" for ident, (n, name) in files.items()}
        if len(set(labels.values())) < len(labels):  # one file names two images by one id
            labels = {ident: f"{labels[ident]}#{k + 1}" for k, ident in enumerate(images)}
        for ident, rows in images.items():
            for row in rows:
                renamed[row] = dataclasses.replace(samples[row], image_id=f"{key}@{labels[ident]}")
    example_key, example = next(iter(shared.items()))
    shown = [samples[rows[0]] for rows in itertools.islice(example.values(), 2)]
    log.warning(
        "%s%d image ids name more than one image (e.g. %r: %s); they are kept apart by the file they came from, as %s",
        f"{split} split: " if split else "", len(shared), example_key,
        " and ".join(str(s.image_path or _origin_file(s)) for s in shown),
        " and ".join(repr(renamed[rows[0]].image_id) for rows in itertools.islice(example.values(), 2)),
    )
    return renamed
