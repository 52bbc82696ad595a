from __future__ import annotations

import types
from pathlib import Path

import pytest

from polymodal.data.formats import READERS, describe, read_source, webdataset
from polymodal.data.sources import FORMAT_NAMES, CcTsvSource, WebDatasetSource
from polymodal.errors import ConfigError


def test_every_format_has_exactly_one_reader() -> None:
    assert sorted(READERS) == sorted(FORMAT_NAMES)
    assert READERS["webdataset"] is webdataset.read
    assert READERS["jsonl"] is READERS["csv"]


def test_read_source_without_report_and_unknown_format(tmp_path: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text("hi\tx.jpg\n\tempty.jpg\n", encoding="utf-8")
    samples = list(read_source(CcTsvSource(format="cc_tsv", path=tsv)))
    assert [s.text for s in samples] == ["hi"]
    with pytest.raises(ConfigError, match="unknown data format 'nope'"):
        read_source(types.SimpleNamespace(format="nope"))


def test_describe_names_the_main_file(tmp_path: Path) -> None:
    assert describe(CcTsvSource(format="cc_tsv", path=tmp_path / "c.tsv")) == f"cc_tsv {tmp_path / 'c.tsv'}"
    spec = WebDatasetSource(format="webdataset", urls=["/a/0.tar", "/a/1.tar"])
    assert describe(spec) == "webdataset /a/0.tar (+1 more)"
