from __future__ import annotations

import json
from pathlib import Path

import pytest

from polymodal.config import parse_source
from polymodal.data.formats import read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import TableSource
from polymodal.errors import DataError


def test_jsonl_fields_paths_meta_and_bad_lines(tmp_path: Path, report: DataReport) -> None:
    lines = [
        json.dumps(
            {
                "id": "a",
                "image": "imgs/a.png",
                "text": "a red cube",
                "label": "cube",
                "split": "train",
                "answers": ["red", "red", "crimson"],
                "family": "color",
                "sound": "a.wav",
            }
        ),
        "",
        '{"id": "b", "image": "/abs/b.png", "text": "broken',
        json.dumps([1, 2]),
        json.dumps({"id": "c", "image": "c.png", "text": "  ", "label": 2}),
        json.dumps({"image": "d.png", "text": "no id"}),
        json.dumps({"id": "e", "image": "e.png", "label": 0.5}),
    ]
    path = tmp_path / "data" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = TableSource(format="jsonl", path=path, id_field="id", answers_field="answers", audio_field="sound")
    samples = list(read_source(spec, report))
    assert [s.sample_id for s in samples] == ["a", "e"]
    a, e = samples
    assert a.image_path == path.parent / "imgs" / "a.png"
    assert a.audio_path == path.parent / "a.wav"
    assert (a.text, a.label, a.split) == ("a red cube", "cube", "train")
    assert a.answers == ("red", "red", "crimson")
    assert a.meta == {"family": "color"}
    assert a.origin == f"{path}:line 1"
    assert e.label == 0.5 and e.text is None and e.origin == f"{path}:line 7"
    assert report.counts["bad_record"] == 3  # malformed JSON (line 3), a list (line 4), no id (line 6)
    assert report.counts["empty_text"] == 1
    bad = [p for p in report.problems if p.kind == "bad_record"]
    assert [p.origin for p in bad] == [f"{path}:line 3", f"{path}:line 4", f"{path}:line 6"]
    assert "not valid JSON" in bad[0].message


def test_jsonl_root_option_from_yaml_mapping(tmp_path: Path, report: DataReport) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "rows.jsonl").write_text(
        json.dumps({"img": "x.png", "caption": "hello"}) + "\n", encoding="utf-8"
    )
    spec = parse_source(
        {
            "format": "jsonl",
            "path": "rows.jsonl",
            "root": "media",
            "image_field": "img",
            "text_field": "caption",
        },
        "test",
        tmp_path,
    )
    (s,) = list(read_source(spec, report))
    assert s.image_path == (tmp_path / "media" / "x.png").resolve()
    assert s.text == "hello" and s.sample_id == "1"


def test_jsonl_image_id_column_groups_texts(tmp_path: Path, report: DataReport) -> None:
    rows = [{"image": "a.png", "text": "t1", "image_id": 7}, {"image": "a.png", "text": "t2"}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    samples = list(read_source(TableSource(format="jsonl", path=path), report))
    assert [s.image_id for s in samples] == ["7", "a.png"]
    assert "image_id" not in samples[0].meta


def test_jsonl_row_with_no_configured_column_is_bad(tmp_path: Path, report: DataReport) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"img": "x.png"}) + "\n", encoding="utf-8")
    assert list(read_source(TableSource(format="jsonl", path=path), report)) == []
    assert report.counts["bad_record"] == 1
    assert "none of the configured columns" in report.problems[0].message


def test_csv_fields_numbers_answers_and_line_numbers(tmp_path: Path, report: DataReport) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(
        "uid,picture,caption,score,answers,clip\n"
        'r1,a.jpg,"a caption, with comma",3,yes|yeah| yes ,v/1.mp4\n'
        'r2,b.jpg,"two\nlines",0.25,,\n'
        "r3,c.jpg,short row\n"
        "r4,,,cat,,\n",
        encoding="utf-8",
    )
    spec = TableSource(
        format="csv",
        path=path,
        id_field="uid",
        image_field="picture",
        text_field="caption",
        label_field="score",
        answers_field="answers",
        video_field="clip",
    )
    samples = list(read_source(spec, report))
    assert [s.sample_id for s in samples] == ["r1", "r2"]
    r1, r2 = samples
    assert r1.text == "a caption, with comma" and r1.label == 3
    assert r1.answers == ("yes", "yeah", "yes")
    assert r1.video_path == tmp_path / "v" / "1.mp4" and r1.image_path == tmp_path / "a.jpg"
    assert r2.text == "two\nlines" and r2.label == 0.25 and r2.answers == () and r2.video_path is None
    assert r2.origin == f"{path}:line 3"
    assert report.counts["bad_record"] == 1  # r3: wrong number of columns, at line 5 (r2 spans 3-4)
    assert report.problems[0].origin == f"{path}:line 5"
    assert report.counts["empty_text"] == 1  # r4


