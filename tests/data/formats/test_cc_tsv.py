from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.formats import read_source
from polymodal.data.formats.cc_tsv import is_url
from polymodal.data.report import DataReport
from polymodal.data.sources import CcTsvSource
from polymodal.errors import DataError


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_paths_urls_url_map_and_basename(tmp_path: Path, report: DataReport) -> None:
    images = tmp_path / "images"
    images.mkdir()
    url_map = _write(tmp_path / "map.tsv", ["http://ex.com/a/b.jpg?x=1\t000001.jpg"])
    tsv = _write(
        tmp_path / "train.tsv",
        [
            "caption\turl",
            "a dog on a beach\thttp://ex.com/a/b.jpg?x=1",  # via url_map
            "a cat\thttps://cdn.ex.org/img/cat%20one.png",  # basename fallback
            "a local file\tsub/x.jpg",  # relative path -> under images
            f"absolute\t{tmp_path / 'abs.jpg'}",
            "\thttp://ex.com/empty.jpg",  # empty caption
            "no tab here",  # bad record
        ],
    )
    spec = CcTsvSource(format="cc_tsv", path=tsv, images=images, url_map=url_map, has_header=True)
    samples = list(read_source(spec, report))
    assert [s.text for s in samples] == ["a dog on a beach", "a cat", "a local file", "absolute"]
    assert [s.image_path for s in samples] == [
        images / "000001.jpg",
        images / "cat one.png",
        images / "sub" / "x.jpg",
        tmp_path / "abs.jpg",
    ]
    assert samples[0].origin == f"{tsv}:line 2" and samples[0].sample_id == "2"
    assert samples[0].image_id == "http://ex.com/a/b.jpg?x=1"
    assert report.counts["empty_text"] == 1
    assert report.counts["bad_record"] == 1
    assert next(p for p in report.problems if p.kind == "bad_record").origin == f"{tsv}:line 7"


def test_unresolvable_url_is_missing_image(tmp_path: Path, report: DataReport) -> None:
    tsv = _write(tmp_path / "cc.tsv", ["caption one\thttp://ex.com/1.jpg", "caption two\tlocal.jpg"])
    spec = CcTsvSource(format="cc_tsv", path=tsv)
    samples = list(read_source(spec, report))
    assert [s.image_path for s in samples] == [tmp_path / "local.jpg"]  # relative to the TSV's folder
    assert report.counts["missing_image"] == 1
    problem = report.problems[0]
    assert problem.origin == f"{tsv}:line 1" and "http://ex.com/1.jpg" in problem.message


def test_header_row_is_a_record_without_has_header(tmp_path: Path, report: DataReport) -> None:
    tsv = _write(tmp_path / "cc.tsv", ["caption\turl", "x\ty.jpg"])
    assert len(list(read_source(CcTsvSource(format="cc_tsv", path=tsv), report))) == 2


def test_missing_files_name_the_field(tmp_path: Path, report: DataReport) -> None:
    with pytest.raises(DataError, match=r"cc_tsv source: path file not found: .*gone\.tsv"):
        read_source(CcTsvSource(format="cc_tsv", path=tmp_path / "gone.tsv"), report)
    tsv = _write(tmp_path / "cc.tsv", ["x\ty.jpg"])
    with pytest.raises(DataError, match=r"cc_tsv source: url_map file not found: .*map\.tsv"):
        read_source(CcTsvSource(format="cc_tsv", path=tsv, url_map=tmp_path / "map.tsv"), report)


def test_is_url() -> None:
    assert is_url("https://a/b.jpg") and not is_url("C:\\x\\y.jpg") and not is_url("a/b.jpg")


def test_two_urls_ending_in_one_file_name_are_not_aliased(tmp_path: Path, report: DataReport) -> None:
    """Before: three hosts' '0.jpg' all became images/0.jpg, with the three captions on one image."""
    (tmp_path / "images").mkdir()
    tsv = _write(tmp_path / "cc.tsv", [
        "a red car\thttps://a.example/photos/0.jpg",
        "the red car again\thttps://a.example/photos/0.jpg",  # the same URL: the same image, another caption
        "a blue boat\thttps://b.example/u/99/0.jpg",
        "a mapped one\thttps://c.example/img/0.jpg",
    ])
    url_map = _write(tmp_path / "map.tsv", ["https://c.example/img/0.jpg\tc0.jpg"])
    samples = list(read_source(CcTsvSource(format="cc_tsv", path=tsv, images=tmp_path / "images", url_map=url_map), report))
    assert [(s.text, s.image_path.name) for s in samples] == [("a red car", "0.jpg"), ("the red car again", "0.jpg"), ("a mapped one", "c0.jpg")]
    assert report.num_problems == 1
    assert "https://b.example/u/99/0.jpg and https://a.example/photos/0.jpg" in report.format() and "Give a url_map" in report.format()
