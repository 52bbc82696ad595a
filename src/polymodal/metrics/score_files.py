"""Score result files in the formats the official tools take (the ``polymodal score`` command).

* Captions: a COCO results file ``[{"image_id": ..., "caption": ...}, ...]`` against a COCO
  captions annotation file ``{"images": [...], "annotations": [{"image_id", "caption"}, ...]}``,
  as ``pycocoevalcap`` (``COCO.loadRes`` + ``COCOEvalCap``) takes them.
* VQA: a VQA results file ``[{"question_id": ..., "answer": ...}, ...]`` against VQA v2
  annotations ``{"annotations": [{"question_id", "answers": [{"answer", ...}], "answer_type",
  "question_type"}, ...]}`` and, optionally, the questions file ``{"questions": [...]}``, as the
  official ``VQA``/``VQAEval`` classes take them.

Like the official tools, results must cover every annotated image/question exactly once; every
problem is reported with the file and the record (index and id) at fault. ``allow_missing=True``
scores only the predicted items (pycocoevalcap's usual ``params['image_id'] =
cocoRes.getImgIds()``).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

from polymodal.metrics.caption import caption_scores
from polymodal.metrics.errors import MetricInputError
from polymodal.metrics.vqa import vqa_scores


def _load_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MetricInputError(f"{what} file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise MetricInputError(f"{what} file {path} is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise MetricInputError(f"{what} file {path} is not UTF-8 text: {exc}") from exc


def _records(data: Any, path: Path, key: str | None, what: str) -> list:
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise MetricInputError(f"{what} file {path} must be a JSON object with a {key!r} list")
        data = data[key]
    if not isinstance(data, list):
        raise MetricInputError(f"{what} file {path}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _field(rec: Any, name: str, path: Path, idx: int, types: tuple[type, ...], what: str) -> Any:
    if not isinstance(rec, dict):
        raise MetricInputError(f"{path}: {what} record #{idx} is not a JSON object: {rec!r:.100}")
    if name not in rec:
        raise MetricInputError(f"{path}: {what} record #{idx} has no {name!r} field: {rec!r:.100}")
    val = rec[name]
    if not isinstance(val, types) or isinstance(val, bool):
        names = " or ".join(t.__name__ for t in types)
        raise MetricInputError(f"{path}: {what} record #{idx} field {name!r} must be {names}, got {val!r:.60}")
    return val


def _predictions(path: Path, id_key: str, text_key: str, known: Mapping[Hashable, Any], what: str) -> dict:
    data = _records(_load_json(path, "results"), path, None, "results")
    out: dict[Hashable, str] = {}
    first: dict[Hashable, int] = {}
    for idx, rec in enumerate(data):
        rid = _field(rec, id_key, path, idx, (int, str), "result")
        text = _field(rec, text_key, path, idx, (str,), "result")
        if rid in first:
            raise MetricInputError(
                f"{path}: result records #{first[rid]} and #{idx} both predict {id_key} {rid!r}; "
                f"give one {text_key} per {what}"
            )
        if rid not in known:
            hint = ""
            alt = str(rid) if isinstance(rid, int) else (int(rid) if isinstance(rid, str) and rid.isdigit() else None)
            if alt is not None and alt in known:
                hint = f" (the annotations use {type(alt).__name__} ids: {alt!r})"
            raise MetricInputError(f"{path}: result record #{idx} has {id_key} {rid!r}, which is not in the annotations{hint}")
        first[rid] = idx
        out[rid] = text
    return out


def _missing_error(path: Path, missing: list, total: int, id_key: str) -> MetricInputError:
    shown = ", ".join(repr(m) for m in missing[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return MetricInputError(
        f"{path}: no prediction for {len(missing)} of {total} annotated {id_key}s ({shown}{more}); "
        "predict every one, or pass allow_missing=True to score only the predicted ones"
    )


def _score_captions(
    predictions: Path, annotations: Path, *, allow_missing: bool, metrics: Iterable[str] | None, tokenizer: str
) -> dict[str, Any]:
    ann = _load_json(annotations, "annotations")
    anns = _records(ann, annotations, "annotations", "annotations")
    refs: dict[Hashable, list[str]] = {}
    for idx, rec in enumerate(anns):
        iid = _field(rec, "image_id", annotations, idx, (int, str), "annotation")
        cap = _field(rec, "caption", annotations, idx, (str,), "annotation")
        refs.setdefault(iid, []).append(cap)
    # pycocoevalcap visits images in the order of the "images" list (COCO.getImgIds()).
    order: list[Hashable] = []
    if isinstance(ann.get("images"), list):
        for img in ann["images"]:
            if isinstance(img, dict) and img.get("id") in refs and img["id"] not in order:
                order.append(img["id"])
    seen = set(order)
    order += [i for i in refs if i not in seen]
    refs = {i: refs[i] for i in order}
    if not refs:
        raise MetricInputError(f"{annotations}: no annotation has a caption")
    preds = _predictions(predictions, "image_id", "caption", refs, "image")
    missing = [i for i in refs if i not in preds]
    if missing and not allow_missing:
        raise _missing_error(predictions, missing, len(refs), "image_id")
    refs = {i: r for i, r in refs.items() if i in preds}
    cands = {i: preds[i] for i in refs}
    scores: dict[str, Any] = dict(caption_scores(refs, cands, metrics, tokenizer=tokenizer))
    scores["num_images"] = len(refs)
    return scores


def _score_vqa(
    predictions: Path, annotations: Path, questions: Path | None, *, allow_missing: bool, per_item: bool
) -> dict[str, Any]:
    anns = _records(_load_json(annotations, "annotations"), annotations, "annotations", "annotations")
    answers: dict[Hashable, list[str]] = {}
    ans_type: dict[Hashable, str] = {}
    ques_type: dict[Hashable, str] = {}
    for idx, rec in enumerate(anns):
        qid = _field(rec, "question_id", annotations, idx, (int, str), "annotation")
        if qid in answers:
            raise MetricInputError(f"{annotations}: annotation record #{idx} repeats question_id {qid!r}")
        alist = _field(rec, "answers", annotations, idx, (list,), "annotation")
        if not alist:
            raise MetricInputError(f"{annotations}: annotation record #{idx} (question {qid!r}) has no answers")
        texts = []
        for j, a in enumerate(alist):
            if not isinstance(a, dict) or not isinstance(a.get("answer"), str):
                raise MetricInputError(
                    f"{annotations}: annotation record #{idx} (question {qid!r}) answer #{j} needs a string 'answer'"
                )
            texts.append(a["answer"])
        answers[qid] = texts
        if isinstance(rec.get("answer_type"), str):
            ans_type[qid] = rec["answer_type"]
        if isinstance(rec.get("question_type"), str):
            ques_type[qid] = rec["question_type"]
    if not answers:
        raise MetricInputError(f"{annotations}: no annotation records")
    if questions is not None:
        qs = _records(_load_json(questions, "questions"), questions, "questions", "questions")
        qids = set()
        for idx, rec in enumerate(qs):
            qids.add(_field(rec, "question_id", questions, idx, (int, str), "question"))
        unknown = [q for q in answers if q not in qids]
        if unknown:
            raise MetricInputError(
                f"{questions}: {len(unknown)} annotated question_id(s) are not in the questions file, "
                f"e.g. {unknown[:5]!r} (annotations {annotations})"
            )
    preds = _predictions(predictions, "question_id", "answer", answers, "question")
    missing = [q for q in answers if q not in preds]
    if missing and not allow_missing:
        raise _missing_error(predictions, missing, len(answers), "question_id")
    res = vqa_scores(preds, answers, ans_type or None, ques_type or None, allow_missing=True)
    if not per_item:
        res.pop("perQuestion", None)
    return res


def score_file(
    task: str,
    predictions: Path | str,
    annotations: Path | str,
    questions: Path | str | None = None,
    *,
    allow_missing: bool = False,
    metrics: Iterable[str] | None = None,
    tokenizer: str = "ptb",
    per_item: bool = False,
) -> dict[str, Any]:
    """Score a results file against official annotations.

    Args:
        task: ``"caption"`` or ``"vqa"``.
        predictions: the results JSON.
        annotations: COCO captions annotations, or VQA v2 annotations.
        questions: VQA v2 questions file (optional; checked against the annotations).
        allow_missing: score only the predicted items instead of failing on missing ones.
        metrics: caption metrics to compute (default all; METEOR needs Java).
        tokenizer: caption tokenizer, ``"ptb"`` or ``"java"``.
        per_item: VQA only: also return per-question accuracies.

    Returns:
        Caption: ``{"Bleu_1".., "METEOR", "ROUGE_L", "CIDEr", "num_images"}``. VQA:
        ``{"overall", "perAnswerType", "perQuestionType", "num_questions"}``. Fractions in [0, 1].

    Raises:
        MetricInputError: a file is missing or malformed, or results and annotations disagree;
            the message names the file and the record.
    """
    predictions = Path(predictions)
    annotations = Path(annotations)
    if task == "caption":
        if questions is not None:
            raise MetricInputError("a questions file only applies to task 'vqa'")
        return _score_captions(predictions, annotations, allow_missing=allow_missing, metrics=metrics, tokenizer=tokenizer)
    if task == "vqa":
        return _score_vqa(
            predictions, annotations, Path(questions) if questions is not None else None,
            allow_missing=allow_missing, per_item=per_item,
        )
    raise MetricInputError(f"unknown task {task!r}; choose 'caption' or 'vqa'")


def _flatten(scores: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in scores.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            rows.extend(_flatten(v, name + "/"))
        else:
            rows.append((name, v))
    return rows


def format_table(scores: Mapping[str, Any], percent: bool = False, digits: int = 4) -> str:
    """A plain two-column text table of (possibly nested) scores.

    Args:
        scores: e.g. the output of :func:`score_file`; nested dicts become ``outer/inner`` rows.
        percent: show fractions as percentages with 2 decimals (the official VQA display).
        digits: decimals for fractions when not ``percent``.
    """
    rows = _flatten(scores)
    if not rows:
        return ""
    cells = []
    for name, v in rows:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, int):
            text = str(v)
        elif percent:
            text = f"{100 * v:.2f}"
        else:
            text = f"{v:.{digits}f}"
        cells.append((name, text))
    header = ("metric", "score (%)" if percent else "score")
    w1 = max(len(header[0]), *(len(n) for n, _ in cells))
    w2 = max(len(header[1]), *(len(t) for _, t in cells))
    lines = [f"{header[0]:<{w1}}  {header[1]:>{w2}}", f"{'-' * w1}  {'-' * w2}"]
    lines += [f"{n:<{w1}}  {t:>{w2}}" for n, t in cells]
    return "\n".join(lines)
