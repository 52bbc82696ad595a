"""CLEVR: ``CLEVR_<split>_questions.json`` with a ``questions`` list.

Each question has image_filename, image_index, question, answer (absent on the test split),
program, question_family_index and split. ``images`` is the folder holding that split's images
(e.g. ``CLEVR_v1.0/images/val``). The program and every other unmapped key go to ``Sample.meta``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from polymodal.data.formats._common import answer_text, check_record, clevr_records, extras, origin, text_field, value_kind
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import ClevrSource

FORMAT = "clevr"
_KNOWN = frozenset({"image_filename", "image_index", "question", "answer", "split", "question_index"})


def read(spec: ClevrSource, report: DataReport) -> Iterator[Sample]:
    questions, split = clevr_records(spec.questions, "questions", spec.images, FORMAT, "questions")
    return _samples(spec, questions, split, report)


def _samples(
    spec: ClevrSource, questions: list[Any], file_split: str | None, report: DataReport
) -> Iterator[Sample]:
    path = spec.questions
    for i, q in enumerate(questions):
        where = origin(path, f"record {i}")
        if not check_record(q, ("image_filename", "question"), report, where):
            continue
        text = text_field(q, "question", report, where)
        if text is None:
            continue
        if not text:
            report.add("empty_text", where, "empty question")
            continue
        answer = q.get("answer")
        if answer is not None and (answer := answer_text(answer, "answer", report, where)) is None:
            continue
        split = q.get("split", file_split)
        if split is not None and not isinstance(split, str):
            report.add("bad_record", where, f"'split' should be a string, got {value_kind(split)}")
            continue
        image_id = q.get("image_index", q["image_filename"])
        yield Sample(
            sample_id=str(q.get("question_index", i)),
            origin=where,
            image_path=spec.images / str(q["image_filename"]),
            image_id=str(image_id),
            text=text,
            answers=(answer,) if answer is not None else (),
            split=split,
            meta=extras(q, _KNOWN),
        )
