"""VQA v2: a questions JSON plus (except for test-dev) an annotations JSON with ten answers each.

Images are found by the COCO naming convention ``COCO_<data_subtype>_<image_id:012d>.jpg`` under
``images``, or by ``image_template`` (fields ``image_id``, ``split`` and ``data_subtype``; ``split``
is the data subtype). Keys on a question record that this reader does not map (the built-in world
adds e.g. ``family``, ``template``, ``held_out``) are kept in ``Sample.meta``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from polymodal.data.formats._common import (
    answer_text,
    check_record,
    extras,
    id_field,
    json_list,
    load_json,
    origin,
    require_dir,
    text_field,
)
from polymodal.data.report import DataReport
from polymodal.data.sample import Sample
from polymodal.data.sources import VqaV2Source
from polymodal.errors import DataError

FORMAT = "vqa_v2"
ANSWER_TYPES = frozenset({"yes/no", "number", "other"})
COCO_TEMPLATE = "COCO_{data_subtype}_{image_id:012d}.jpg"
_QUESTION_KEYS = frozenset({"image_id", "question", "question_id"})
_ANNOTATION_KEYS = frozenset(
    {"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer", "answers"}
)


def read(spec: VqaV2Source, report: DataReport) -> Iterator[Sample]:
    q_tree = load_json(spec.questions, FORMAT, "questions")
    questions = json_list(q_tree, "questions", spec.questions, FORMAT, "questions")
    data_subtype = spec.data_subtype or q_tree.get("data_subtype")
    template = spec.image_template or COCO_TEMPLATE
    _check_template(template, data_subtype, spec)
    annotations: list[Any] | None = None
    if spec.annotations is not None:
        a_tree = load_json(spec.annotations, FORMAT, "annotations")
        annotations = json_list(a_tree, "annotations", spec.annotations, FORMAT, "annotations")
    require_dir(spec.images, FORMAT, "images")
    return _samples(spec, questions, annotations, data_subtype, template, report)


def _check_template(template: str, data_subtype: str | None, spec: VqaV2Source) -> None:
    """Fail before reading when the image file name pattern cannot be filled in."""
    if data_subtype is None and ("{data_subtype" in template or "{split" in template):
        raise DataError(
            f"{FORMAT} source: the questions file {spec.questions} has no 'data_subtype' and the config "
            f"sets none; set data_subtype (e.g. train2014) or an image_template without it"
        )
    try:
        template.format(image_id=0, split=data_subtype, data_subtype=data_subtype)
    except (KeyError, IndexError, ValueError) as e:
        raise DataError(
            f"{FORMAT} source: image_template {template!r} cannot be used ({type(e).__name__}: {e}); "
            f"it may use the fields image_id, split and data_subtype"
        ) from None


def _image_file(template: str, image_id: Any, data_subtype: str | None) -> str:
    if isinstance(image_id, str) and image_id.isdigit():
        image_id = int(image_id)
    return template.format(image_id=image_id, split=data_subtype, data_subtype=data_subtype)


def _index_annotations(
    annotations: list[Any], path: Path, report: DataReport
) -> dict[Any, tuple[int, Mapping[str, Any], tuple[str, ...]]]:
    """Each usable annotation by question id, with its record index and its answers as text."""
    by_question: dict[Any, tuple[int, Mapping[str, Any], tuple[str, ...]]] = {}
    for i, ann in enumerate(annotations):
        where = origin(path, f"record {i}")
        if not check_record(ann, ("question_id", "answers"), report, where):
            continue
        answers = ann["answers"]
        if not isinstance(answers, list) or not all(
            isinstance(a, Mapping) and "answer" in a for a in answers
        ):
            report.add(
                "bad_record", where, "'answers' should be a list of {answer, answer_confidence, answer_id}"
            )
            continue
        if not answers:
            report.add("bad_record", where, f"question {ann['question_id']!r} has an empty 'answers' list")
            continue
        if not id_field(ann, "question_id", report, where):
            continue
        texts = [answer_text(a["answer"], "answer", report, f"{where} answer {j}") for j, a in enumerate(answers)]
        if any(t is None for t in texts):
            continue
        if ann["question_id"] in by_question:  # replacing would swap a question's answers for another record's
            first = by_question[ann["question_id"]][0]
            report.add("duplicate_id", where, f"question_id {ann['question_id']!r} is annotated again (first in record {first}); the first is kept")
            continue
        by_question[ann["question_id"]] = (i, ann, tuple(texts))  # type: ignore[arg-type]
    return by_question


def _samples(
    spec: VqaV2Source,
    questions: list[Any],
    annotations: list[Any] | None,
    data_subtype: str | None,
    template: str,
    report: DataReport,
) -> Iterator[Sample]:
    qpath = spec.questions
    by_question = _index_annotations(annotations, spec.annotations, report) if annotations is not None else {}

    for i, q in enumerate(questions):
        where = origin(qpath, f"record {i}")
        if not check_record(q, ("question_id", "image_id", "question"), report, where):
            continue
        if not (id_field(q, "question_id", report, where) and id_field(q, "image_id", report, where)):
            continue
        qid = q["question_id"]
        where = origin(qpath, f"question {qid}")
        text = text_field(q, "question", report, where)
        if text is None:
            continue
        if not text:
            report.add("empty_text", where, f"question {qid} is empty")
            continue
        meta: dict[str, Any] = extras(q, _QUESTION_KEYS)
        answers: tuple[str, ...] = ()
        if annotations is not None:
            found = by_question.get(qid)
            if found is None:
                report.add("no_annotation", where, f"question {qid} has no entry in {spec.annotations}")
                continue
            _, ann, answers = found
            answer_type = ann.get("answer_type")
            if answer_type not in ANSWER_TYPES:
                report.add(
                    "unknown_answer_type",
                    where,
                    f"answer_type {answer_type!r} is not one of {sorted(ANSWER_TYPES)} (sample kept)",
                )
            meta.update(extras(ann, _ANNOTATION_KEYS | _QUESTION_KEYS))
            meta["question_type"] = ann.get("question_type")
            meta["answer_type"] = answer_type
            meta["multiple_choice_answer"] = ann.get("multiple_choice_answer")
            meta["answer_confidence"] = tuple(a.get("answer_confidence") for a in ann["answers"])
        try:
            image_file = _image_file(template, q["image_id"], data_subtype)
        except (ValueError, TypeError) as e:
            report.add("bad_record", where, f"image_id {q['image_id']!r} does not fit {template!r}: {e}")
            continue
        yield Sample(
            sample_id=str(qid),
            origin=where,
            image_path=spec.images / image_file,
            image_id=str(q["image_id"]),
            text=text,
            answers=answers,
            split=data_subtype,
            meta=meta,
        )

    if annotations is not None:
        question_ids = {q["question_id"] for q in questions if isinstance(q, Mapping) and isinstance(q.get("question_id"), (str, int))}
        for qid, (i, _, _) in by_question.items():
            if qid not in question_ids:
                report.add(
                    "no_question",
                    origin(spec.annotations, f"record {i}"),
                    f"annotation for question {qid} has no question in {qpath}",
                )
