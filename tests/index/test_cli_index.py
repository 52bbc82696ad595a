"""``polymodal index build | add | delete | info`` and ``polymodal search``, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("faiss", reason="the search index needs faiss-cpu (pip install 'polymodal[serve]')")

from tests.cli_runner import run_cli
from tests.index.conftest import Tiny


@pytest.mark.parametrize("command", ["index", "index build", "index add", "index delete", "index info", "search"])
def test_help_has_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = run_cli(capsys, *command.split(), "--help")
    assert code == 0 and "Example" in out and "polymodal" in out


def test_build_search_add_delete_info(tmp_path: Path, tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "photos"
    shutil.copytree(tiny.world / "images/test", root)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    idx = str(tmp_path / "idx")
    captions = str(tiny.world / "annotations/captions_test.json")
    code, out, err = run_cli(capsys, "index", "build", "--model", str(tiny.run), "--images", str(root), "--texts", captions,
                             "--captions", captions, "--out", idx, "--batch-size", "4", "--no-progress")
    n = len(tiny.test_images)
    assert code == 0, err
    assert f"images: {n} added" in out and "1 skipped as unreadable" in out and "broken.png" in out
    assert "texts:" in out and f"{n} images" in out

    code, out, err = run_cli(capsys, "search", idx, "a large green sphere", "-k", "3", "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert [h["rank"] for h in hits] == [1, 2, 3] and all(h["kind"] == "image" for h in hits)
    assert all(Path(h["file"]).is_file() and Path(h["file"]).parent == root for h in hits)
    assert all(h["caption"] for h in hits)  # the COCO captions were kept with the images
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    code, out, err = run_cli(capsys, "search", idx, "a large green sphere", "-k", "3", "--json", "--nprobe", "4", "--ef-search", "16")
    assert code == 0, err
    assert [h["id"] for h in json.loads(out)] == [h["id"] for h in hits]  # exact (flat) search: effort changes nothing
    assert "--nprobe applies to ivf indexes" in err and "--ef-search applies to hnsw indexes" in err  # and says so
    code, out, err = run_cli(capsys, "search", idx, "a large green sphere", "--nprobe", "0")
    assert code != 0 and "nprobe must be a whole number >= 1" in err

    code, out, err = run_cli(capsys, "search", idx, "--image", str(tiny.test_images[0]), "-k", "1000000000", "--target", "text", "--json")
    texts = json.loads(out)
    assert code == 0 and len(texts) > n and all(h["kind"] == "text" for h in texts)  # k clamped to the texts there

    code, out, err = run_cli(capsys, "search", idx, "--image", str(tiny.test_images[0]), "-k", "2")
    assert code == 0 and out.splitlines()[0].split()[4] == tiny.test_images[0].name and "+1.0000" in out

    other = next(h for h in hits if h["path"] != tiny.test_images[0].name)
    code, out, _ = run_cli(capsys, "index", "delete", idx, tiny.test_images[0].name, str(other["id"]))
    assert code == 0 and "deleted 2 entries" in out
    code, out, _ = run_cli(capsys, "index", "info", idx, "--json")
    info = json.loads(out)
    assert code == 0 and info["images"] == n - 2 and info["vectors"]["image"]["kind"] == "flat"
    assert info["model"]["fingerprint"].startswith("sha256:") and info["root"] == str(root)

    code, out, err = run_cli(capsys, "index", "add", idx, "--images", str(root), "--no-progress")
    assert code == 0 and "images: 2 added" in out and f"{n - 2} already indexed" in out
    code, out, _ = run_cli(capsys, "index", "info", idx)
    assert code == 0 and f"{n} images" in out and "collection" in out


def test_build_resumes_when_run_again(tmp_path: Path, tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["index", "build", "--model", str(tiny.run), "--images", str(tiny.world / "images/test"), "--out", str(tmp_path / "idx"), "--no-progress"]
    assert run_cli(capsys, *args)[0] == 0
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "resuming index" in out and "0 added" in out and f"{len(tiny.test_images)} already indexed" in out


def test_user_errors_are_one_paragraph(tmp_path: Path, tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    idx = str(tmp_path / "idx")
    code, _, err = run_cli(capsys, "search", str(tmp_path / "nothing"), "a cube")
    assert code == 2 and "index folder not found" in err and "Traceback" not in err
    assert run_cli(capsys, "index", "build", "--model", str(tiny.run), "--images", str(tiny.world / "images/test"), "--out", idx, "--no-progress")[0] == 0
    code, _, err = run_cli(capsys, "search", idx)
    assert code == 2 and "give either a text query" in err
    code, _, err = run_cli(capsys, "search", idx, "   ")
    assert code == 2 and "query is empty" in err
    code, _, err = run_cli(capsys, "search", idx, "a cube", "-k", "0")
    assert code == 2 and "k must be at least 1" in err
    code, _, err = run_cli(capsys, "search", idx, "a cube", "--model", str(tiny.other))
    assert code == 2 and "was built with model" in err
    code, _, err = run_cli(capsys, "index", "add", idx, "--images", str(tiny.world / "images/val"))
    assert code == 2 and "outside the index's collection root" in err
    code, _, err = run_cli(capsys, "index", "delete", idx, "../secrets.png")
    assert code == 2 and "may not contain '..'" in err
    empty = tmp_path / "texts.json"
    empty.write_text(json.dumps(["ok", ""]))
    code, _, err = run_cli(capsys, "index", "add", idx, "--texts", str(empty))
    assert code == 2 and "texts.json item [1] is an empty text" in err


def test_a_folder_without_images_is_refused_before_an_index_is_made(tmp_path: Path, tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: an index with no images was created and the build exited 0."""
    code, _, err = run_cli(capsys, "index", "build", "--model", str(tiny.run), "--images", str(tiny.world / "annotations"),
                           "--out", str(tmp_path / "idx"), "--no-progress")
    assert code == 2 and "annotations: no image files in this folder" in err and "not an image by their extension (.json" in err
    assert not (tmp_path / "idx").exists()


