"""``SearchIndex``: build, search by text and by image, add texts, delete, reopen, refuse another model."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss", reason="the search index needs faiss-cpu (pip install 'polymodal[serve]')")
from PIL import Image

from polymodal import predict
from polymodal.api import load_model
from polymodal.data.processors import ImageProcessor
from polymodal.errors import DataError
from polymodal.index import ModelMismatch, SearchIndex, SearchIndexError, weights_fingerprint
from polymodal.index.paths import read_texts_file
from tests.index.conftest import Tiny


def _captions(tiny: Tiny) -> dict[str, str]:
    """The first caption of each test image, by file name."""
    coco = json.loads((tiny.world / "annotations/captions_test.json").read_text())
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, str] = {}
    for a in coco["annotations"]:
        out.setdefault(names[a["image_id"]], a["caption"])
    return out


def _build(tmp_path: Path, tiny: Tiny, **kw) -> SearchIndex:
    index = SearchIndex.create(tmp_path / "idx", tiny.run, root=tiny.world / "images/test", **kw)
    report = index.add_images(tiny.world / "images/test", batch_size=4, progress=False)
    assert report.added == len(tiny.test_images) and not report.failed
    return index


def test_text_search_scores_equal_rank_images_cosines(tmp_path: Path, tiny: Tiny) -> None:
    """Scores are compared per image, and orders only through them: the tiny model's cosines are close
    together, and a near-tie may fall either way between FAISS and torch."""
    index = _build(tmp_path, tiny)
    model, proc = load_model(tiny.run)
    for name, caption in list(_captions(tiny).items())[:3]:
        hits = index.search_text(caption, k=len(tiny.test_images))
        expected = {r.item.name: r.score for r in predict.rank_images(model, proc, caption, tiny.test_images)}
        assert sorted(h.path for h in hits) == sorted(expected)  # every image, once
        np.testing.assert_allclose([h.score for h in hits], [expected[h.path] for h in hits], atol=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)  # best first
        assert all(h.kind == "image" and h.text is None for h in hits)
        own = next(h for h in hits if h.path == name)  # the caption's own image, with predict's score
        assert own.score == pytest.approx(expected[name], abs=1e-5)
        top3 = index.search_text(caption, k=3)
        assert [h.id for h in top3] == [h.id for h in hits[:3]]
        np.testing.assert_allclose([h.score for h in top3], sorted(expected.values(), reverse=True)[:3], atol=1e-5)


def test_image_search_finds_the_image_itself_first(tmp_path: Path, tiny: Tiny) -> None:
    index = _build(tmp_path, tiny)
    for path in tiny.test_images[:3]:
        hits = index.search_image(path, k=2)
        assert hits[0].path == path.name and hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert len(hits) == 2 and hits[1].score <= hits[0].score
    with Image.open(tiny.test_images[1]) as im:  # a PIL image works too
        assert index.search_image(im.convert("RGB"), k=1)[0].path == tiny.test_images[1].name


def test_added_texts_are_found_by_image_like_rank_texts(tmp_path: Path, tiny: Tiny) -> None:
    index = _build(tmp_path, tiny)
    texts = read_texts_file(tiny.world / "annotations/captions_test.json")
    report = index.add_texts(texts, progress=False)
    unique = list(dict.fromkeys(t.strip() for t in texts))
    assert report.added == len(unique) and index.stats().texts == len(unique)
    again = index.add_texts(texts[:5], progress=False)  # already there: skipped, not duplicated
    assert again.added == 0 and again.unchanged == len(set(texts[:5])) and index.stats().texts == len(unique)
    model, proc = load_model(tiny.run)
    image = tiny.test_images[0]
    hits = index.search_image(image, k=5, target="text")
    expected = {r.item: r.score for r in predict.rank_texts(model, proc, image, unique)}
    assert len(hits) == 5 and all(h.text in expected for h in hits)
    np.testing.assert_allclose([h.score for h in hits], [expected[h.text] for h in hits], atol=1e-5)
    np.testing.assert_allclose([h.score for h in hits], sorted(expected.values(), reverse=True)[:5], atol=1e-5)
    assert all(h.kind == "text" and h.path is None for h in hits)
    mixed = index.search_image(image, k=len(index), target="all")
    assert {h.kind for h in mixed} == {"image", "text"} and len(mixed) == len(index)
    assert [h.score for h in mixed] == sorted((h.score for h in mixed), reverse=True)


def test_delete_by_path_and_id_removes_from_results_and_stats(tmp_path: Path, tiny: Tiny) -> None:
    index = _build(tmp_path, tiny)
    index.add_texts(["a red cube", "two blue spheres"], progress=False)
    first, second = tiny.test_images[0], tiny.test_images[1]
    text_id = index.search_text("a red cube", k=1, target="text")[0].id
    second_id = index.search_image(second, k=1)[0].id
    assert index.delete([first.name, second_id, text_id]) == 3
    stats = index.stats()
    assert stats.images == len(tiny.test_images) - 2 and stats.texts == 1
    assert stats.vectors["image"]["vectors"] == stats.images and stats.vectors["text"]["vectors"] == 1
    paths = {h.path for h in index.search_image(first, k=100)}
    assert first.name not in paths and second.name not in paths and len(paths) == stats.images
    assert [h.text for h in index.search_text("a red cube", k=5, target="text")] == ["two blue spheres"]
    with pytest.raises(SearchIndexError, match="holds no image"):
        index.delete(first.name)  # already gone
    with pytest.raises(SearchIndexError, match="no entry with id 9999"):
        index.delete(9999)
    assert index.stats().images == stats.images  # a failed delete deletes nothing
    # deleted ids are never reused: a re-added file gets a new id
    index.add_images(first, progress=False)
    assert index.search_image(first, k=1)[0].id > max(e.id for e in index.entries() if e.path != first.name)


def test_reopening_gives_identical_results(tmp_path: Path, tiny: Tiny) -> None:
    index = _build(tmp_path, tiny)
    index.add_texts(["a red cube", "a small green cone"], progress=False)
    index.delete(tiny.test_images[2].name)
    queries = ["a large green sphere", "a gray cone"]
    before = [index.search_text(q, k=10, target="all") for q in queries] + [index.search_image(tiny.test_images[0], k=10)]
    stats = index.stats()
    index.close()
    reopened = SearchIndex.open(tmp_path / "idx")  # the model is reloaded from the recorded source
    assert reopened.repairs == []
    after = [reopened.search_text(q, k=10, target="all") for q in queries] + [reopened.search_image(tiny.test_images[0], k=10)]
    assert after == before
    assert reopened.stats().images == stats.images and reopened.stats().texts == stats.texts
    assert reopened.model_info.source == str(load_model(tiny.run)[1].source)  # the exact checkpoint folder


def test_another_model_is_refused_with_a_clear_message(tmp_path: Path, tiny: Tiny) -> None:
    _build(tmp_path, tiny).close()
    with pytest.raises(ModelMismatch) as err:
        SearchIndex.open(tmp_path / "idx", model=tiny.other)
    message = str(err.value)
    assert "was built with model" in message and str(tmp_path / "idx") in message and "build a new index" in message
    assert "retrieval_seed7" in message and "fingerprint sha256:" in message
    with pytest.raises(ModelMismatch):  # a resumed build with another model is refused too
        SearchIndex.create(tmp_path / "idx", tiny.other, root=tiny.world / "images/test", exist_ok=True)
    # the same weights in another folder are the same model
    copy = tmp_path / "copy_of_run"
    shutil.copytree(tiny.run, copy)
    assert SearchIndex.open(tmp_path / "idx", model=copy).search_image(tiny.test_images[0], k=1)[0].path == tiny.test_images[0].name
    assert weights_fingerprint(load_model(copy)[0]) == weights_fingerprint(load_model(tiny.run)[0])
    assert weights_fingerprint(load_model(tiny.other)[0]) != weights_fingerprint(load_model(tiny.run)[0])


def test_changed_preprocessing_is_refused(tmp_path: Path, tiny: Tiny) -> None:
    _build(tmp_path, tiny).close()
    model, proc = load_model(tiny.run)
    proc.image = ImageProcessor(dataclasses.replace(proc.image.config, resize_mode="squash"))  # same weights, other preprocessing
    with pytest.raises(ModelMismatch, match="image preprocessing differ.*resize_mode: 'shortest_then_center_crop' -> 'squash'"):
        SearchIndex.open(tmp_path / "idx", model=(model, proc))


def test_k_is_clamped_and_bad_queries_raise(tmp_path: Path, tiny: Tiny) -> None:
    index = _build(tmp_path, tiny)
    n = len(tiny.test_images)
    assert len(index.search_text("a cube", k=10**9)) == n  # clamped to the index size
    assert len(index.search_text("a cube", k=10**9, target="text")) == 0  # no texts yet: nothing, not an error
    for bad_k in (0, -3, "5", 2.5, True):
        with pytest.raises(SearchIndexError, match="k must"):
            index.search_text("a cube", k=bad_k)  # type: ignore[arg-type]
    for empty in ("", "   \n"):
        with pytest.raises(SearchIndexError, match="query is empty"):
            index.search_text(empty)
    with pytest.raises(SearchIndexError, match="must be a string"):
        index.search_text(None)  # type: ignore[arg-type]
    with pytest.raises(SearchIndexError, match="target must be"):
        index.search_text("a cube", target="video")  # type: ignore[arg-type]
    hits = index.search_text("un cube rouge à gauche d'une sphère 🙂 東京", k=3)  # unicode is just text
    assert len(hits) == 3 and all(-1.0 - 1e-5 <= h.score <= 1.0 + 1e-5 for h in hits)
    bad = tmp_path / "bad.png"
    bad.write_bytes(tiny.test_images[0].read_bytes()[:60])
    with pytest.raises(DataError, match="bad.png"):
        index.search_image(bad)


def test_non_finite_vectors_are_neither_searched_nor_stored(tmp_path: Path, tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN query returned [] with only a RuntimeWarning; NaN embeddings were stored and never found."""
    import torch

    index = _build(tmp_path, tiny)
    dim = index.manifest.model.embed_dim
    with pytest.raises(SearchIndexError, match="NaN or inf"):
        index.search_vector(np.full(dim, np.nan))
    with pytest.raises(SearchIndexError, match=r"one query vector, got an array of shape \(2, "):
        index.search_vector(np.ones((2, dim)))
    monkeypatch.setattr(predict, "embed_texts", lambda m, p, texts: torch.full((len(texts), dim), float("nan")))
    with pytest.raises(SearchIndexError, match=r"returned 2 embedding\(s\) with NaN or inf values; nothing was stored"):
        index.add_texts(["a red cube", "a blue sphere"], progress=False)
    assert index.stats().texts == 0


