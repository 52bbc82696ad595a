"""The ``mosi`` reader on tiny MMSA- and MultiBench-layout pickles written in ``tmp_path``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from polymodal.data.formats import READERS, affect, read_source
from polymodal.data.report import DataReport
from polymodal.data.sources import MosiSource, TableSource
from polymodal.errors import DataError

N, T, DT, FA, FV = 6, 5, 4, 3, 2


def _mmsa_split(rng: np.random.Generator, offset: int) -> dict[str, Any]:
    text = np.zeros((N, T, DT), np.float32)
    audio = np.zeros((N, 8, FA), np.float32)
    vision = np.zeros((N, 7, FV), np.float32)
    text_lengths = np.array([5, 4, 3, 2, 1, 5])
    audio_lengths = np.array([8, 6, 1, 0, 3, 8])
    vision_lengths = np.array([7, 2, 7, 1, 5, 7])
    bert = np.zeros((N, 3, T), np.int64)
    for i in range(N):  # right-padded, as MMSA's pack_padded_sequence expects
        text[i, : text_lengths[i]] = rng.normal(size=(text_lengths[i], DT)) + 1
        audio[i, : audio_lengths[i]] = rng.normal(size=(audio_lengths[i], FA)) + 1
        vision[i, : vision_lengths[i]] = rng.normal(size=(vision_lengths[i], FV)) + 1
        bert[i, 1, : text_lengths[i]] = 1
    audio[0, 2, 1] = -np.inf  # MOSEI's COVAREP has -inf
    vision[1, 0, 0] = np.nan
    return {
        "id": np.array([f"vid{offset}$_${i}" for i in range(N)]),
        "raw_text": np.array([f"utterance {offset}.{i}" for i in range(N)]),
        "text": text,
        "text_bert": bert,
        "audio": audio,
        "vision": vision,
        "audio_lengths": audio_lengths,
        "vision_lengths": vision_lengths,
        "regression_labels": np.array([-3.0, -1.4, 0.0, 0.6, 2.2, 3.0], np.float32),
        "annotations": np.array(["Negative"] * N),
    }


def _multibench_split(rng: np.random.Generator) -> dict[str, Any]:
    text = rng.normal(size=(N, T, DT)).astype(np.float32) + 1
    audio = rng.normal(size=(N, T, FA)).astype(np.float32)
    vision = rng.normal(size=(N, T, FV)).astype(np.float32)
    for i, pad in enumerate([0, 1, 2, 3, 4, 0]):  # left-padded, as MultiBench's get_data.py strips
        text[i, :pad] = audio[i, :pad] = vision[i, :pad] = 0
    audio[2, 3, 0] = -np.inf
    return {
        "text": text,
        "audio": audio,
        "vision": vision,
        "labels": np.array([-2.0, -0.4, 0.0, 0.8, 1.6, 2.8]).reshape(N, 1, 1),
        "id": np.array([[f"v{i}", str(i)] for i in range(N)]),
    }


def _write(path: Path, tree: Any) -> Path:
    path.write_bytes(pickle.dumps(tree))
    return path


@pytest.fixture
def mmsa(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return _write(tmp_path / "aligned_50.pkl", {k: _mmsa_split(rng, o) for o, k in enumerate(("train", "valid", "test"))})


@pytest.fixture
def multibench(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    return _write(tmp_path / "mosi_raw.pkl", {k: _multibench_split(rng) for k in ("train", "valid", "test")})


def _read(path: Path, report: DataReport | None = None, **kw: Any) -> list:
    return list(read_source(MosiSource(format="mosi", path=path, **kw), report))


def test_registered_under_mosi() -> None:
    assert READERS["mosi"] is affect.read


def test_mmsa_layout_keeps_real_frames_and_counts_nonfinite(mmsa: Path) -> None:
    report = DataReport(source="t")
    samples = _read(mmsa, report, split="val")
    assert len(samples) == N
    s = samples[0]
    assert s.sample_id == "vid1$_$0" and s.text == "utterance 1.0" and s.split == "val"
    assert s.origin == f"{mmsa}:valid[0]" and s.meta["layout"] == "mmsa"
    assert [x.label for x in samples] == pytest.approx([-3.0, -1.4, 0.0, 0.6, 2.2, 3.0])
    assert all(isinstance(x.label, float) for x in samples)
    assert [x.features["text"].shape[0] for x in samples] == [5, 4, 3, 2, 1, 5]  # from text_bert's mask
    assert [x.features["audio"].shape[0] for x in samples] == [8, 6, 1, 1, 3, 8]  # 0 frames -> one zero frame
    assert [x.features["video"].shape[0] for x in samples] == [7, 2, 7, 1, 5, 7]
    assert s.features["audio"].shape[1] == FA and s.features["video"].shape[1] == FV
    assert s.features["text"].dtype == np.float32
    assert s.features["audio"][2, 1] == 0.0 and samples[1].features["video"][0, 0] == 0.0
    assert all(np.isfinite(x.features[m]).all() for x in samples for m in ("text", "audio", "video"))
    assert samples[3].features["audio"].tolist() == [[0.0] * FA]
    assert report.counts["nonfinite_values"] == 2
    assert report.counts["empty_sequences"] == 1
    assert report.counts["utterances"] == N
    assert report.num_problems == 0  # replaced values are counted, not problems


def test_mmsa_without_lengths_keeps_every_frame_and_max_length_cuts(mmsa: Path, tmp_path: Path) -> None:
    tree = pickle.loads(mmsa.read_bytes())
    for key in ("audio_lengths", "vision_lengths", "text_bert", "raw_text"):
        del tree["train"][key]
    path = _write(tmp_path / "nolen.pkl", tree)
    samples = _read(path, split="train", layout="mmsa")
    assert {x.features["audio"].shape[0] for x in samples} == {8}
    assert samples[0].text is None
    cut = _read(mmsa, split="test", max_length=2)
    assert max(x.features[m].shape[0] for x in cut for m in ("text", "audio", "video")) == 2


def test_multibench_layout_strips_left_padding(multibench: Path) -> None:
    report = DataReport(source="t")
    samples = _read(multibench, report, split="train")
    assert [x.label for x in samples] == pytest.approx([-2.0, -0.4, 0.0, 0.8, 1.6, 2.8])
    assert [x.features["text"].shape[0] for x in samples] == [5, 4, 3, 2, 1, 5]
    assert [x.features["video"].shape[0] for x in samples] == [5, 4, 3, 2, 1, 5]  # aligned: same start
    assert samples[1].sample_id == "v1_1" and samples[1].text is None
    assert samples[1].origin.endswith(":train[1]") and samples[1].meta["layout"] == "multibench"
    assert (samples[1].features["text"][0] != 0).any()
    assert report.counts["nonfinite_values"] == 1


def test_layout_can_be_forced_and_mismatch_names_the_key(multibench: Path) -> None:
    with pytest.raises(DataError, match=r"lacks key\(s\) 'regression_labels'"):
        _read(multibench, split="test", layout="mmsa")


def test_missing_split_key_and_field_and_file(mmsa: Path, tmp_path: Path) -> None:
    tree = pickle.loads(mmsa.read_bytes())
    del tree["valid"]
    del tree["test"]["audio"]
    path = _write(tmp_path / "broken.pkl", tree)
    with pytest.raises(DataError, match=r"split 'val' needs key 'valid' in .*broken\.pkl"):
        _read(path, split="val")
    with pytest.raises(DataError, match=r"'test' of .*broken\.pkl \(mmsa layout\) lacks key\(s\) 'audio'"):
        _read(path, split="test")
    with pytest.raises(DataError, match=r"mosi source: path file not found: .*nope\.pkl"):
        _read(tmp_path / "nope.pkl", split="train")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"junk\.pkl is not a readable feature pickle"):
        _read(tmp_path / "junk.pkl", split="train")
    _write(tmp_path / "nolabels.pkl", {"train": {"id": [], "text": []}})
    with pytest.raises(DataError, match="neither 'regression_labels'"):
        _read(tmp_path / "nolabels.pkl", split="train")


def test_refuses_to_unpickle_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    path = _write(tmp_path / "evil.pkl", {"train": Evil()})
    with pytest.raises(DataError, match=r"refusing to load builtins\.print"):
        _read(path, split="train")


def test_bad_label_is_a_problem_not_a_crash(mmsa: Path, tmp_path: Path) -> None:
    tree = pickle.loads(mmsa.read_bytes())
    tree["train"]["regression_labels"][2] = np.nan
    report = DataReport(source="t")
    samples = _read(_write(tmp_path / "nan.pkl", tree), report, split="train")
    assert len(samples) == N - 1 and report.counts["bad_record"] == 1


def test_spec_rejects_unknown_split(mmsa: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        MosiSource(format="mosi", path=mmsa, split="valid")


def test_raw_file_jsonl_reads_a_float_sentiment_label(tmp_path: Path) -> None:
    rows = [
        {"id": "u1", "text": "it was great", "audio": "a/u1.wav", "video": "v/u1.mp4", "label": 2.4},
        {"id": "u2", "text": "meh", "audio": "a/u2.wav", "video": "v/u2.mp4", "label": -0.6},
    ]
    path = tmp_path / "mosi.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    spec = TableSource(format="jsonl", path=path, id_field="id", image_field=None, audio_field="audio", video_field="video")
    samples = list(read_source(spec))
    assert [s.label for s in samples] == [2.4, -0.6] and all(isinstance(s.label, float) for s in samples)
    assert samples[0].audio_path == tmp_path / "a/u1.wav" and samples[0].video_path == tmp_path / "v/u1.mp4"
    assert samples[1].text == "meh"


def test_labels_that_are_not_numbers_and_a_scalar_id_are_named(mmsa: Path, tmp_path: Path) -> None:
    tree = pickle.loads(mmsa.read_bytes())
    tree["train"]["regression_labels"] = ["pos"] * len(tree["train"]["id"])
    with pytest.raises(DataError, match=r"'train' of .*words\.pkl: 'regression_labels' should be numbers"):
        _read(_write(tmp_path / "words.pkl", tree), split="train")
    tree = pickle.loads(mmsa.read_bytes())
    tree["train"]["id"] = 7
    with pytest.raises(DataError, match=r"'id' should be a list of utterance ids, got int"):
        _read(_write(tmp_path / "scalar.pkl", tree), split="train")
