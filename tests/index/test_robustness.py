"""What goes wrong in real collections: a killed build, stale or damaged FAISS files, corrupt images,
paths outside the collection, changed files, a second writer, and collections past the flat threshold."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss", reason="the search index needs faiss-cpu (pip install 'polymodal[serve]')")

from polymodal.index import SearchIndex, SearchIndexError
from polymodal.index import vectors as V
from polymodal.index.search_index import FAISS_FILES
from tests.index.conftest import Tiny, spy_on_vector_search


def _collection(tmp_path: Path, tiny: Tiny, splits: tuple[str, ...] = ("test",)) -> Path:
    """A private copy of world images (tests here modify files)."""
    root = tmp_path / "photos"
    for split in splits:
        shutil.copytree(tiny.world / "images" / split, root / split)
    return root


def _rows(index: SearchIndex) -> list[tuple]:
    """Everything the store holds, vectors included, in id order."""
    conn = sqlite3.connect(index.path / "entries.sqlite")
    try:
        return conn.execute("SELECT id, kind, key, checksum, vector FROM entries ORDER BY id").fetchall()
    finally:
        conn.close()


def test_a_killed_build_resumes_without_duplicates(tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _collection(tmp_path, tiny, ("test", "val"))
    n = sum(1 for _ in root.rglob("*.png"))
    unbroken = SearchIndex.create(tmp_path / "unbroken", tiny.run, root=root)
    unbroken.add_images(root, batch_size=4, progress=False)

    calls = {"n": 0}
    original = SearchIndex._encode_images

    def dies_on_the_second_batch(self: SearchIndex, images: list) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # Ctrl-C (or a kill) in the middle of the build
        return original(self, images)

    monkeypatch.setattr(SearchIndex, "_encode_images", dies_on_the_second_batch)
    killed = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    with pytest.raises(KeyboardInterrupt):
        killed.add_images(root, batch_size=4, progress=False)
    killed.close()
    monkeypatch.setattr(SearchIndex, "_encode_images", original)
    partial = SearchIndex.open(tmp_path / "idx")
    assert len(partial) == 4 and partial.stats().vectors["image"]["vectors"] == 4  # the first batch was committed
    partial.close()

    resumed = SearchIndex.create(tmp_path / "idx", tiny.run, root=root, exist_ok=True)  # the same command again
    report = resumed.add_images(root, batch_size=4, progress=False)
    assert report.unchanged == 4 and report.added == n - 4 and not report.failed
    assert len(resumed) == n and resumed.stats().vectors["image"]["vectors"] == n
    assert _rows(resumed) == _rows(unbroken)  # same ids, paths, checksums and vectors: no duplicates
    for query in ("a red cube", "a small gray cone"):
        got, want = resumed.search_text(query, k=n), unbroken.search_text(query, k=n)
        assert [(h.id, h.path, h.score) for h in got] == [(h.id, h.path, h.score) for h in want]  # only 'added' differs
    again = resumed.add_images(root, batch_size=4, progress=False)
    assert again.added == 0 and again.unchanged == n and len(resumed) == n


def test_a_faiss_file_behind_the_store_is_caught_up_and_a_damaged_one_rebuilt(tmp_path: Path, tiny: Tiny) -> None:
    root = _collection(tmp_path, tiny)
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    images = sorted(root.rglob("*.png"))
    index.add_images(images[:3], progress=False)
    faiss_file = tmp_path / "idx" / FAISS_FILES["image"]
    stale = faiss_file.read_bytes()  # as if killed after the next commits but before the FAISS renames
    index.add_images(images[3:], progress=False)
    index.delete(images[0])
    expected = index.search_text("a blue sphere", k=10)
    index.close()

    faiss_file.write_bytes(stale)
    behind = SearchIndex.open(tmp_path / "idx")
    assert any("behind the store" in r for r in behind.repairs)
    assert behind.search_text("a blue sphere", k=10) == expected
    behind.close()
    assert SearchIndex.open(tmp_path / "idx").repairs == []  # the repair was saved

    faiss_file.write_bytes(faiss_file.read_bytes()[:-50])  # torn write
    damaged = SearchIndex.open(tmp_path / "idx")
    assert any("truncated or corrupt" in r for r in damaged.repairs)
    assert damaged.search_text("a blue sphere", k=10) == expected
    damaged.close()
    faiss_file.unlink()
    assert SearchIndex.open(tmp_path / "idx").search_text("a blue sphere", k=10) == expected


def _drop_modality(source: Path, target: Path) -> None:
    import json
    import struct

    data = source.read_bytes()
    start = len(V._MAGIC) + 8
    (length,) = struct.unpack("<Q", data[len(V._MAGIC) : start])
    header = json.loads(data[start : start + length])
    del header["modality"]
    packed = json.dumps(header).encode()
    target.write_bytes(V._MAGIC + struct.pack("<Q", len(packed)) + packed + data[start + length :])


def test_a_faiss_file_copied_over_the_other_modalitys_is_not_trusted(tmp_path: Path, tiny: Tiny) -> None:
    """Both files at the same generation: the text file copied over the image one was searched as images."""
    root = _collection(tmp_path, tiny)
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    index.add_images(sorted(root.rglob("*.png")), progress=False)
    index.add_texts(["a red cube", "a blue sphere"], progress=False)
    expected = index.search_text("a blue sphere", k=5)
    index.close()
    image_file, text_file = (tmp_path / "idx" / FAISS_FILES[k] for k in ("image", "text"))
    image_file.write_bytes(text_file.read_bytes())
    swapped = SearchIndex.open(tmp_path / "idx")
    assert any("holds text vectors, not image ones" in r for r in swapped.repairs)
    assert swapped.search_text("a blue sphere", k=5) == expected
    swapped.close()

    _drop_modality(text_file, image_file)  # as a file written before headers named the modality: the count catches it
    counted = SearchIndex.open(tmp_path / "idx")
    assert any("holds 2 vectors where the store has" in r for r in counted.repairs), counted.repairs
    assert counted.search_text("a blue sphere", k=5) == expected
    counted.close()


def test_unreadable_images_are_skipped_counted_and_named(tmp_path: Path, tiny: Tiny, caplog: pytest.LogCaptureFixture) -> None:
    root = _collection(tmp_path, tiny)
    good = sorted(root.rglob("*.png"))
    truncated = good[0]
    truncated.write_bytes(truncated.read_bytes()[:80])
    (root / "test" / "notes.png").write_text("this is not a picture")
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    with caplog.at_level(logging.WARNING, logger="polymodal.index"):
        report = index.add_images(root, batch_size=2, progress=False)
    failed = {Path(p).name: why for p, why in report.failed}
    assert set(failed) == {truncated.name, "notes.png"}
    assert "corrupt image" in failed[truncated.name] and "not a readable image" in failed["notes.png"]
    assert report.added == len(good) - 1 and len(index) == len(good) - 1
    assert truncated.name in caplog.text and "notes.png" in caplog.text
    assert "2 skipped as unreadable" in report.summary()


def test_paths_outside_the_collection_are_refused(tmp_path: Path, tiny: Tiny) -> None:
    root = _collection(tmp_path, tiny)
    outside = tmp_path / "elsewhere.png"
    shutil.copy(min(root.rglob("*.png")), outside)
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    with pytest.raises(SearchIndexError, match="outside the index's collection root"):
        index.add_images(outside, progress=False)
    with pytest.raises(SearchIndexError, match="outside the index's collection root"):
        index.add_images(root / ".." / "elsewhere.png", progress=False)
    with pytest.raises(SearchIndexError, match="may not contain '..'"):
        index.delete("test/../../elsewhere.png")
    with pytest.raises(SearchIndexError, match="not a path relative to the collection root"):
        index.file_path("../elsewhere.png")
    with pytest.raises(SearchIndexError, match="not a path relative to the collection root"):
        index.file_path("/etc/passwd")
    assert len(index) == 0
    (root / "test" / "escape.png").symlink_to(outside)  # a symlink out of the root, met while walking
    report = index.add_images(root, progress=False)
    assert [Path(p).name for p, _ in report.failed] == ["escape.png"] and "outside" in report.failed[0][1]
    with pytest.raises(SearchIndexError, match="resolves to"):
        index.add_images(root / "test" / "escape.png", progress=False)  # named explicitly: an error
    hit = index.search_image(min(root.rglob("test_*.png")), k=1)[0]
    assert index.file_path(hit.path) == root / hit.path and (root / hit.path).is_file()


def test_a_changed_file_is_re_embedded_and_replaces_its_entry(tmp_path: Path, tiny: Tiny) -> None:
    root = _collection(tmp_path, tiny)
    a, b = sorted(root.rglob("*.png"))[:2]
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    index.add_images(root, progress=False)
    n, old_id = len(index), index.search_image(a, k=1)[0].id
    shutil.copy(b, a)  # a's bytes change (to b's)
    os.utime(a, ns=(1, 1))
    report = index.add_images(root, progress=False)
    assert report.updated == 1 and report.added == 0 and len(index) == n
    hits = index.search_image(b, k=2)
    assert {h.path for h in hits} == {a.relative_to(root).as_posix(), b.relative_to(root).as_posix()}
    assert all(h.score == pytest.approx(1.0, abs=1e-5) for h in hits) and old_id not in {h.id for h in hits}


def test_captions_are_kept_with_their_images(tmp_path: Path, tiny: Tiny) -> None:
    root = _collection(tmp_path, tiny)
    first = min(root.rglob("*.png"))
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    index.add_images(root, captions={first.relative_to(root).as_posix(): "a caption ✓"}, progress=False)
    hit = index.search_image(first, k=1)[0]
    assert hit.caption == "a caption ✓" and hit.path == first.relative_to(root).as_posix()


def test_one_writer_at_a_time(tmp_path: Path, tiny: Tiny) -> None:
    import fcntl

    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=tiny.world / "images/test")
    with open(tmp_path / "idx" / "write.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # another process writing
        with pytest.raises(SearchIndexError, match="another process is writing"):
            index.add_texts(["a red cube"], progress=False)
        assert index.search_text("a cube", k=3) == []  # reading is fine meanwhile
    index.add_texts(["a red cube"], progress=False)
    other = SearchIndex.open(tmp_path / "idx")  # a second reader picks up later writes
    index.add_texts(["two blue spheres"], progress=False)
    assert {h.text for h in other.search_text("a cube", k=5, target="text")} == {"a red cube", "two blue spheres"}


def test_choose_kind_thresholds() -> None:
    assert V.choose_kind("auto", 0) == "flat" and V.choose_kind("ivf", 0) == "flat"
    assert V.choose_kind("auto", 10_000) == "flat" and V.choose_kind("auto", 10_001) == "ivf"
    assert V.choose_kind("auto", 6_000, current="ivf") == "ivf"  # hysteresis: no flip-flop near the threshold
    assert V.choose_kind("auto", 4_000, current="ivf") == "flat"
    assert V.choose_kind("hnsw", 5) == "hnsw" and V.choose_kind("flat", 10**6) == "flat"
    with pytest.raises(SearchIndexError, match="index kind must be one of"):
        V.choose_kind("annoy", 5)
    assert V.ivf_lists(10_001) == 256 and V.ivf_lists(1_000_000) == 4000 and V.ivf_lists(50) == 1  # >= 39 points per list
    assert V.needs_retrain("ivf", 40_001, 10_000) and not V.needs_retrain("ivf", 30_000, 10_000)


def test_auto_kind_switches_to_ivf_past_the_threshold_and_back(tmp_path: Path, tiny: Tiny) -> None:
    root = _collection(tmp_path, tiny, ("test", "val", "train"))
    images = sorted(root.rglob("*.png"))
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root, flat_max=10)
    index.add_images(images[:8], progress=False)
    assert index.stats().vectors["image"]["kind"] == "flat"
    index.add_images(root, batch_size=16, progress=False)
    vec = index.stats().vectors["image"]
    assert vec["kind"] == "ivf" and vec["vectors"] == len(images) and vec["nlist"] >= 1 and vec["nprobe"] >= 1
    for path in images[:3]:  # still finds each image itself
        assert index.search_image(path, k=1)[0].path == path.relative_to(root).as_posix()
    index.close()
    reopened = SearchIndex.open(tmp_path / "idx")
    assert reopened.stats().vectors["image"]["kind"] == "ivf" and reopened.repairs == []
    reopened.delete(images[: len(images) - 4])  # 4 left: below half the threshold
    assert reopened.stats().vectors["image"] == {"kind": "flat", "vectors": 4}
    reopened.set_kind("hnsw")  # overridable
    assert reopened.stats().vectors["image"]["kind"] == "hnsw"
    reopened.delete(images[-1])  # FAISS cannot delete from HNSW: rebuilt instead
    hits = reopened.search_image(images[-2], k=10)
    assert len(hits) == 3 and hits[0].path == images[-2].relative_to(root).as_posix()
    reopened.close()
    assert SearchIndex.open(tmp_path / "idx").stats().vectors["image"] == {"kind": "hnsw", "vectors": 3, "M": 32, "efSearch": 64}


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind, knob", [("ivf", "nprobe"), ("hnsw", "ef_search")])
def test_search_effort_trades_speed_for_recall_in_one_call(kind: str, knob: str) -> None:
    """More probes (IVF) or candidates (HNSW) reach the exact answer; fewer miss; the index keeps its own."""
    rng = np.random.default_rng(0)
    db, queries = _unit(rng, 6000, 64), _unit(rng, 40, 64)
    vi = V.build(kind, 64, np.arange(6000), db, generation=0)
    exact = np.argsort(-(queries @ db.T), axis=1)[:, :10]

    def recall(**effort: int) -> float:
        _, ids = vi.search(queries, 10, **effort)
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]))

    default, low, high = recall(), recall(**{knob: 1}), recall(**{knob: 10**9})  # clamped: no 10**9-long heap
    assert high == 1.0 and high >= default > low
    assert recall() == default  # the call's setting did not stick
    before = vi.describe()
    other = {"ivf": "ef_search", "hnsw": "nprobe"}[kind]
    assert recall(**{other: 1}) == default and vi.describe() == before  # the other kind's knob is ignored


def test_exact_search_ignores_effort_and_bad_effort_is_refused() -> None:
    rng = np.random.default_rng(1)
    db = _unit(rng, 300, 16)
    flat = V.build("flat", 16, np.arange(300), db, generation=0)
    plain = flat.search(db[:3], 5)
    assert all(np.array_equal(a, b) for a, b in zip(plain, flat.search(db[:3], 5, nprobe=1, ef_search=1)))
    assert all(np.array_equal(a, b) for a, b in zip(flat.search(db[:3], 5, nprobe=np.int64(4)), plain))  # numpy integers are whole numbers
    for bad in (0, -3, 2.5, True, np.float64(3.0)):
        with pytest.raises(SearchIndexError, match="nprobe must be a whole number >= 1"):
            flat.search(db[:1], 5, nprobe=bad)  # type: ignore[arg-type]
    with pytest.raises(SearchIndexError, match="ef_search must be"):
        flat.search(db[:1], 5, ef_search=0)


def test_search_index_passes_effort_through(tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _collection(tmp_path, tiny)
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=root)
    index.add_images(root, progress=False)
    seen = spy_on_vector_search(monkeypatch)
    index.search_text("a red cube", k=3, nprobe=7)
    index.search_image(sorted(root.rglob("*.png"))[0], k=3, ef_search=9, target="all")
    assert seen == [{"nprobe": 7, "ef_search": None}] + [{"nprobe": None, "ef_search": 9}] * 2
    with pytest.raises(SearchIndexError, match="nprobe"):
        index.search_text("a red cube", nprobe=0)
    index.close()
