from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.formats import read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import ScenesSource
from polymodal.errors import DataError


def _source(path: Path, images: Path, **kw) -> ScenesSource:
    return ScenesSource(format="scenes", path=path, images=images, **kw)


def test_world_layout_fractions_and_attributes(tmp_path: Path, write_json, report: DataReport) -> None:
    tree = {
        "info": {"split": "train"},
        "scenes": [
            {
                "image_id": 7,
                "image_filename": "train_000007.png",
                "objects": [
                    {"shape": "cube", "color": "red", "size": "small", "material": "metal", "x": 0.25, "y": 0.75},
                    {"shape": "cone", "color": "blue", "size": "large", "material": "rubber", "x": 0.5, "y": 0.1},
                ],
            }
        ],
    }
    (tmp_path / "images").mkdir()
    samples = list(read_source(_source(write_json(tmp_path / "scenes.json", tree), tmp_path / "images"), report))
    assert len(samples) == 1
    s = samples[0]
    assert (s.image_id, s.split, s.text, s.image_path) == ("7", "train", None, tmp_path / "images" / "train_000007.png")
    objects = s.meta["objects"]
    assert objects[0] == {"x": 0.25, "y": 0.75, "attributes": {"shape": "cube", "color": "red", "size": "small", "material": "metal"}}
    assert objects[1]["attributes"]["color"] == "blue"
    assert sum(report.counts.values()) == 0


def test_clevr_pixel_coords_need_the_image_size(tmp_path: Path, write_json, report: DataReport) -> None:
    obj = {"color": "gray", "shape": "sphere", "size": "large", "material": "rubber", "pixel_coords": [240, 80, 11.2], "3d_coords": [0, 1, 0.7], "rotation": 12.0}
    tree = {"scenes": [{"image_index": 0, "image_filename": "CLEVR_val_000000.png", "objects": [obj]}]}
    (tmp_path / "images").mkdir()
    path = write_json(tmp_path / "CLEVR_val_scenes.json", tree)
    samples = list(read_source(_source(path, tmp_path / "images", image_size=(480, 320)), report))
    assert samples[0].image_id == "0"
    assert samples[0].meta["objects"][0] == {"x": 0.5, "y": 0.25, "attributes": {"color": "gray", "shape": "sphere", "size": "large", "material": "rubber"}}

    report = DataReport("again")
    assert list(read_source(_source(path, tmp_path / "images"), report)) == []
    assert report.counts["bad_record"] == 1
    assert "image_size" in report.problems[0].message


@pytest.mark.parametrize(
    "obj, expected",
    [
        ({"color": "red", "x": 1.5, "y": 0.5}, "outside the image"),
        ({"color": "red", "x": "left", "y": 0.5}, "must be numbers"),
        ({"color": "red"}, "neither 'x'/'y' nor 'pixel_coords'"),
        ({"x": 0.5, "y": 0.5}, "no string attributes"),
        ("cube", "must be a mapping"),
    ],
)
def test_a_bad_object_drops_its_scene_with_a_counted_reason(tmp_path: Path, write_json, obj, expected: str) -> None:
    good = {"image_id": 1, "image_filename": "a.png", "objects": [{"color": "red", "x": 0.5, "y": 0.5}]}
    bad = {"image_id": 2, "image_filename": "b.png", "objects": [{"color": "red", "x": 0.2, "y": 0.2}, obj]}
    (tmp_path / "images").mkdir()
    report = DataReport("scenes")
    samples = list(read_source(_source(write_json(tmp_path / "s.json", {"scenes": [good, bad]}), tmp_path / "images"), report))
    assert [s.image_id for s in samples] == ["1"]
    assert sum(report.counts.values()) == 1
    assert report.num_problems == 1  # a kind `data check` counts as a problem (it exits non-zero), not only a count
    assert expected in report.problems[0].message and "scene 1, object 1" in report.problems[0].origin


def test_pixel_coords_given_as_strings_are_read_as_numbers_and_a_zero_image_size_is_refused(tmp_path: Path, write_json, report: DataReport) -> None:
    from polymodal.config import parse_source
    from polymodal.errors import ConfigError

    obj = {"color": "red", "pixel_coords": ["240", "80", 3]}
    (tmp_path / "images").mkdir()
    path = write_json(tmp_path / "s.json", {"scenes": [{"image_id": 1, "image_filename": "a.png", "objects": [obj]}]})
    (s,) = read_source(_source(path, tmp_path / "images", image_size=(480, 320)), report)
    assert s.meta["objects"][0]["x"] == 0.5
    # an 'x' without a 'y' leaves pixel_coords to place the object, and they are pixels all the same
    path = write_json(tmp_path / "s.json", {"scenes": [{"image_id": 1, "image_filename": "a.png", "objects": [obj | {"x": 7}]}]})
    (s,) = read_source(_source(path, tmp_path / "images", image_size=(480, 320)), report)
    assert (s.meta["objects"][0]["x"], s.meta["objects"][0]["y"]) == (0.5, 0.25)
    with pytest.raises(ConfigError, match=r"image_size\[0\].*greater than 0"):
        parse_source({"format": "scenes", "path": str(path), "images": str(tmp_path / "images"), "image_size": [0, 0]}, "inline", tmp_path)


def test_missing_file_and_folder_are_named(tmp_path: Path, write_json) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="scenes.json"):
        list(read_source(_source(tmp_path / "scenes.json", tmp_path / "images")))
    path = write_json(tmp_path / "scenes.json", {"scenes": []})
    with pytest.raises(DataError, match="nowhere"):
        list(read_source(_source(path, tmp_path / "nowhere")))