def test_files_passed_over_and_captions_that_match_nothing_are_counted(tmp_path: Path, tiny: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "photos"
    shutil.copytree(tiny.world / "images/test", root)
    (root / "notes.txt").write_text("not an image")
    first, second = tiny.test_images[:2]
    captions = tmp_path / "captions.json"
    captions.write_text(json.dumps({first.name: "the first", "gone.png": "no such image"}))
    code, out, err = run_cli(capsys, "index", "build", "--model", str(tiny.run), "--images", str(root), "--captions", str(captions),
                             "--out", str(tmp_path / "idx"), "--no-progress")
    assert code == 0, err
    assert "passed over 1 file that is not an image by its extension (.txt 1)" in out
    assert "1 caption named no image among these (e.g. 'gone.png')" in out

    # --images an image file: its captions are named relative to the file's folder (they were joined to the file's path)
    code, out, err = run_cli(capsys, "index", "build", "--model", str(tiny.run), "--images", str(root / second.name),
                             "--captions", str(captions), "--out", str(tmp_path / "idx_one"), "--no-progress")
    assert code == 0, err
    code, out, err = run_cli(capsys, "index", "add", str(tmp_path / "idx_one"), "--images", str(root / first.name), "--captions", str(captions), "--no-progress")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "search", str(tmp_path / "idx_one"), "--image", str(root / first.name), "-k", "1", "--json")
    assert json.loads(out)[0]["caption"] == "the first"

    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"images/test/" + first.name: "named from the world's root"}))
    code, _, err = run_cli(capsys, "index", "add", str(tmp_path / "idx_one"), "--images", str(root), "--captions", str(elsewhere), "--no-progress")
    assert code == 2 and "none of its 1 image names (e.g. 'images/test/" in err and "relative to the --images folder" in err
    code, _, err = run_cli(capsys, "index", "add", str(tmp_path / "idx_one"), "--texts", str(tiny.world / "annotations/captions_test.json"),
                           "--captions", str(captions), "--no-progress")
    assert code == 2 and "captions are stored with the images they name; give those images with --images" in err
