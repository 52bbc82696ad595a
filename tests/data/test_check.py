from __future__ import annotations

import io
import json
import random
import re
import tarfile
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageFile

from polymodal.data.check import check_source, check_spec, image_problem, load_spec, stats_spec
from polymodal.data.sources import CocoCaptionsSource, TableSource, WebDatasetSource
from polymodal.errors import ConfigError


def _noise_png(size: int = 16) -> bytes:
    rng = random.Random(0)
    img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def _coco_world(root: Path) -> CocoCaptionsSource:
    """A COCO captions source whose images are: good, truncated PNG, not an image, missing."""
    images = root / "images"
    png = _noise_png()
    _write(images / "good.png", png)
    _write(images / "truncated.png", png[: len(png) // 2])
    _write(images / "text.png", b"definitely not an image\n")
    files = ["good.png", "truncated.png", "text.png", "missing.png"]
    tree = {
        "images": [{"id": i, "file_name": f} for i, f in enumerate(files)],
        "annotations": [
            {"id": 10, "image_id": 0, "caption": "a noisy square"},
            {"id": 11, "image_id": 0, "caption": ""},
            {"id": 12, "image_id": 1, "caption": "half a picture"},
            {"id": 13, "image_id": 1, "caption": "the same half picture"},
            {"id": 14, "image_id": 2, "caption": "text pretending"},
            {"id": 15, "image_id": 3, "caption": "nothing there"},
        ],
    }
    ann = _write(root / "captions_val2014.json", json.dumps(tree))
    return CocoCaptionsSource(format="coco_captions", annotations=ann, images=images)


def test_check_finds_corrupt_missing_and_empty(tmp_path: Path) -> None:
    spec = _coco_world(tmp_path)
    report = check_source(spec, workers=2)
    assert report.counts["samples"] == 5 and report.counts["captions"] == 5
    assert report.counts["images"] == 4  # distinct image files
    assert report.counts["empty_text"] == 1
    assert report.counts["corrupt_image"] == 2  # each distinct image checked once (2 captions on one)
    assert report.counts["missing_image"] == 1
    corrupt = sorted(p.message for p in report.problems if p.kind == "corrupt_image")
    assert str(spec.images / "text.png") in corrupt[0]
    assert str(spec.images / "truncated.png") in corrupt[1]
    missing = next(p for p in report.problems if p.kind == "missing_image")
    assert str(spec.images / "missing.png") in missing.message
    assert missing.origin == f"{spec.annotations}:record 5"
    assert report.num_problems == 4
    assert "corrupt_image: 2" in report.format()


def test_without_verification_only_existence_is_checked(tmp_path: Path) -> None:
    report = check_source(_coco_world(tmp_path), verify_images=False, workers=1)
    assert report.counts["corrupt_image"] == 0
    assert report.counts["missing_image"] == 1


def test_truncated_png_caught_even_when_pil_tolerates_truncation(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    png = _noise_png()
    assert image_problem(lambda: io.BytesIO(png[: len(png) // 2])) is not None
    assert image_problem(lambda: io.BytesIO(png)) is None


def test_webdataset_image_bytes_are_decoded(tmp_path: Path) -> None:
    png = _noise_png()
    shard = tmp_path / "s-0.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [("a.png", png), ("a.txt", b"fine"), ("b.png", png[:200]), ("b.txt", b"broken")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    report = check_source(WebDatasetSource(format="webdataset", urls=str(shard)))
    assert report.counts["images"] == 2 and report.counts["corrupt_image"] == 1
    assert report.problems[0].origin == f"{shard}:b"


def test_missing_audio_and_video(tmp_path: Path) -> None:
    _write(tmp_path / "a.wav", b"RIFF")
    rows = [{"text": "one", "audio": "a.wav", "video": "v.mp4"}, {"text": "two", "audio": "gone.wav"}]
    path = _write(tmp_path / "t.jsonl", "\n".join(json.dumps(r) for r in rows))
    spec = TableSource(format="jsonl", path=path, audio_field="audio", video_field="video")
    report = check_source(spec)
    assert report.counts["missing_audio"] == 1 and report.counts["missing_video"] == 1
    assert report.counts["samples_without_image"] == 2
    audio = next(p for p in report.problems if p.kind == "missing_audio")
    assert "gone.wav" in audio.message and audio.origin == f"{path}:line 2"


def test_a_missing_file_is_reported_and_the_other_sources_still_checked(tmp_path: Path) -> None:
    """It used to raise, so the first missing file hid every other source's state."""
    spec = CocoCaptionsSource(format="coco_captions", annotations=tmp_path / "c.json", images=tmp_path)
    report = check_source(spec)
    assert report.num_problems == 1 and report.counts["unreadable_source"] == 1
    assert re.search(r"annotations file not found: .*c\.json", report.problems[0].message)
    good = _coco_world(tmp_path / "good")
    cfg = {"data": {"val": [{"format": "coco_captions", "annotations": str(p), "images": str(good.images)} for p in (tmp_path / "c.json", good.annotations)]}}
    first, second = check_spec(_write(tmp_path / "run.yaml", yaml.safe_dump(cfg)))
    assert first.counts["unreadable_source"] == 1 and second.counts["samples"] == 5  # one caption is empty


# --- SPEC forms ---------------------------------------------------------------------------------


def _tsv_source(folder: Path, name: str, lines: list[str]) -> dict:
    _write(folder / name, "\n".join(lines) + "\n")
    return {"format": "cc_tsv", "path": name}


def test_run_config_spec(tmp_path: Path) -> None:
    train = _tsv_source(tmp_path, "train.tsv", ["a cat\tcat.jpg"])
    val = _tsv_source(tmp_path, "val.tsv", ["a dog\tdog.jpg"])
    _write(
        tmp_path / "run.yaml", yaml.safe_dump({"seed": 1, "data": {"train": [train, train], "val": [val]}})
    )
    named = load_spec(tmp_path / "run.yaml")
    assert [n for n, _ in named] == ["train[0]", "train[1]", "val"]
    assert named[2][1].path == (tmp_path / "val.tsv").resolve()  # relative to the config's folder


def test_run_config_with_misspelled_key(tmp_path: Path) -> None:
    src = _tsv_source(tmp_path, "t.tsv", ["x\ty.jpg"])
    cfg = _write(tmp_path / "run.yaml", yaml.safe_dump({"data": {"trian": [src]}}))
    with pytest.raises(ConfigError) as err:
        load_spec(cfg)
    assert "trian" in str(err.value) and str(cfg) in str(err.value)
    cfg = _write(tmp_path / "run2.yaml", yaml.safe_dump({"data": {"train": [{**src, "has_heder": True}]}}))
    with pytest.raises(ConfigError, match=r"unknown key 'data\.train\[0\]\.has_heder'") as err:
        load_spec(cfg)
    assert str(cfg) in str(err.value)


def test_source_yaml_single_and_list(tmp_path: Path) -> None:
    src = _tsv_source(tmp_path, "t.tsv", ["x\ty.jpg"])
    one = _write(tmp_path / "one.yaml", yaml.safe_dump(src))
    assert [n for n, _ in load_spec(one)] == ["one.yaml"]
    many = _write(tmp_path / "many.yaml", yaml.safe_dump([src, {**src, "has_header": True}]))
    named = load_spec(many)
    assert [n for n, _ in named] == ["many.yaml[0]", "many.yaml[1]"] and named[1][1].has_header
    typo = _write(tmp_path / "typo.yaml", yaml.safe_dump({**src, "pth": "x"}))
    with pytest.raises(ConfigError, match="unknown key 'pth'"):
        load_spec(typo)


def test_world_folder_spec(tmp_path: Path) -> None:
    world = tmp_path / "world"
    src = _tsv_source(world, "captions.tsv", ["x\ty.jpg"])
    _write(world / "world.json", json.dumps({"seed": 0, "sources": {"train": [src], "test": [src, src]}}))
    named = load_spec(world)
    assert [n for n, _ in named] == ["train", "test[0]", "test[1]"]
    assert named[0][1].path == (world / "captions.tsv").resolve()


def test_unrecognised_specs_explain_the_three_forms(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="world.json"):
        load_spec(tmp_path)  # a folder without world.json
    odd = _write(tmp_path / "odd.yaml", yaml.safe_dump({"colour": "blue"}))
    with pytest.raises(ConfigError, match="run config YAML with a 'data:' section") as err:
        load_spec(odd)
    assert "colour" in str(err.value)
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "absent.yaml")
    empty = _write(tmp_path / "empty.yaml", yaml.safe_dump({"seed": 3}))
    with pytest.raises(ConfigError, match="no data sources"):
        load_spec(empty)


def test_check_spec_reports_per_source(tmp_path: Path) -> None:
    spec = _coco_world(tmp_path)
    cfg = {
        "data": {
            "val": [{"format": "coco_captions", "annotations": str(spec.annotations), "images": "images"}]
        }
    }
    path = _write(tmp_path / "run.yaml", yaml.safe_dump(cfg))
    (report,) = check_spec(path)
    assert report.source == f"val: coco_captions {spec.annotations}"
    assert report.counts["corrupt_image"] == 2 and report.counts["missing_image"] == 1


def test_stats_spec_block(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    questions = {
        "data_subtype": "train",
        "questions": [
            {
                "image_id": i % 3,
                "question": "what " * (i + 1),
                "question_id": i,
                "family": ["count", "color"][i % 2],
            }
            for i in range(6)
        ],
    }
    answers = ["2", "2", "red", "2", "blue", "red"]
    annotations = {
        "annotations": [
            {
                "question_id": i,
                "image_id": i % 3,
                "question_type": "how many",
                "answer_type": "number" if a == "2" else "other",
                "multiple_choice_answer": a,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k} for k in range(10)],
            }
            for i, a in enumerate(answers)
        ]
    }
    _write(tmp_path / "q.json", json.dumps(questions))
    _write(tmp_path / "a.json", json.dumps(annotations))
    _write(
        tmp_path / "vqa.yaml",
        yaml.safe_dump(
            {
                "format": "vqa_v2",
                "questions": "q.json",
                "annotations": "a.json",
                "images": "imgs",
                "image_template": "{image_id}.png",
            }
        ),
    )
    (block,) = stats_spec(tmp_path / "vqa.yaml")
    assert block.startswith("vqa.yaml: vqa_v2 ")
    assert "samples: 6" in block
    assert "distinct images: 3" in block
    assert "text length (words): min 1, mean 3.5, max 6" in block
    assert "top answers (3 distinct): 2 3, red 2, blue 1" in block
    assert "families (2): count 3, color 3" in block
    assert "answer types: number 3, other 3" in block
    assert "problems: none" in block
