from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.formats import read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import ClevrSource, GqaSource
from polymodal.errors import DataError

PROGRAM = [
    {"inputs": [], "function": "scene", "value_inputs": []},
    {"inputs": [0], "function": "count", "value_inputs": []},
]


def test_clevr_questions_answers_program(tmp_path: Path, write_json, report: DataReport) -> None:
    tree = {
        "info": {"split": "val", "version": "1.0"},
        "questions": [
            {
                "image_index": 0,
                "image_filename": "CLEVR_val_000000.png",
                "question": "How many things?",
                "answer": "3",
                "program": PROGRAM,
                "question_family_index": 39,
                "split": "val",
                "question_index": 0,
            },
            {
                "image_index": 0,
                "image_filename": "CLEVR_val_000000.png",
                "question": " ",
                "answer": "no",
                "split": "val",
                "question_index": 1,
            },
            {
                "image_index": 1,
                "question": "What color?",
                "answer": "red",
                "split": "val",
                "question_index": 2,
            },
        ],
    }
    path = write_json(tmp_path / "CLEVR_val_questions.json", tree)
    (tmp_path / "images" / "val").mkdir(parents=True)
    spec = ClevrSource(format="clevr", questions=path, images=tmp_path / "images" / "val")
    samples = list(read_source(spec, report))
    assert len(samples) == 1
    s = samples[0]
    assert (s.sample_id, s.text, s.answers, s.split, s.image_id) == (
        "0",
        "How many things?",
        ("3",),
        "val",
        "0",
    )
    assert s.image_path == tmp_path / "images" / "val" / "CLEVR_val_000000.png"
    assert s.meta["program"] == PROGRAM
    assert s.meta["question_family_index"] == 39
    assert report.counts["empty_text"] == 1
    assert report.counts["bad_record"] == 1
    assert any(p.origin == f"{path}:record 2" and "image_filename" in p.message for p in report.problems)


def test_clevr_test_split_has_no_answers(tmp_path: Path, write_json, report: DataReport) -> None:
    tree = {
        "questions": [
            {
                "image_index": 5,
                "image_filename": "CLEVR_test_000005.png",
                "question": "Is there a cube?",
                "split": "test",
                "question_index": 12,
            }
        ]
    }
    spec = ClevrSource(format="clevr", questions=write_json(tmp_path / "q.json", tree), images=tmp_path)
    (s,) = list(read_source(spec, report))
    assert s.answers == () and s.split == "test" and s.sample_id == "12"


def test_clevr_missing_questions_file(tmp_path: Path, report: DataReport) -> None:
    spec = ClevrSource(format="clevr", questions=tmp_path / "CLEVR_val_questions.json", images=tmp_path)
    with pytest.raises(
        DataError, match=r"clevr source: questions file not found: .*CLEVR_val_questions\.json"
    ):
        read_source(spec, report)


def test_gqa_keyed_questions(tmp_path: Path, write_json, report: DataReport) -> None:
    tree = {
        "201307251": {
            "imageId": "n161313",
            "question": "Is it overcast?",
            "answer": "no",
            "fullAnswer": "No, it is clear.",
            "types": {"structural": "verify"},
            "isBalanced": True,
        },
        "201640614": {"imageId": "n235859", "question": "Who is wearing the shirt?", "answer": "girl"},
        "201640615": {"imageId": "n235859", "question": ""},
        "201640616": {"question": "Where?", "answer": "here"},
    }
    path = write_json(tmp_path / "val_balanced_questions.json", tree)
    (tmp_path / "images").mkdir()
    spec = GqaSource(format="gqa", questions=path, images=tmp_path / "images")
    samples = list(read_source(spec, report))
    assert [s.sample_id for s in samples] == ["201307251", "201640614"]
    s = samples[0]
    assert s.image_path == tmp_path / "images" / "n161313.jpg"
    assert s.answers == ("no",) and s.image_id == "n161313" and s.split == "val"
    assert s.meta["fullAnswer"] == "No, it is clear." and s.meta["types"] == {"structural": "verify"}
    assert s.origin == f"{path}:question 201307251"
    assert report.counts["empty_text"] == 1 and report.counts["bad_record"] == 1


def test_gqa_list_is_rejected_with_file_name(tmp_path: Path, write_json, report: DataReport) -> None:
    path = write_json(tmp_path / "q.json", [1, 2])
    with pytest.raises(DataError, match="keyed by question id") as err:
        read_source(GqaSource(format="gqa", questions=path, images=tmp_path), report)
    assert str(path) in str(err.value)


def test_answers_and_splits_of_the_wrong_type_are_bad_records(tmp_path: Path, write_json, report: DataReport) -> None:
    (tmp_path / "images").mkdir()
    clevr = write_json(tmp_path / "CLEVR_val_questions.json", {"questions": [
        {"image_filename": "a.png", "question": "What colour?", "answer": {"a": 1}},
        {"image_filename": "a.png", "question": "What shape?", "answer": "cube", "split": ["val"]},
        {"image_filename": "a.png", "question": "How many?", "answer": 2},
    ]})
    samples = list(read_source(ClevrSource(format="clevr", questions=clevr, images=tmp_path / "images"), report))
    assert [s.answers for s in samples] == [("2",)]
    gqa = write_json(tmp_path / "val_balanced_questions.json", {"1": {"imageId": "n1", "question": "Which?", "answer": ["red"]}})
    assert list(read_source(GqaSource(format="gqa", questions=gqa, images=tmp_path / "images"), report)) == []
    assert [p.message for p in report.problems] == [
        "'answer' should be a string or a number, got dict {'a': 1}",
        "'split' should be a string, got list ['val']",
        "'answer' should be a string or a number, got list ['red']",
    ]
