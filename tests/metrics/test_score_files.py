"""score_file on COCO caption and VQA v2 files: the numbers, and errors naming file and record."""

from __future__ import annotations

import json

import pytest

from polymodal.metrics import caption_scores, format_table, score_file, vqa_scores
from polymodal.metrics.errors import MetricInputError

from ._synth import caption_corpus

METRICS = ["Bleu", "ROUGE_L", "CIDEr"]


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def coco_files(tmp_path):
    refs, cands = caption_corpus(30, seed=3)
    ids = list(refs)
    ann = {
        "images": [{"id": i} for i in ids],
        "annotations": [{"image_id": i, "id": k, "caption": c} for k, (i, c) in enumerate((i, c) for i in ids for c in refs[i])],
    }
    res = [{"image_id": i, "caption": cands[i]} for i in ids]
    return _write(tmp_path / "ann.json", ann), _write(tmp_path / "res.json", res), refs, cands


def test_caption_file_scores_equal_caption_scores(coco_files):
    ann, res, refs, cands = coco_files
    got = score_file("caption", res, ann, metrics=METRICS)
    expected = caption_scores(refs, cands, METRICS)
    assert got["num_images"] == 30
    for k, v in expected.items():
        assert got[k] == pytest.approx(v, abs=1e-12)
    table = format_table(got)
    assert "CIDEr" in table and "num_images" in table and f"{got['CIDEr']:.4f}" in table


def test_caption_file_errors(coco_files, tmp_path):
    ann, res, _, _ = coco_files
    records = json.loads(res.read_text())
    unknown = _write(tmp_path / "unknown.json", records + [{"image_id": 99999, "caption": "x"}])
    with pytest.raises(MetricInputError, match=r"unknown\.json: result record #30 has image_id 99999"):
        score_file("caption", unknown, ann, metrics=METRICS)
    dup = _write(tmp_path / "dup.json", records + [records[0]])
    with pytest.raises(MetricInputError, match=r"records #0 and #30 both predict"):
        score_file("caption", dup, ann, metrics=METRICS)
    partial = _write(tmp_path / "partial.json", records[:10])
    with pytest.raises(MetricInputError, match=r"partial\.json: no prediction for 20 of 30"):
        score_file("caption", partial, ann, metrics=METRICS)
    assert score_file("caption", partial, ann, metrics=METRICS, allow_missing=True)["num_images"] == 10
    as_str = _write(tmp_path / "str.json", [{"image_id": str(r["image_id"]), "caption": r["caption"]} for r in records])
    with pytest.raises(MetricInputError, match="annotations use int ids"):
        score_file("caption", as_str, ann, metrics=METRICS)
    bad = _write(tmp_path / "bad.json", [{"image_id": records[0]["image_id"]}])
    with pytest.raises(MetricInputError, match=r"bad\.json: result record #0 has no 'caption'"):
        score_file("caption", bad, ann, metrics=METRICS)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(MetricInputError, match="not valid JSON"):
        score_file("caption", tmp_path / "broken.json", ann, metrics=METRICS)
    with pytest.raises(MetricInputError, match="does not exist"):
        score_file("caption", tmp_path / "nope.json", ann, metrics=METRICS)


@pytest.fixture
def vqa_files(tmp_path):
    anns, questions, results = [], [], []
    data = [
        (1, "yes/no", "is the", ["yes"] * 10, "yes"),
        (2, "number", "how many", ["2"] * 4 + ["3"] * 6, "two"),
        (3, "other", "what color", ["red"] * 2 + ["blue"] * 8, "Red"),
        (4, "yes/no", "is the", ["no"] * 10, "No"),
    ]
    for qid, at, qt, answers, pred in data:
        anns.append({
            "question_id": qid, "image_id": 100 + qid, "answer_type": at, "question_type": qt,
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)],
        })
        questions.append({"question_id": qid, "image_id": 100 + qid, "question": "?"})
        results.append({"question_id": qid, "answer": pred})
    return (
        _write(tmp_path / "vqa_ann.json", {"annotations": anns}),
        _write(tmp_path / "vqa_q.json", {"questions": questions}),
        _write(tmp_path / "vqa_res.json", results),
        data,
    )


def test_vqa_file(vqa_files, tmp_path):
    ann, ques, res, data = vqa_files
    got = score_file("vqa", res, ann, ques)
    # q1 1.0; q2 "two"->"2" matches 4 -> 1.0; q3 "Red"->"red" matches 2 -> 0.6; q4 unanimous "No" != "no" -> 0.
    assert got["overall"] == pytest.approx((1 + 1 + 0.6 + 0) / 4)
    assert got["perAnswerType"] == {"yes/no": 0.5, "number": 1.0, "other": pytest.approx(0.6)}
    assert got["num_questions"] == 4 and "perQuestion" not in got
    direct = vqa_scores({d[0]: d[4] for d in data}, {d[0]: d[3] for d in data})
    assert got["overall"] == direct["overall"]
    assert "perAnswerType/yes/no" in format_table(got, percent=True) and "50.00" in format_table(got, percent=True)

    missing_q = _write(tmp_path / "q2.json", {"questions": [{"question_id": 1}]})
    with pytest.raises(MetricInputError, match=r"q2\.json: 3 annotated question_id"):
        score_file("vqa", res, ann, missing_q)
    extra = _write(tmp_path / "extra.json", json.loads(res.read_text()) + [{"question_id": 77, "answer": "x"}])
    with pytest.raises(MetricInputError, match=r"extra\.json: result record #4 has question_id 77"):
        score_file("vqa", extra, ann)
    with pytest.raises(MetricInputError, match="unknown task"):
        score_file("retrieval", res, ann)
    with pytest.raises(MetricInputError, match="no 'annotations' list|'annotations' list"):
        score_file("vqa", res, ques)
