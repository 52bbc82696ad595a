"""Audio loading, log-mel features and SpecAugment, checked against Hugging Face's reference numpy code."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from polymodal.data.audio import (
    AudioDependencyError,
    AudioError,
    AudioProcessor,
    AudioProcessorConfig,
    LogMelSpectrogram,
    load_audio,
    mel_filterbank,
    spec_augment,
    spec_augment_bands,
)
from polymodal.errors import ConfigError, DataError, PolymodalError

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")


def _sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


# ----- mel filters and log-mel vs transformers.audio_utils -------------------------------------------


@pytest.mark.parametrize(
    ("mel_scale", "norm", "n_mels", "f_min", "f_max", "rate", "n_fft"),
    [
        ("slaney", "slaney", 64, 0.0, None, 16000, 400),
        ("htk", None, 40, 20.0, 7600.0, 16000, 512),
        ("htk", "slaney", 80, 0.0, None, 22050, 1024),
    ],
)
def test_mel_filterbank_matches_transformers(mel_scale, norm, n_mels, f_min, f_max, rate, n_fft):
    audio_utils = pytest.importorskip("transformers.audio_utils")
    n_freqs = n_fft // 2 + 1
    ref = audio_utils.mel_filter_bank(
        num_frequency_bins=n_freqs,
        num_mel_filters=n_mels,
        min_frequency=f_min,
        max_frequency=f_max if f_max is not None else rate / 2,
        sampling_rate=rate,
        norm=norm,
        mel_scale=mel_scale,
    )
    ours = mel_filterbank(n_freqs, n_mels, rate, f_min, f_max, mel_scale=mel_scale, norm=norm)
    assert ours.shape == (n_freqs, n_mels) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-7 * ref.max())


def test_slaney_norm_gives_equal_area_bands():
    fb = mel_filterbank(2049, 40, 16000, norm="slaney").numpy().astype(np.float64)
    hz_step = 8000 / 2048
    areas = fb.sum(axis=0) * hz_step  # triangle of height 2/width over width Hz: area 1
    np.testing.assert_allclose(areas, 1.0, rtol=0.02)


@pytest.mark.parametrize(("n_fft", "win_length", "hop", "samples"), [(400, None, 160, 16000), (512, 400, 128, 7001)])
def test_log_mel_matches_transformers_spectrogram(n_fft, win_length, hop, samples):
    audio_utils = pytest.importorskip("transformers.audio_utils")
    rng = np.random.default_rng(0)
    wave = (0.3 * rng.standard_normal(samples) + _sine(440.0, 16000, samples / 16000)).astype(np.float32)
    wave[: samples // 4] = 0.0  # a silent stretch exercises the log floor
    win = win_length or n_fft
    fb = audio_utils.mel_filter_bank(n_fft // 2 + 1, 64, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")
    ref = audio_utils.spectrogram(
        wave.astype(np.float64),
        audio_utils.window_function(win, "hann"),
        frame_length=win,
        hop_length=hop,
        fft_length=n_fft,
        power=2.0,
        center=True,
        pad_mode="reflect",
        mel_filters=fb,
        mel_floor=1e-6,
        log_mel="log",
    )
    ours = LogMelSpectrogram(16000, n_fft=n_fft, win_length=win_length, hop_length=hop, n_mels=64)(torch.from_numpy(wave))
    assert ours.shape == ref.shape == (64, 1 + samples // hop)
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-3)
    assert ours.min().item() == pytest.approx(np.log(1e-6), abs=1e-4)  # the silent stretch sits on the floor


def test_log_mel_batch_equals_per_example():
    rng = np.random.default_rng(1)
    batch = torch.from_numpy(rng.standard_normal((3, 4000)).astype(np.float32))
    lm = LogMelSpectrogram(n_mels=32)
    out = lm(batch)
    assert out.shape == (3, 32, lm.num_frames(4000)) == (3, 32, 26)
    for i in range(3):
        torch.testing.assert_close(out[i], lm(batch[i]), atol=1e-4, rtol=1e-5)


def test_log_mel_of_very_short_clip_has_one_frame():
    out = LogMelSpectrogram(n_mels=16)(torch.ones(50))
    assert out.shape == (16, 1) and torch.isfinite(out).all()


# ----- loading ---------------------------------------------------------------------------------------


def test_resampling_keeps_frequency_and_duration(tmp_path: Path):
    path = tmp_path / "tone.wav"
    sf.write(path, _sine(1000.0, 44100, 1.0), 44100, subtype="FLOAT")
    wave = load_audio(path, sample_rate=16000)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    assert abs(wave.shape[0] - 16000) <= 1
    assert _peak_hz(wave.numpy(), 16000) == pytest.approx(1000.0, abs=2.0)
    # no gain change from the resampler: the sine keeps its amplitude away from the edges
    assert float(wave[1000:-1000].abs().max()) == pytest.approx(0.5, abs=0.01)


def test_stereo_is_averaged_to_mono_or_kept(tmp_path: Path):
    left, right = _sine(300.0, 16000, 0.5), np.full(8000, 0.25, dtype=np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    mono = load_audio(path, 16000)
    np.testing.assert_allclose(mono.numpy(), (left + right) / 2, atol=1e-6)
    both = load_audio(path, 16000, mono=False)
    assert both.shape == (2, 8000)
    np.testing.assert_allclose(both.numpy(), np.stack([left, right]), atol=1e-6)


def test_int16_wav_round_trip_is_scaled_to_unit_range(tmp_path: Path):
    pcm = np.array([0, 16384, -16384, 32767, -32768, 1000], dtype=np.int16)
    path = tmp_path / "pcm16.wav"
    sf.write(path, pcm, 8000, subtype="PCM_16")
    wave = load_audio(path, 8000)
    np.testing.assert_allclose(wave.numpy(), pcm / 32768.0, atol=1e-7)
    assert wave.min() >= -1.0 and wave.max() <= 1.0
    # bytes work too, with the same result
    torch.testing.assert_close(load_audio(path.read_bytes(), 8000), wave)


def test_flac_round_trip(tmp_path: Path):
    rng = np.random.default_rng(2)
    pcm = rng.integers(-20000, 20000, size=(3000, 2), dtype=np.int16)
    path = tmp_path / "clip.flac"
    sf.write(path, pcm, 16000, format="FLAC", subtype="PCM_16")
    wave = load_audio(path, 16000, mono=False)
    np.testing.assert_allclose(wave.numpy(), pcm.T / 32768.0, atol=1e-7)  # FLAC is lossless


def test_missing_file_names_it(tmp_path: Path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError, match="nope.wav") as info:
        load_audio(path, 16000)
    assert "not found" in str(info.value)
    assert isinstance(info.value, DataError) and isinstance(info.value, PolymodalError)


def test_corrupt_file_names_it_and_quotes_libsndfile(tmp_path: Path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio at all")
    with pytest.raises(AudioError, match="broken.wav") as info:
        load_audio(path, 16000)
    message = str(info.value)
    reason = message[message.index("(") + 1 : -1]
    assert message.endswith(")") and len(reason) > 5  # libsndfile's own reason is kept
    with pytest.raises(AudioError, match="clip 7") as info:
        load_audio(b"garbage bytes", 16000, name="clip 7")
    assert "BytesIO" not in str(info.value)  # the reason, not soundfile's repr of the buffer


def test_missing_soundfile_says_how_to_install(monkeypatch, tmp_path: Path):
    monkeypatch.setitem(sys.modules, "soundfile", None)  # makes `import soundfile` raise ImportError
    with pytest.raises(AudioDependencyError, match=r'pip install "polymodal\[audio\]"'):
        load_audio(tmp_path / "x.wav", 16000)


def test_empty_file_is_an_error(tmp_path: Path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"empty\.wav.*empty"):
        load_audio(path, 16000)


# ----- SpecAugment -----------------------------------------------------------------------------------


def test_spec_augment_masks_exactly_the_drawn_bands():
    mel = torch.randn(40, 200)
    settings = {"freq_masks": 2, "freq_width": 6, "time_masks": 3, "time_width_fraction": 0.1}
    rng = np.random.default_rng(5)
    freq, time = spec_augment_bands(40, 200, copy.deepcopy(rng), **settings)
    out = spec_augment(mel, rng, **settings)
    assert len(freq) == 2 and len(time) == 3
    assert all(0 <= w <= 6 and 0 <= s and s + w <= 40 for s, w in freq)
    assert all(0 <= w <= 20 and 0 <= s and s + w <= 200 for s, w in time)
    expected = torch.zeros(40, 200, dtype=torch.bool)
    for s, w in freq:
        expected[s : s + w, :] = True
    for s, w in time:
        expected[:, s : s + w] = True
    assert expected.any(), "seed 5 should draw at least one non-empty band"
    assert torch.equal(out[~expected], mel[~expected])  # everything else untouched
    assert torch.all(out[expected] == mel.mean())  # masked cells hold the mean
    assert not torch.equal(out, mel) and mel.shape == out.shape


def test_spec_augment_is_deterministic_per_rng_and_does_not_modify_input():
    mel = torch.randn(32, 100)
    before = mel.clone()
    settings = {"freq_masks": 2, "freq_width": 8, "time_masks": 2, "time_width_fraction": 0.2}
    a = spec_augment(mel, np.random.default_rng(11), **settings)
    b = spec_augment(mel, np.random.default_rng(11), **settings)
    c = spec_augment(mel, np.random.default_rng(12), **settings)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(mel, before)


def test_spec_augment_widths_never_exceed_limits_over_many_draws():
    rng = np.random.default_rng(0)
    for _ in range(200):
        freq, time = spec_augment_bands(10, 30, rng, 1, 50, 1, 0.5)  # freq_width > n_mels is clipped
        (fs, fw), (ts, tw) = freq[0], time[0]
        assert 0 <= fw <= 10 and fs + fw <= 10
        assert 0 <= tw <= 15 and ts + tw <= 30


# ----- processor -------------------------------------------------------------------------------------


def _augmenting() -> AudioProcessorConfig:
    return AudioProcessorConfig(n_mels=32, max_seconds=0.5, freq_masks=2, freq_width=8, time_masks=2, time_width_fraction=0.2)


def test_processor_eval_takes_first_max_seconds_without_augmentation():
    config = _augmenting()
    wave = torch.from_numpy(np.random.default_rng(3).standard_normal(16000 * 2).astype(np.float32))
    proc = AudioProcessor(config, train=False)
    out = proc(wave, np.random.default_rng(0))
    assert out.shape == (32, 1 + 8000 // 160)
    torch.testing.assert_close(out, proc.features(wave[:8000]))  # first 0.5 s, no masks
    torch.testing.assert_close(proc(wave, np.random.default_rng(1)), out)  # rng is irrelevant in eval


def test_processor_train_crops_randomly_and_augments_deterministically():
    config = _augmenting()
    wave = torch.from_numpy(np.random.default_rng(3).standard_normal(16000 * 2).astype(np.float32))
    proc = AudioProcessor(config, train=True)
    a = proc(wave, np.random.default_rng(7))
    assert a.shape == (32, 51)
    torch.testing.assert_close(proc(wave, np.random.default_rng(7)), a)
    assert not torch.equal(proc(wave, np.random.default_rng(8)), a)
    # the training crop is a window of the clip: redo the rng's draws by hand
    rng = np.random.default_rng(7)
    start = int(rng.integers(0, 32000 - 8000 + 1))
    clean = proc.features(wave[start : start + 8000])
    torch.testing.assert_close(a, spec_augment(clean, rng, 2, 8, 2, 0.2))


def test_processor_keeps_short_clips_whole_and_loads_files(tmp_path: Path):
    proc = AudioProcessor(AudioProcessorConfig(n_mels=16, max_seconds=5.0))
    path = tmp_path / "short.wav"
    sf.write(path, _sine(500.0, 8000, 0.25), 8000, subtype="PCM_16")
    out = proc.load(path)
    assert out.shape == (16, proc.num_frames(4000)) == (16, 26)
    with pytest.raises(AudioError, match="mono float waveform"):
        proc(torch.zeros(2, 100))


def test_processor_config_round_trips_through_dict():
    config = AudioProcessorConfig(sample_rate=22050, n_mels=80, f_max=8000.0, max_seconds=None, time_masks=1)
    d = AudioProcessor(config, train=True).to_dict()
    assert d["n_mels"] == 80 and d["max_seconds"] is None
    assert AudioProcessorConfig.from_dict(d) == config
    assert AudioProcessor.from_dict(d).config == config


def test_processor_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown option.*'n_mel'"):
        AudioProcessorConfig.from_dict({"n_mel": 64})


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("sample_rate", 0),
        ("n_fft", 1),
        ("hop_length", 0),
        ("win_length", 401),
        ("n_mels", 0),
        ("f_min", 9000.0),
        ("f_max", 9000.0),
        ("mel_scale", "bark"),
        ("mel_norm", "l2"),
        ("max_seconds", 0.0),
        ("freq_masks", -1),
        ("time_width_fraction", 1.5),
    ],
)
def test_processor_config_rejects_bad_values(option, value):
    with pytest.raises(ConfigError, match=f"audio processor: {option} must be"):
        AudioProcessorConfig(**{option: value})


def test_pad_to_max_pads_short_clips_with_silence_to_one_shape() -> None:
    config = AudioProcessorConfig(sample_rate=8000, n_fft=256, hop_length=80, n_mels=16, max_seconds=0.5, pad_to_max=True)
    processor = AudioProcessor(config)
    short, long = torch.full((1000,), 0.3), torch.full((9000,), 0.3)
    a, b = processor(short), processor(long)
    assert a.shape == b.shape == (16, processor.num_frames(1000))
    assert float(a[:, -5:].max()) == pytest.approx(math.log(1e-6), abs=1e-3)  # the padded tail is silence
    with pytest.raises(ConfigError, match="pad_to_max"):
        AudioProcessorConfig(max_seconds=None, pad_to_max=True)
