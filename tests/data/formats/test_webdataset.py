from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from polymodal.config import parse_source
from polymodal.data.formats import read_source
from polymodal.data.formats.webdataset import expand_braces, iter_shards, shard_list
from polymodal.data.report import DataReport
from polymodal.data.sources import WebDatasetSource
from polymodal.errors import DataError


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), color).save(buf, format="PNG")
    return buf.getvalue()


def _write_shard(path: Path, members: list[tuple[str, bytes]], gz: bool = False) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_brace_expansion() -> None:
    assert expand_braces("s-{000..003}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"]
    assert expand_braces("s-{8..11}.tar") == ["s-8.tar", "s-9.tar", "s-10.tar", "s-11.tar"]
    assert expand_braces("{a,b}-{0..1}") == ["a-0", "a-1", "b-0", "b-1"]
    assert expand_braces("x{1,{2..3}}") == ["x1", "x2", "x3"]
    assert expand_braces("{0..6..3}|{c..a}") == [
        "0|c",
        "0|b",
        "0|a",
        "3|c",
        "3|b",
        "3|a",
        "6|c",
        "6|b",
        "6|a",
    ]
    assert expand_braces("plain{x}.tar") == ["plain{x}.tar"]
    assert expand_braces("open{0..1") == ["open{0..1"]


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    _write_shard(
        tmp_path / "shard-000.tar",
        [
            ("0001.png", _png((255, 0, 0))),
            ("0001.txt", b"a red square\n"),
            ("0001.cls", b"3"),
            ("0002.png", _png((0, 255, 0))),
            (
                "0002.json",
                json.dumps({"caption": "green from json", "label": "green", "family": "color"}).encode(),
            ),
        ],
    )
    _write_shard(
        tmp_path / "shard-001.tar",
        [
            ("sub/0003.jpg", _png((0, 0, 255))),
            ("sub/0003.caption", b"   "),  # empty caption
            ("0004.png", _png((9, 9, 9))),
            ("0004.json", b"{not json"),
            ("0005.seg.png", _png((1, 1, 1))),  # extension 'seg.png' is no image key
            ("0006.txt", b"text only"),
        ],
        gz=True,
    )
    return tmp_path


def test_streams_two_shards_from_a_brace_pattern(shards: Path, report: DataReport) -> None:
    spec = parse_source({"format": "webdataset", "urls": "shard-{000..001}.tar"}, "test", shards)
    # the second shard is gzip-compressed though named .tar: stream mode 'r|*' detects it
    samples = list(read_source(spec, report))
    assert [s.sample_id for s in samples] == ["0001", "0002", "0006"]
    first, second, text_only = samples
    assert first.text == "a red square" and first.label == 3
    assert Image.open(io.BytesIO(first.image_bytes)).getpixel((0, 0)) == (255, 0, 0)
    assert first.image_path is None and first.origin == f"{shards / 'shard-000.tar'}:0001"
    assert second.text == "green from json" and second.label == "green" and second.meta["family"] == "color"
    assert text_only.image_bytes is None and text_only.text == "text only"
    assert report.counts["empty_text"] == 1  # sub/0003
    assert report.counts["bad_record"] == 2  # 0004 (bad JSON), 0005 (nothing usable)
    origins = {p.origin for p in report.problems}
    assert f"{shards / 'shard-001.tar'}:sub/0003" in origins


def test_read_is_a_lazy_generator(shards: Path, report: DataReport) -> None:
    spec = WebDatasetSource(
        format="webdataset", urls=[str(shards / "shard-000.tar"), str(shards / "shard-001.tar")]
    )
    it = iter(read_source(spec, report))
    assert next(it).sample_id == "0001"
    # a worker can take its own share of the shards
    share = shard_list(spec)[1::2]
    assert [s.sample_id for s in iter_shards(share, spec, report)] == ["0006"]


def test_missing_shard_is_named(shards: Path, report: DataReport) -> None:
    spec = WebDatasetSource(format="webdataset", urls=str(shards / "shard-{000..002}.tar"))
    with pytest.raises(DataError, match=r"shard not found: .*shard-002\.tar"):
        read_source(spec, report)


def test_truncated_shard_names_shard_and_member(tmp_path: Path, report: DataReport) -> None:
    good = _write_shard(
        tmp_path / "good.tar", [("a.txt", b"x" * 1000), ("b.txt", b"y" * 1000), ("c.txt", b"z")]
    )
    broken = tmp_path / "broken.tar"
    broken.write_bytes(good.read_bytes()[:2500])  # cut inside the data of b.txt (bytes 2048-3048)
    spec = WebDatasetSource(format="webdataset", urls=str(broken))
    with pytest.raises(DataError) as err:
        list(read_source(spec, report))
    assert str(broken) in str(err.value) and "in member 'b.txt'" in str(err.value)
    # cut inside a header: tarfile alone would stop quietly after a.txt
    broken.write_bytes(good.read_bytes()[: 1536 + 100])
    with pytest.raises(DataError, match=r"broken\.tar after member 'a\.txt'"):
        list(read_source(spec, report))