def test_csv_explicit_column_missing_from_header(tmp_path: Path, report: DataReport) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("image,text\na.jpg,hi\n", encoding="utf-8")
    with pytest.raises(DataError, match="label_field 'grade' is not a column"):
        read_source(TableSource(format="csv", path=path, label_field="grade"), report)
    # the default label column 'label' may be absent
    (s,) = list(read_source(TableSource(format="csv", path=path), report))
    assert s.label is None and s.text == "hi"


def test_csv_column_read_twice_is_an_error_an_unread_one_is_not(tmp_path: Path, report: DataReport) -> None:
    """With two 'text' columns the row silently kept the last one."""
    path = tmp_path / "rows.csv"
    path.write_text("image,text,text,note,note\na.jpg,first,second,x,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"rows\.csv has column 'text' more than once"):
        list(read_source(TableSource(format="csv", path=path), report))
    path.write_text("image,text,note,note\na.jpg,first,x,y\n", encoding="utf-8")
    (s,) = list(read_source(TableSource(format="csv", path=path), report))
    assert s.text == "first"


def test_missing_table_file(tmp_path: Path, report: DataReport) -> None:
    with pytest.raises(DataError, match=r"jsonl source: path file not found: .*x\.jsonl"):
        read_source(TableSource(format="jsonl", path=tmp_path / "x.jsonl"), report)


def test_jsonl_values_of_the_wrong_type_are_bad_records_not_strings(tmp_path: Path, report: DataReport) -> None:
    """str() would have trained on "['a red', 'square']", "None" or a path "['a.png']"."""
    rows = [
        {"image": "a.png", "text": ["a red", "square"]},
        {"image": "a.png", "text": "what colour?", "answers": [None, 3]},
        {"image": "a.png", "text": "what shape?", "answers": {"a": 1}},
        {"image": ["a.png"], "text": "a list of paths"},
        {"image": "a.png", "text": "how many?", "answers": [2, "two"]},
        {"image": "a.png", "text": "ok", "label": "red"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    samples = list(read_source(TableSource(format="jsonl", path=path, answers_field="answers"), report))
    assert [s.text for s in samples] == ["how many?", "ok"]
    assert samples[0].answers == ("2", "two")  # a number is an answer (a count); null, lists, objects are not
    messages = {p.origin.rsplit(":", 1)[1]: p.message for p in report.problems}
    assert messages["line 1"] == "'text' should be a string, got list ['a red', 'square']"
    assert messages["line 2"].startswith("'answers' should be a string or a number, got NoneType None")
    assert "got dict" in messages["line 3"]
    assert messages["line 4"].startswith("'image' should be a file path (a string), got list")


def test_jsonl_non_finite_labels_are_bad_records(tmp_path: Path, report: DataReport) -> None:
    """A NaN label used to reach the loss, and the run stopped blaming the learning rate."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a", "label": NaN}\n{"text": "b", "label": Infinity}\n{"text": "c", "label": 1.5}\n', encoding="utf-8")
    samples = list(read_source(TableSource(format="jsonl", path=path), report))
    assert [s.label for s in samples] == [1.5]
    assert [p.message for p in report.problems] == ["'label' is nan, not a finite number", "'label' is inf, not a finite number"]


def test_jsonl_explicit_field_in_no_row_is_named_like_a_missing_csv_column(tmp_path: Path, report: DataReport) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text('{"image": "a.png", "caption": "hi"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"image_field 'img' appears in no row of .*rows\.jsonl \(keys seen: caption, image\)"):
        list(read_source(TableSource(format="jsonl", path=path, image_field="img", text_field="caption"), report))
    # a default field may be absent from every row, as a CSV column may
    (s,) = list(read_source(TableSource(format="jsonl", path=path, text_field="caption"), report))
    assert s.label is None and s.text == "hi"


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_row(tmp_path: Path, report: DataReport) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": "a.png", "text": "first"}).encode() + b"\n")
    (s,) = list(read_source(TableSource(format="jsonl", path=path), report))
    assert s.text == "first" and not report.problems
