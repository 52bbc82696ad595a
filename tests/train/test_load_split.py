"""Records a task cannot use are counted by reason in the log, not dropped without a word; records of
another kind (the questions of a mixed source, for a retrieval task) are only counted."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest

from polymodal.config import DataConfig
from polymodal.tasks import build_task
from polymodal.train.data import load_split


def _split(source: dict, task: str, caplog: pytest.LogCaptureFixture) -> list:
    with caplog.at_level(logging.INFO, logger="polymodal"):
        return load_split(DataConfig(train=[source]), "train", build_task(task, None, 16))


def test_regression_counts_labels_that_are_not_numbers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "reg.csv").write_text("image,text,score\na.png,a red square,1.5\nb.png,a green square,-0.5\na.png,red,n/a\nb.png,green,none\n")
    kept = _split({"format": "csv", "path": str(tmp_path / "reg.csv"), "label_field": "score"}, "regression", caplog)
    assert [s.label for s in kept] == [1.5, -0.5]
    assert "2 records the regression task cannot use, left out: 2 x a label that is not a number" in caplog.text
    assert "reg.csv:line 4" in caplog.text  # the first one is named


def _shard(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_retrieval_counts_images_without_captions_and_captions_without_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _shard(tmp_path / "shard-000.tar", {"s0.jpg": b"x", "s0.txt": b"a red cube", "s1.txt": b"lost its image", "s2.jpg": b"x"})
    kept = _split({"format": "webdataset", "urls": [str(tmp_path / "shard-000.tar")]}, "retrieval", caplog)
    assert [s.text for s in kept] == ["a red cube"]
    assert "2 records the retrieval task cannot use" in caplog.text
    assert "1 x a caption without an image (first: " in caplog.text and "shard-000.tar:s1" in caplog.text
    assert "1 x an image without a caption" in caplog.text and "shard-000.tar:s2" in caplog.text


def test_records_of_another_kind_are_not_called_unusable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"image": "a.png", "text": "a red cube"},
        {"image": "a.png", "text": "what colour is the cube?", "answers": ["red"]},
        {"image": "a.png", "text": "the cube is red", "label": "true"},
    ]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = _split({"format": "jsonl", "path": str(tmp_path / "mixed.jsonl"), "answers_field": "answers", "label_field": "label"}, "retrieval", caplog)
    assert [s.text for s in kept] == ["a red cube"]
    assert "cannot use" not in caplog.text
    assert "1 retrieval samples" in caplog.text and "(2 records of other kinds left to other tasks)" in caplog.text


def test_vqa_counts_questions_without_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [{"image": "a.png", "text": "what colour?", "answers": ["red"]}, {"text": "what shape?", "answers": ["cube"]}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = _split({"format": "jsonl", "path": str(tmp_path / "q.jsonl"), "answers_field": "answers"}, "vqa", caplog)
    assert len(kept) == 1
    assert "1 records the vqa task cannot use, left out: 1 x a question without an image" in caplog.text


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_training_labels_of_one_value_are_a_data_error_naming_the_split(task: str) -> None:
    from polymodal.data.sample import Sample
    from polymodal.errors import DataError

    samples = [Sample(str(i), text="a row", label=1.0 if task == "regression" else "red") for i in range(3)]
    with pytest.raises(DataError, match=r"data\.train.*need at least 2|data\.train.*needs at least 2"):
        build_task(task, None, 16).prepare(samples)