@pytest.mark.parametrize("gz", [False, True])
def test_a_shard_cut_at_a_member_boundary_is_reported(tmp_path: Path, gz: bool) -> None:
    """Before: 3 of 20 samples were read and data check said 'no problems'."""
    members = [(f"{i:04d}.{ext}", data) for i in range(6) for ext, data in (("png", _png((i, 0, 0))), ("txt", f"caption {i}".encode()))]
    whole = _write_shard(tmp_path / "whole.tar", members)
    with tarfile.open(whole) as tar:  # the byte offsets where each member's data (padded to 512 bytes) ends
        ends = [m.offset_data + -(-m.size // 512) * 512 for m in tar.getmembers()]
    raw = whole.read_bytes()[: ends[3]]  # after sample 0001's caption: the archive's end blocks are gone
    cut = tmp_path / ("cut.tar.gz" if gz else "cut.tar")
    if gz:
        import gzip

        raw = gzip.compress(raw)
    cut.write_bytes(raw)
    report = DataReport("cut")
    samples = list(read_source(WebDatasetSource(format="webdataset", urls=str(cut)), report))
    assert [s.text for s in samples] == ["caption 0", "caption 1"]
    assert report.num_problems == 1
    assert "without tar's end-of-archive blocks" in report.format() and "after member '0001.txt'" in report.format()
    whole_report = DataReport("whole")
    assert len(list(read_source(WebDatasetSource(format="webdataset", urls=str(whole)), whole_report))) == 6
    assert whole_report.num_problems == 0


def test_a_gzip_of_a_few_bytes_is_a_corrupt_shard(tmp_path: Path, report: DataReport) -> None:
    """Before: tarfile's TypeError ('ord() expected a character') came out bare."""
    tiny = tmp_path / "tiny.tar.gz"
    tiny.write_bytes(b"\x1f\x8b\x08")
    with pytest.raises(DataError, match=r"corrupt shard .*tiny\.tar\.gz at the start of the archive"):
        list(read_source(WebDatasetSource(format="webdataset", urls=str(tiny)), report))


def test_repeated_keys_and_members_are_counted_not_merged(tmp_path: Path) -> None:
    """Before: a second '.txt' of one sample replaced the first, and a key met again later made a second
    sample with the same id, both without a report."""
    shard = _write_shard(tmp_path / "dups.tar", [
        ("a.png", _png((1, 0, 0))), ("a.txt", b"caption A"), ("a.txt", b"caption B"),
        ("b.png", _png((2, 0, 0))), ("b.txt", b"caption of b"),
        ("a.png", _png((3, 0, 0))), ("a.txt", b"a second sample a"),
        ("c.png", _png((4, 0, 0))), ("c.txt", b"caption of c"),
    ])
    report = DataReport("dups")
    samples = list(read_source(WebDatasetSource(format="webdataset", urls=str(shard)), report))
    assert [(s.sample_id, s.text) for s in samples] == [("a", "caption A"), ("b", "caption of b"), ("c", "caption of c")]
    assert report.num_problems == 2
    assert "the sample has two 'txt' members; the first is kept" in report.format()
    assert "dups.tar:a: the key appears again after other samples" in report.format()


def test_json_captions_and_labels_of_the_wrong_type_are_bad_records(tmp_path: Path) -> None:
    """Before: {"caption": 5} dropped the sample without a report, and "label": true became a class."""
    shard = _write_shard(tmp_path / "json.tar", [
        ("a.png", _png((1, 0, 0))), ("a.json", json.dumps({"caption": 5}).encode()),
        ("b.png", _png((2, 0, 0))), ("b.json", json.dumps({"caption": "a fine caption", "label": True}).encode()),
        ("c.png", _png((3, 0, 0))), ("c.json", json.dumps({"caption": "a fine caption", "label": 2}).encode()),
    ])
    report = DataReport("json")
    samples = list(read_source(WebDatasetSource(format="webdataset", urls=str(shard)), report))
    assert [(s.sample_id, s.label) for s in samples] == [("c", 2)]
    assert "'caption' should be a string, got int 5" in report.format()
    assert "'label' should be a class name or number, got bool True" in report.format()


def test_non_tar_shard(tmp_path: Path, report: DataReport) -> None:
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(DataError, match=r"corrupt shard .*bad\.tar"):
        list(read_source(WebDatasetSource(format="webdataset", urls=str(bad)), report))


def test_remote_urls_are_refused_clearly(report: DataReport) -> None:
    with pytest.raises(DataError, match="not a local file"):
        read_source(WebDatasetSource(format="webdataset", urls="https://host/shard-{0..1}.tar"), report)


def test_an_empty_url_list_is_named_not_an_index_error(report: DataReport) -> None:
    with pytest.raises(DataError, match="urls is empty"):
        list(read_source(WebDatasetSource(format="webdataset", urls=[]), report))
