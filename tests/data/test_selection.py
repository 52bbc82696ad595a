"""The samples a task takes from a split's sources: image ids that only sources keep unique are kept
apart, and records the task cannot use are counted in evaluation as in training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from polymodal.data.check import load_spec
from polymodal.data.sample import Sample
from polymodal.data.selection import keep_images_apart, select_samples
from polymodal.tasks import build_task
from polymodal.tasks.base import group_by_image


def _coco(path: Path, images: Path, names: list[str]) -> dict:
    """A COCO captions file numbering its images from 0, two captions each (the images are not read)."""
    images.mkdir(exist_ok=True)
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"id": 10 * i + k, "image_id": i, "caption": f"{n} caption {k}"} for i, n in enumerate(names) for k in range(2)],
    }))
    return {"format": "coco_captions", "annotations": str(path), "images": str(images)}


def _parsed(tmp_path: Path, *specs: dict) -> list:
    spec = tmp_path / f"spec{len(list(tmp_path.glob('spec*')))}.yaml"
    spec.write_text(yaml.safe_dump(list(specs)))
    return [source for _, source in load_spec(spec)]


def test_two_sources_numbering_their_images_from_0_keep_them_apart(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: retrieval's gallery held 3 images for 6 and scored B's captions against A's images."""
    a = _coco(tmp_path / "captions_a.json", tmp_path / "a", ["x.png", "y.png", "z.png"])
    b = _coco(tmp_path / "captions_b.json", tmp_path / "b", ["u.png", "v.png", "w.png"])
    task = build_task("retrieval", None, 32)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        samples, problems = select_samples(_parsed(tmp_path, a, b), task, "test")
    assert problems == 0 and len(samples) == 12
    groups = group_by_image(samples)
    assert len(groups) == 6
    assert all(len({s.image_path for s in group}) == 1 and len(group) == 2 for group in groups.values())
    assert {s.image_id for s in samples if s.image_path == tmp_path / "b/u.png"} == {"0@captions_b.json"}
    assert "3 image ids name more than one image (e.g. '0':" in caplog.text and "'0@captions_a.json' and '0@captions_b.json'" in caplog.text

    same_images = _coco(tmp_path / "captions_c.json", tmp_path / "a", ["x.png", "y.png", "z.png"])  # more captions of A's images
    samples, _ = select_samples(_parsed(tmp_path, a, same_images), task, "test")
    assert len(group_by_image(samples)) == 3 and {s.image_id for s in samples} == {"0", "1", "2"}  # nothing to keep apart


def test_shards_restarting_their_keys_are_kept_apart_by_shard() -> None:
    def shard_sample(shard: str, key: str) -> Sample:
        return Sample(key, origin=f"/data/{shard}:{key}", image_bytes=shard.encode(), image_id=key, text=f"{shard} {key}")

    samples = [shard_sample("shard-0.tar", "000000"), shard_sample("shard-0.tar", "000001"), shard_sample("shard-1.tar", "000000")]
    kept = keep_images_apart(samples, [0, 0, 0])
    assert [s.image_id for s in kept] == ["000000@shard-0.tar", "000001", "000000@shard-1.tar"]
    twins = [shard_sample("shard-0.tar", "000000"), Sample("000000", origin="/other/shard-0.tar:000000", image_bytes=b"x", image_id="000000")]
    # shards of one name in two sources: told apart by source number, never by a path (ids are in the resume
    # fingerprint, which moving the data must not change)
    assert [s.image_id for s in keep_images_apart(twins, [0, 1])] == ["000000@source 1:shard-0.tar", "000000@source 2:shard-0.tar"]


def test_one_image_reached_through_a_symlinked_folder_stays_one_image(tmp_path: Path) -> None:
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco/0.png").write_bytes(b"an image")
    (tmp_path / "alias").symlink_to(tmp_path / "coco")
    samples = [Sample("a", origin="captions.json:record 0", image_path=tmp_path / "coco/0.png", image_id="0", text="a caption"),
               Sample("b", origin="questions.json:record 0", image_path=tmp_path / "alias/0.png", image_id="0", text="a question?")]
    assert [s.image_id for s in keep_images_apart(samples, [0, 1])] == ["0", "0"]


def test_evaluation_counts_the_records_its_task_cannot_use(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: eval said 'evaluating 2 samples' of 4 caption rows, two of them without an image, and no more."""
    (tmp_path / "caps.csv").write_text("image,caption\na.png,a red cube\n,a caption without its image\nb.png,a blue ball\n,another\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"- {{format: csv, path: {tmp_path / 'caps.csv'}, image_field: image, text_field: caption}}\n")
    (name, source), = load_spec(spec)
    with caplog.at_level(logging.WARNING, logger="polymodal"):
        samples, _ = select_samples([source], build_task("retrieval", None, 32), name)
    assert len(samples) == 2
    assert "2 records the retrieval task cannot use, left out: 2 x a caption without an image" in caplog.text