def test_empty_texts_are_refused_before_anything_is_added(tmp_path: Path, tiny: Tiny) -> None:
    index = _build(tmp_path, tiny)
    with pytest.raises(SearchIndexError, match="text #1 is empty"):
        index.add_texts(["a red cube", "  ", "two spheres"], progress=False)
    with pytest.raises(SearchIndexError, match="text #0 is a int"):
        index.add_texts([3], progress=False)  # type: ignore[list-item]
    assert index.stats().texts == 0
    empty_json = tmp_path / "texts.json"
    empty_json.write_text(json.dumps(["fine", ""]))
    with pytest.raises(SearchIndexError, match=r"texts.json item \[1\] is an empty text"):
        read_texts_file(empty_json)


def test_a_hugging_face_clip_folder_works_too(tmp_path: Path, tiny: Tiny) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    from tests.hub.conftest import _save, text_config, vision_config

    torch.manual_seed(0)
    ids = {"pad_token_id": 0, "bos_token_id": 5, "eos_token_id": 3, "sep_token_id": 3}
    clip = transformers.CLIPModel(transformers.CLIPConfig(text_config=text_config(**ids), vision_config=vision_config(), projection_dim=16))
    folder = _save(tmp_path / "clip", clip, transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}))
    index = SearchIndex.create(tmp_path / "idx", folder, root=tiny.world / "images/test")
    index.add_images(tiny.world / "images/test", progress=False)
    assert index.model_info.embed_dim == 16 and index.model_info.model_type == "dual_encoder"
    assert index.search_image(tiny.test_images[2], k=1)[0].path == tiny.test_images[2].name
    model, proc = load_model(folder)
    hits = index.search_text("a red cube", k=3)
    expected = {r.item.name: r.score for r in predict.rank_images(model, proc, "a red cube", tiny.test_images)}
    np.testing.assert_allclose([h.score for h in hits], [expected[h.path] for h in hits], atol=1e-5)
    np.testing.assert_allclose([h.score for h in hits], sorted(expected.values(), reverse=True)[:3], atol=1e-5)
    index.close()
    with pytest.raises(ModelMismatch, match="was built with model"):
        SearchIndex.open(tmp_path / "idx", model=tiny.run)
