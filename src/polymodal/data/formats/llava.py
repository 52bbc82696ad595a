"""LLaVA conversation JSON: the instruction-tuning layout of LLaVA, ShareGPT4V, LLaVA-OneVision ...

::

    [{"id": "000000033471",
      "image": "coco/train2017/000000033471.jpg",          # or a list of paths, or absent (text only)
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}, ...]}]

One :class:`Sample` per record, with ``conversation`` as ``(role, text)`` pairs (``human``/``user`` ->
``user``, ``gpt``/``assistant`` -> ``assistant``, as the files use both spellings). The checks are the
ones a training run would otherwise fail on much later, or silently learn wrong from; a record that
fails one is skipped and counted in the data report with the reason:

* turns alternate, start with the user and include an assistant answer (the loss is computed on the
  assistant's tokens only: a conversation without one teaches nothing);
* the ``<image>`` markers stand in user turns only, and there are exactly as many as images (LLaVA's
  own code silently drops or mis-places images otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from polymodal.data.formats._common import extras, load_json, local_path, origin, require_dir
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import LlavaSource
from polymodal.errors import DataError

FORMAT = "llava"
IMAGE_MARKER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_KNOWN = frozenset({"id", "image", "conversations"})


def read(spec: LlavaSource, report: DataReport) -> Iterator[Sample]:
    records = load_json(spec.path, FORMAT, "path")
    if not isinstance(records, list):
        raise DataError(f"{FORMAT} source: path {spec.path} should hold a JSON list of conversation records, got a JSON {type(records).__name__}")
    require_dir(spec.images, FORMAT, "images")
    return _samples(spec, records, report)


def _images(record: Mapping[str, Any]) -> list[str] | None:
    """The record's image paths (``image`` may be one path or a list); None when malformed."""
    value = record.get("image")
    if value is None:
        return []
    if isinstance(value, str) and value.strip():
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    return None


def parse_turns(turns: Any) -> tuple[list[tuple[str, str]], str | None]:
    """``([(role, text), ...], None)``, or ``([], why)`` when the turns break a rule of the module docstring."""
    if not isinstance(turns, list) or not turns:
        return [], "'conversations' must be a non-empty list of {'from', 'value'} turns"
    out: list[tuple[str, str]] = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            return [], f"turn {k} must be an object with 'from' and 'value'"
        role = ROLES.get(str(turn["from"]).strip().lower())
        if role is None:
            return [], f"turn {k}: unknown speaker {turn['from']!r}; expected one of {sorted(ROLES)}"
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            return [], f"turn {k} ({turn['from']}) has an empty value"
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            return [], f"turn {k} is from {turn['from']!r}, expected the {'human' if expected == 'user' else 'gpt'}: turns must alternate, starting with the human"
        if role == "assistant" and IMAGE_MARKER in turn["value"]:
            return [], f"turn {k}: an {IMAGE_MARKER} marker stands in an assistant turn; images belong to the human's turns"
        out.append((role, turn["value"].strip()))
    if len(out) < 2:
        return [], "the conversation has no assistant ('gpt') turn, so there is nothing to learn from it"
    return out, None


def _samples(spec: LlavaSource, records: list[Any], report: DataReport) -> Iterator[Sample]:
    for i, record in enumerate(records):
        where = origin(spec.path, f"record {i}")
        if not isinstance(record, Mapping) or "conversations" not in record:
            got = f"keys {sorted(record)[:6]}" if isinstance(record, Mapping) else f"a JSON {type(record).__name__}"
            report.add("bad_record", where, f"expected an object with 'conversations', got {got}")
            continue
        images = _images(record)
        if images is None:
            report.add("bad_record", where, f"'image' must be a path or a list of paths, got {record.get('image')!r}")
            continue
        turns, why = parse_turns(record["conversations"])
        if why:
            report.add("bad_conversation", where, why)
            continue
        markers = sum(text.count(IMAGE_MARKER) for _, text in turns)
        if markers != len(images):
            report.add(
                "image_marker_mismatch", where,
                f"{len(images)} image(s) but {markers} {IMAGE_MARKER} marker(s) in the human turns; put one marker where each image goes",
            )
            continue
        paths: list[Path] = [local_path(p, spec.images) for p in images]
        sample_id = str(record.get("id", i))
        yield Sample(
            sample_id=sample_id,
            origin=where,
            image_path=paths[0] if paths else None,
            image_id=str(images[0]) if images else None,
            conversation=tuple(turns),
            more_images=tuple(paths[1:]),
            meta=extras(record, _KNOWN),
        )
