from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.config import parse_source
from polymodal.data.formats import read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import VqaV2Source
from polymodal.errors import DataError


def _answers(*words: str) -> list[dict]:
    return [{"answer": w, "answer_confidence": "yes", "answer_id": i + 1} for i, w in enumerate(words)]


def _questions() -> dict:
    return {
        "info": {},
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 42, "question": "Is the cube red?", "question_id": 42000},
            {
                "image_id": 42,
                "question": "How many spheres?",
                "question_id": 42001,
                "family": "count",
                "template": 3,
                "held_out": True,
            },
            {"image_id": 7, "question": "What shape is it?", "question_id": 7000},
            {"image_id": 7, "question": "", "question_id": 7001},
            {"image_id": 7, "question_id": 7002},
        ],
    }


def _annotations() -> dict:
    ten_yes = _answers(*(["yes"] * 9 + ["no"]))
    return {
        "annotations": [
            {
                "question_id": 42000,
                "image_id": 42,
                "question_type": "is the",
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": ten_yes,
            },
            {
                "question_id": 42001,
                "image_id": 42,
                "question_type": "how many",
                "answer_type": "count",
                "multiple_choice_answer": "2",
                "answers": _answers(*(["2"] * 10)),
            },
            {
                "question_id": 99999,
                "image_id": 1,
                "question_type": "what",
                "answer_type": "other",
                "multiple_choice_answer": "x",
                "answers": _answers("x"),
            },
        ]
    }


@pytest.fixture
def vqa_files(tmp_path: Path, write_json) -> dict[str, Path]:
    (tmp_path / "val2014").mkdir()
    return {
        "questions": write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", _questions()),
        "annotations": write_json(tmp_path / "v2_mscoco_val2014_annotations.json", _annotations()),
        "images": tmp_path / "val2014",
    }


def test_samples_answers_meta_and_coco_image_names(vqa_files, report: DataReport) -> None:
    spec = VqaV2Source(format="vqa_v2", **vqa_files)
    samples = {s.sample_id: s for s in read_source(spec, report)}
    assert sorted(samples) == ["42000", "42001"]
    s = samples["42000"]
    assert s.text == "Is the cube red?"
    assert s.answers == tuple(["yes"] * 9 + ["no"])
    assert s.image_path == vqa_files["images"] / "COCO_val2014_000000000042.jpg"
    assert s.image_id == "42" and s.split == "val2014"
    assert s.meta["answer_type"] == "yes/no"
    assert s.meta["question_type"] == "is the"
    assert s.meta["multiple_choice_answer"] == "yes"
    assert s.origin == f"{vqa_files['questions']}:question 42000"
    # extra keys on the question record survive in meta
    extra = samples["42001"].meta
    assert (extra["family"], extra["template"], extra["held_out"]) == ("count", 3, True)


def test_problems_no_annotation_unknown_type_empty_bad_no_question(vqa_files, report: DataReport) -> None:
    spec = VqaV2Source(format="vqa_v2", **vqa_files)
    samples = list(read_source(spec, report))
    assert report.counts["no_annotation"] == 1  # question 7000
    assert report.counts["empty_text"] == 1  # question 7001
    assert report.counts["bad_record"] == 1  # question 7002 has no 'question'
    assert report.counts["unknown_answer_type"] == 1  # 'count' is not a VQA answer type
    assert report.counts["no_question"] == 1  # annotation 99999
    kept = [s for s in samples if s.meta["answer_type"] == "count"]
    assert len(kept) == 1, "a sample with an unknown answer type is kept"
    no_ann = next(p for p in report.problems if p.kind == "no_annotation")
    assert "7000" in no_ann.origin
    bad = next(p for p in report.problems if p.kind == "bad_record")
    assert bad.origin.endswith(":record 4") and "question" in bad.message


def test_test_dev_without_annotations_has_empty_answers(vqa_files, report: DataReport) -> None:
    spec = VqaV2Source(format="vqa_v2", questions=vqa_files["questions"], images=vqa_files["images"])
    samples = list(read_source(spec, report))
    assert len(samples) == 3
    assert all(s.answers == () for s in samples)
    assert report.counts["no_annotation"] == 0


