from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.formats import read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import ImageFolderSource
from polymodal.errors import DataError


def test_classes_labels_indices_and_skipped_files(tmp_path: Path, write_image, report: DataReport) -> None:
    root = tmp_path / "train"
    write_image(root / "zebra" / "z1.PNG")
    write_image(root / "cat" / "c2.jpg")
    write_image(root / "cat" / "nested" / "c1.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    (root / "dog").mkdir()  # an empty class still takes an index
    (root / "README.md").write_text("stray file")
    samples = list(read_source(ImageFolderSource(format="image_folder", root=root), report))
    assert [(s.sample_id, s.label, s.meta["class_index"]) for s in samples] == [
        ("cat/c2.jpg", "cat", 0),
        ("cat/nested/c1.png", "cat", 0),
        ("zebra/z1.PNG", "zebra", 2),
    ]
    assert samples[0].image_path == root / "cat" / "c2.jpg"
    assert samples[0].origin == f"{root}:cat/c2.jpg"
    assert report.counts["non_image_files"] == 1
    assert report.counts["unclassified_files"] == 1


def test_extensions_option(tmp_path: Path, write_image, report: DataReport) -> None:
    write_image(tmp_path / "a" / "x.png")
    write_image(tmp_path / "a" / "y.jpg")
    spec = ImageFolderSource(format="image_folder", root=tmp_path, extensions=("png",))
    assert [s.sample_id for s in read_source(spec, report)] == ["a/x.png"]


def test_missing_or_empty_root(tmp_path: Path, report: DataReport) -> None:
    with pytest.raises(DataError, match=r"image_folder source: root folder not found: .*nowhere"):
        read_source(ImageFolderSource(format="image_folder", root=tmp_path / "nowhere"), report)
    with pytest.raises(DataError, match="no class sub-folders"):
        read_source(ImageFolderSource(format="image_folder", root=tmp_path), report)


def test_a_link_loop_is_read_once(tmp_path: Path, write_image, report: DataReport) -> None:
    """os.walk follows links (class folders are often links), and a link back up used to list one image
    once per level until the OS gave up: 41 copies."""
    write_image(tmp_path / "root" / "cat" / "a.png")
    (tmp_path / "root" / "cat" / "again").symlink_to(tmp_path / "root" / "cat", target_is_directory=True)
    samples = list(read_source(ImageFolderSource(format="image_folder", root=tmp_path / "root"), report))
    assert [s.sample_id for s in samples] == ["cat/a.png"]
    assert report.counts["repeated_folders"] == 1
