from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.formats import coco_captions, read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import CocoCaptionsSource
from polymodal.errors import DataError


def _coco_tree() -> dict:
    return {
        "info": {"description": "tiny"},
        "images": [
            {"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "height": 3, "width": 4},
            {"id": 25, "file_name": "COCO_val2014_000000000025.jpg", "height": 3, "width": 4},
        ],
        "annotations": [
            {"id": 101, "image_id": 9, "caption": "A red square on a table.\n"},
            {"id": 102, "image_id": 9, "caption": "Something red."},
            {"id": 103, "image_id": 25, "caption": "   "},
            {"id": 104, "image_id": 25},
            {"id": 105, "image_id": 77, "caption": "an image nobody listed"},
        ],
    }


@pytest.fixture
def coco(tmp_path: Path, write_json, write_image) -> CocoCaptionsSource:
    ann = write_json(tmp_path / "annotations" / "captions_val2014.json", _coco_tree())
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000009.jpg")
    return CocoCaptionsSource(format="coco_captions", annotations=ann, images=tmp_path / "val2014")


def test_one_sample_per_caption_with_image_and_ids(coco: CocoCaptionsSource, report: DataReport) -> None:
    samples = list(coco_captions.read(coco, report))
    assert [s.sample_id for s in samples] == ["101", "102"]
    first = samples[0]
    assert first.text == "A red square on a table."  # trailing newline stripped
    assert first.image_id == "9"
    assert first.image_path == coco.images / "COCO_val2014_000000000009.jpg"
    assert first.split == "val2014"
    assert first.origin == f"{coco.annotations}:record 0"
    assert first.image_bytes is None


def test_problems_are_counted_and_located(coco: CocoCaptionsSource, report: DataReport) -> None:
    list(read_source(coco, report))
    assert report.counts["empty_text"] == 1
    assert report.counts["bad_record"] == 1  # annotation 104 has no caption
    assert report.counts["missing_image"] == 1  # image 77 is not in 'images'
    bad = next(p for p in report.problems if p.kind == "bad_record")
    assert bad.origin == f"{coco.annotations}:record 3"
    assert "caption" in bad.message


def test_missing_annotations_file_names_file_and_field(tmp_path: Path, report: DataReport) -> None:
    spec = CocoCaptionsSource(format="coco_captions", annotations=tmp_path / "nope.json", images=tmp_path)
    with pytest.raises(DataError, match=r"coco_captions source: annotations file not found: .*nope\.json"):
        read_source(spec, report)


def test_malformed_json_names_file_and_position(tmp_path: Path, report: DataReport) -> None:
    bad = tmp_path / "captions_train2014.json"
    bad.write_text('{"images": [], "annotations": [\n  {"id": 1,, }]}', encoding="utf-8")
    spec = CocoCaptionsSource(format="coco_captions", annotations=bad, images=tmp_path)
    with pytest.raises(DataError) as err:
        read_source(spec, report)
    assert str(bad) in str(err.value)
    assert "line 2 column" in str(err.value)


def test_wrong_top_level_shape(tmp_path: Path, write_json, report: DataReport) -> None:
    path = write_json(tmp_path / "captions.json", [{"caption": "x"}])
    spec = CocoCaptionsSource(format="coco_captions", annotations=path, images=tmp_path)
    with pytest.raises(DataError, match="'images' list"):
        read_source(spec, report)


def test_missing_images_folder(tmp_path: Path, write_json, report: DataReport) -> None:
    path = write_json(tmp_path / "captions.json", _coco_tree())
    spec = CocoCaptionsSource(format="coco_captions", annotations=path, images=tmp_path / "absent")
    with pytest.raises(DataError, match="images folder not found"):
        read_source(spec, report)


def test_captions_and_ids_of_the_wrong_type_are_bad_records(tmp_path: Path, write_json, report: DataReport) -> None:
    tree = _coco_tree()
    tree["images"].append({"id": {"a": 1}, "file_name": "x.jpg"})
    tree["images"].append({"id": 31, "file_name": ""})
    tree["annotations"] = [
        {"id": 1, "image_id": 9, "caption": ["a red", "square"]},
        {"id": 2, "image_id": 9, "caption": 42},
        {"id": [3], "image_id": 9, "caption": "a list id"},
        {"id": 4, "image_id": 9, "caption": "fine"},
    ]
    ann = write_json(tmp_path / "captions_val2014.json", tree)
    (tmp_path / "val2014").mkdir()
    samples = list(read_source(CocoCaptionsSource(format="coco_captions", annotations=ann, images=tmp_path / "val2014"), report))
    assert [s.text for s in samples] == ["fine"]
    messages = [p.message for p in report.problems]
    assert messages == [
        "'id' should be a string or an integer id, got dict {'a': 1}",
        "'file_name' should be a file name, got ''",
        "'caption' should be a string, got list ['a red', 'square']",
        "'caption' should be a string, got int 42",
        "'id' should be a string or an integer id, got list [3]",
    ]


def test_an_image_id_listed_twice_keeps_its_first_file(tmp_path: Path, write_json, report: DataReport) -> None:
    """Before: the second listing replaced the first, so image 9's captions were loaded with another file."""
    tree = _coco_tree()
    tree["images"].append({"id": 9, "file_name": "someone_else.jpg"})
    ann = write_json(tmp_path / "captions_val2014.json", tree)
    (tmp_path / "val2014").mkdir()
    samples = list(coco_captions.read(CocoCaptionsSource(format="coco_captions", annotations=ann, images=tmp_path / "val2014"), report))
    assert {s.image_path.name for s in samples if s.image_id == "9"} == {"COCO_val2014_000000000009.jpg"}
    assert "[duplicate_id]" in report.format() and "image id 9 is listed again (first as 'COCO_val2014_000000000009.jpg')" in report.format()
