"""The LLaVA conversation reader: the layout's variants, and every record-level rule with its reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.formats import llava, read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import LlavaSource
from polymodal.errors import DataError


def _h(v: str) -> dict:
    return {"from": "human", "value": v}


def _g(v: str) -> dict:
    return {"from": "gpt", "value": v}


RECORDS = [
    {"id": "ok", "image": "a.png", "conversations": [_h("<image>\nWhat is it?"), _g("a cube"), _h("Color?"), _g("red")], "kind": "qa"},
    {"id": "roles", "image": "a.png", "conversations": [{"from": "user", "value": "What?\n<image>"}, {"from": "assistant", "value": "x"}]},
    {"id": "two_images", "image": ["a.png", "sub/b.png"], "conversations": [_h("<image> and <image>: same?"), _g("no")]},
    {"id": "text_only", "conversations": [_h("Say hi."), _g("hi")]},
    {"id": "no_answer", "image": "a.png", "conversations": [_h("<image>\nWhat?")]},
    {"id": "gpt_first", "image": "a.png", "conversations": [_g("hello"), _h("<image>\nWhat?")]},
    {"id": "marker_missing", "image": "a.png", "conversations": [_h("What is it?"), _g("a cube")]},
    {"id": "marker_extra", "conversations": [_h("<image>\nWhat is it?"), _g("a cube")]},
    {"id": "marker_in_answer", "image": "a.png", "conversations": [_h("<image>\nWhat?"), _g("<image>")]},
    {"id": "empty_turn", "image": "a.png", "conversations": [_h("<image>\nWhat?"), _g("  ")]},
    {"id": "bad_speaker", "image": "a.png", "conversations": [_h("<image>\nWhat?"), {"from": "robot", "value": "x"}]},
    {"id": "bad_image", "image": 7, "conversations": [_h("<image>\nWhat?"), _g("x")]},
    "not an object",
]


@pytest.fixture
def source(tmp_path: Path, write_json, write_image) -> LlavaSource:
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "sub" / "b.png")
    path = write_json(tmp_path / "chat.json", RECORDS)
    return LlavaSource(format="llava", path=path, images=tmp_path / "imgs")


def test_valid_records_become_conversations(source: LlavaSource, report: DataReport) -> None:
    samples = {s.sample_id: s for s in llava.read(source, report)}
    assert sorted(samples) == ["ok", "roles", "text_only", "two_images"]
    ok = samples["ok"]
    assert ok.conversation == (("user", "<image>\nWhat is it?"), ("assistant", "a cube"), ("user", "Color?"), ("assistant", "red"))
    assert ok.image_path == source.images / "a.png" and ok.more_images == ()
    assert ok.meta == {"kind": "qa"} and ok.text is None  # other tasks never take a conversation for a caption
    assert samples["roles"].conversation[0][0] == "user"
    assert samples["two_images"].more_images == (source.images / "sub" / "b.png",)
    assert samples["text_only"].image_path is None


def test_every_rejected_record_is_counted_with_its_reason(source: LlavaSource, report: DataReport) -> None:
    list(llava.read(source, report))
    text = report.format()
    assert report.num_problems == 9
    for reason in ("no assistant ('gpt') turn", "turns must alternate", "1 image(s) but 0 <image> marker", "0 image(s) but 1 <image>",
                   "marker stands in an assistant turn", "empty value", "unknown speaker 'robot'", "'image' must be a path",
                   "expected an object with 'conversations'"):
        assert reason in text, reason


def test_file_level_errors_name_the_file(tmp_path: Path, write_json) -> None:
    spec = LlavaSource(format="llava", path=write_json(tmp_path / "x.json", {"data": []}), images=tmp_path)
    with pytest.raises(DataError, match=r"x\.json should hold a JSON list"):
        list(read_source(spec))
    missing = LlavaSource(format="llava", path=tmp_path / "nope.json", images=tmp_path)
    with pytest.raises(DataError, match="nope.json"):
        list(read_source(missing))
