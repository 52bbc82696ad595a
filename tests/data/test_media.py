"""Audio / video / feature inputs through the dataset and collator, and the missing-modality policies."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from polymodal.data.audio import AudioProcessor, AudioProcessorConfig
from polymodal.data.dataset import Collator, SampleDataset
from polymodal.data.media import MediaPlan, pad_stack, plan_from_dict, plan_to_dict
from polymodal.data.sample import Sample
from polymodal.errors import ConfigError, DataError

sf = pytest.importorskip("soundfile")


def _utterance(i: int, audio: bool = True, video: bool = True, frames: int = 3) -> Sample:
    features = {"text": np.full((frames, 4), i, np.float32)}
    if audio:
        features["audio"] = np.full((frames + 1, 2), i, np.float32)
    if video:
        features["video"] = np.full((frames, 3), i, np.float32)
    return Sample(sample_id=str(i), origin=f"mosi.pkl:train[{i}]", label=float(i) - 1.5, features=features)


def _batch(samples: list[Sample], plan: MediaPlan) -> dict:
    data = SampleDataset(samples, None, media=plan)
    return Collator(None, media=plan)([data[i] for i in range(len(samples))])


FEATURES = ("audio", "text", "video")
REQUIRED = tuple(f"{m}_features" for m in FEATURES)


def test_pad_stack_pads_along_the_time_axis_with_a_mask() -> None:
    a, b = torch.ones(2, 5), torch.full((2, 3), 2.0)
    out, mask, present = pad_stack([a, b, None], time_axis=-1)
    assert out.shape == (3, 2, 5)
    assert mask.tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4]
    assert present.tolist() == [True, True, False]
    assert torch.equal(out[1, :, :3], b) and float(out[1, :, 3:].abs().sum()) == 0.0
    assert float(out[2].abs().sum()) == 0.0  # an absent row is one zero step


def test_pad_stack_rejects_inputs_that_differ_off_the_time_axis() -> None:
    with pytest.raises(DataError, match=r"shapes \[2, 5\] and \[3, 5\]"):
        pad_stack([torch.ones(2, 5), torch.ones(3, 5)], time_axis=-1)


def test_features_are_padded_and_masked_per_modality() -> None:
    plan = MediaPlan(features=FEATURES, required=REQUIRED)
    batch = _batch([_utterance(0, frames=2), _utterance(1, frames=4)], plan)
    assert batch["text_features"].shape == (2, 4, 4)
    assert batch["audio_features"].shape == (2, 5, 2)
    assert batch["text_features_mask"].sum(1).tolist() == [2, 4]
    assert "audio_present" not in batch and batch["num_missing"] == {}
    assert batch["label"].tolist() == [-1.5, -0.5]


def test_skip_policy_drops_samples_without_a_required_modality_and_counts_them() -> None:
    plan = MediaPlan(features=FEATURES, required=REQUIRED, missing="skip")
    batch = _batch([_utterance(0), _utterance(1, audio=False), _utterance(2)], plan)
    assert batch["num_skipped"] == 1
    assert [s.sample_id for s in batch["samples"]] == ["0", "2"]


@pytest.mark.parametrize("policy", ["zero", "learned"])
def test_fill_policies_keep_the_sample_and_flag_the_absent_modality(policy: str) -> None:
    plan = MediaPlan(features=FEATURES, required=REQUIRED, missing=policy)
    batch = _batch([_utterance(0), _utterance(1, audio=False), _utterance(2, video=False)], plan)
    assert batch["num_skipped"] == 0
    assert batch["audio_present"].tolist() == [True, False, True]
    assert batch["video_present"].tolist() == [True, True, False]
    assert "text_present" not in batch
    assert batch["num_missing"] == {"audio_features": 1, "video_features": 1}
    assert float(batch["audio_features"][1].abs().sum()) == 0.0


def test_unknown_missing_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="missing_modality must be one of"):
        MediaPlan(missing="drop")


def _wav(path: Path, seconds: float, rate: int = 22050) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


def test_audio_files_decode_to_padded_log_mels(tmp_path: Path) -> None:
    audio = AudioProcessor(AudioProcessorConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16))
    plan = MediaPlan(audio=audio, required=("audio",))
    samples = [
        Sample(sample_id="a", origin="rows.jsonl:1", text="x", audio_path=_wav(tmp_path / "a.wav", 0.5)),
        Sample(sample_id="b", origin="rows.jsonl:2", text="y", audio_path=_wav(tmp_path / "b.wav", 0.25)),
    ]
    batch = _batch(samples, plan)
    assert batch["audio"].shape[:2] == (2, 16)
    lengths = batch["audio_mask"].sum(1).tolist()
    assert lengths[0] == batch["audio"].shape[2] and 0 < lengths[1] < lengths[0]


def test_an_unreadable_audio_file_is_named_and_then_skipped_or_filled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wav")
    good = Sample(sample_id="ok", origin="rows.jsonl:1", audio_path=_wav(tmp_path / "ok.wav", 0.2))
    broken = Sample(sample_id="bad", origin="rows.jsonl:2", audio_path=bad)
    audio = AudioProcessor(AudioProcessorConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16))
    with caplog.at_level(logging.WARNING):
        skipped = _batch([good, broken], MediaPlan(audio=audio, required=("audio",), missing="skip"))
    assert skipped["num_skipped"] == 1 and "rows.jsonl:2" in caplog.text
    filled = _batch([good, broken], MediaPlan(audio=audio, required=("audio",), missing="zero"))
    assert filled["num_skipped"] == 0 and filled["audio_present"].tolist() == [True, False]


def test_plan_settings_round_trip_through_json() -> None:
    audio = AudioProcessor(AudioProcessorConfig(n_mels=32, freq_masks=2), train=True)
    plan = MediaPlan(audio=audio, features=("text",), missing="learned", required=("audio", "text_features"))
    back = plan_from_dict(plan_to_dict(plan))
    assert back.audio.config == audio.config and not back.audio.train
    assert (back.features, back.missing, back.required) == (plan.features, plan.missing, plan.required)
    with pytest.raises(ConfigError, match="unknown keys"):
        plan_from_dict(plan_to_dict(plan) | {"colour": 1})
