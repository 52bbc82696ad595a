from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.formats import read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import KarpathySource


def _sent(raw: str, sentid: int, imgid: int) -> dict:
    return {"tokens": raw.lower().split(), "raw": raw, "imgid": imgid, "sentid": sentid}


def _coco_tree() -> dict:
    return {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_000000391895.jpg",
                "imgid": 0,
                "split": "test",
                "cocoid": 391895,
                "sentences": [_sent("A man riding a bike.", 0, 0), _sent("Someone cycles.", 1, 0)],
            },
            {
                "filepath": "val2014",
                "filename": "COCO_val2014_000000522418.jpg",
                "imgid": 1,
                "split": "restval",
                "cocoid": 522418,
                "sentences": [_sent("A woman cutting cake.", 2, 1), _sent("", 3, 1)],
            },
            {
                "filepath": "train2014",
                "filename": "COCO_train2014_000000000009.jpg",
                "imgid": 2,
                "split": "train",
                "cocoid": 9,
                "sentences": [_sent("Food on a plate.", 4, 2)],
            },
            {
                "filepath": "val2014",
                "filename": "x.jpg",
                "imgid": 3,
                "split": "val",
                "cocoid": 3,
                "sentences": [_sent("A val picture.", 5, 3), {"tokens": [], "sentid": 6}],
            },
        ],
    }


@pytest.fixture
def coco_json(tmp_path: Path, write_json) -> Path:
    (tmp_path / "coco").mkdir()
    return write_json(tmp_path / "dataset_coco.json", _coco_tree())


def _read(path: Path, report: DataReport, **kw) -> list:
    spec = KarpathySource(format="karpathy", path=path, images=path.parent / "coco", **kw)
    return list(read_source(spec, report))


def test_all_splits_one_sample_per_sentence(coco_json: Path, report: DataReport) -> None:
    samples = _read(coco_json, report)
    assert [s.sample_id for s in samples] == ["0", "1", "2", "4", "5"]
    s = samples[0]
    assert s.text == "A man riding a bike." and s.image_id == "391895" and s.split == "test"
    assert s.image_path == coco_json.parent / "coco" / "val2014" / "COCO_val2014_000000391895.jpg"
    assert s.meta["tokens"] == ("a", "man", "riding", "a", "bike.")
    assert s.origin == f"{coco_json}:record 0 sentence 0"
    assert samples[2].split == "train" and samples[2].meta["karpathy_split"] == "restval"
    assert report.counts["empty_text"] == 1 and report.counts["bad_record"] == 1


def test_split_filter_and_restval(coco_json: Path, report: DataReport) -> None:
    assert [s.sample_id for s in _read(coco_json, report, split="train")] == ["2", "4"]
    assert [s.sample_id for s in _read(coco_json, report, split="train", restval_as_train=False)] == ["4"]
    restval = _read(coco_json, report, split="restval", restval_as_train=False)
    assert [s.split for s in restval] == ["restval"]
    assert [s.sample_id for s in _read(coco_json, report, split="test")] == ["0", "1"]


def test_flickr_without_filepath_or_cocoid(tmp_path: Path, write_json, report: DataReport) -> None:
    tree = {
        "dataset": "flickr30k",
        "images": [
            {
                "filename": "1000092795.jpg",
                "imgid": 0,
                "split": "train",
                "sentences": [_sent("Two young guys.", 0, 0)],
            }
        ],
    }
    path = write_json(tmp_path / "dataset_flickr30k.json", tree)
    (tmp_path / "coco").mkdir()
    (s,) = _read(path, report)
    assert s.image_path == tmp_path / "coco" / "1000092795.jpg" and s.image_id == "0"


def test_split_names_are_read_whatever_their_case_and_unknown_ones_counted(tmp_path: Path, write_json, report: DataReport) -> None:
    """'Train' used to match no split filter, and 'dev' vanished from every split without a count."""
    tree = _coco_tree()
    tree["images"][2]["split"] = "Train "
    tree["images"][3]["split"] = "dev"
    path = write_json(tmp_path / "dataset_coco.json", tree)
    (tmp_path / "coco").mkdir()
    assert [s.sample_id for s in _read(path, report, split="train", restval_as_train=False)] == ["4"]
    assert report.counts["bad_record"] == 1
    assert report.problems[0].origin == f"{path}:record 3" and "split 'dev' is none of train, val, test, restval" in report.problems[0].message