def test_image_template_from_yaml_mapping(tmp_path: Path, write_json, report: DataReport) -> None:
    q = _questions()
    q["data_subtype"] = "train"
    write_json(tmp_path / "q.json", q)
    (tmp_path / "img").mkdir()
    spec = parse_source(
        {
            "format": "vqa_v2",
            "questions": "q.json",
            "images": "img",
            "image_template": "{split}_{image_id:06d}.png",
        },
        "test",
        tmp_path,
    )
    first = next(iter(read_source(spec, report)))
    assert first.image_path == (tmp_path / "img" / "train_000042.png").resolve()


def test_bad_template_and_missing_subtype(tmp_path: Path, write_json, report: DataReport) -> None:
    q = _questions()
    del q["data_subtype"]
    write_json(tmp_path / "q.json", q)
    spec = VqaV2Source(format="vqa_v2", questions=tmp_path / "q.json", images=tmp_path)
    with pytest.raises(DataError, match="data_subtype"):
        read_source(spec, report)
    spec = VqaV2Source(
        format="vqa_v2", questions=tmp_path / "q.json", images=tmp_path, image_template="{imgid}.png"
    )
    with pytest.raises(DataError, match="image_template"):
        read_source(spec, report)


def test_missing_annotations_file_names_field(vqa_files, tmp_path: Path, report: DataReport) -> None:
    spec = VqaV2Source(
        format="vqa_v2",
        questions=vqa_files["questions"],
        annotations=tmp_path / "a.json",
        images=vqa_files["images"],
    )
    with pytest.raises(DataError, match=r"vqa_v2 source: annotations file not found: .*a\.json"):
        read_source(spec, report)
    spec = VqaV2Source(format="vqa_v2", questions=tmp_path / "q.json", images=vqa_files["images"])
    with pytest.raises(DataError, match=r"vqa_v2 source: questions file not found: .*q\.json"):
        read_source(spec, report)


def test_empty_or_ill_typed_answers_and_ids_are_bad_records(tmp_path: Path, write_json, report: DataReport) -> None:
    """An empty answer list used to pass the reader and vanish in the VQA task; a null answer became 'None'."""
    questions = _questions()
    questions["questions"] = [
        {"image_id": 42, "question": "Is the cube red?", "question_id": 1},
        {"image_id": 42, "question": "What colour?", "question_id": 2},
        {"image_id": 42, "question": 42, "question_id": 3},
        {"image_id": 42, "question": "Which?", "question_id": [4]},
    ]
    annotations = {
        "annotations": [
            {"question_id": 1, "image_id": 42, "answer_type": "yes/no", "answers": []},
            {"question_id": 2, "image_id": 42, "answer_type": "other", "answers": [{"answer": None}, {"answer": "red"}]},
            {"question_id": 3, "image_id": 42, "answer_type": "other", "answers": _answers("x")},
        ]
    }
    (tmp_path / "val2014").mkdir()
    spec = VqaV2Source(
        format="vqa_v2",
        questions=write_json(tmp_path / "q.json", questions),
        annotations=write_json(tmp_path / "a.json", annotations),
        images=tmp_path / "val2014",
        data_subtype="val2014",
    )
    assert list(read_source(spec, report)) == []
    messages = [p.message for p in report.problems if p.kind == "bad_record"]
    assert "question 1 has an empty 'answers' list" in messages
    assert "'answer' should be a string or a number, got NoneType None" in messages
    assert "'question' should be a string, got int 42" in messages
    assert "'question_id' should be a string or an integer id, got list [4]" in messages


def test_a_question_annotated_twice_keeps_its_first_answers(vqa_files, write_json, report: DataReport) -> None:
    """Before: the second annotation replaced the first's ten answers without a word."""
    annotations = _annotations()
    first = next(a for a in annotations["annotations"] if a["question_id"] == 42000)
    annotations["annotations"].append(first | {"answers": _answers(*["no"] * 10)})
    write_json(vqa_files["annotations"], annotations)
    samples = {s.sample_id: s for s in read_source(VqaV2Source(format="vqa_v2", **vqa_files), report)}
    assert samples["42000"].answers == tuple(["yes"] * 9 + ["no"])
    assert "question_id 42000 is annotated again (first in record" in report.format()
