"""GQA: a questions JSON object keyed by question id, images at ``images/<imageId>.jpg``.

Each entry has imageId, question, answer (absent on the test splits), fullAnswer, types, semantic,
... . Every key other than imageId / question / answer is kept in ``Sample.meta``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from polymodal.data.formats._common import answer_text, check_record, extras, load_json, origin, require_dir, text_field
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import GqaSource
from polymodal.errors import DataError

FORMAT = "gqa"
_KNOWN = frozenset({"imageId", "question", "answer"})
_SPLITS = frozenset({"train", "val", "testdev", "test", "challenge", "submission"})


def read(spec: GqaSource, report: DataReport) -> Iterator[Sample]:
    tree = load_json(spec.questions, FORMAT, "questions")
    if not isinstance(tree, Mapping):
        raise DataError(
            f"{FORMAT} source: questions file {spec.questions} should be a JSON object keyed by question "
            f"id, got a JSON {type(tree).__name__}"
        )
    require_dir(spec.images, FORMAT, "images")
    return _samples(spec, tree, report)


def _samples(spec: GqaSource, questions: Mapping[str, Any], report: DataReport) -> Iterator[Sample]:
    prefix = spec.questions.name.split("_", 1)[0]  # train_balanced_questions.json -> train
    split = prefix if prefix in _SPLITS else None
    for qid, q in questions.items():
        where = origin(spec.questions, f"question {qid}")
        if not check_record(q, ("imageId", "question"), report, where):
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
        image_id = str(q["imageId"])
        yield Sample(
            sample_id=str(qid),
            origin=where,
            image_path=spec.images / f"{image_id}.jpg",
            image_id=image_id,
            text=text,
            answers=(answer,) if answer is not None else (),
            split=split,
            meta=extras(q, _KNOWN),
        )
