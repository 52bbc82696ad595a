"""Audio: decoding (libsndfile via ``soundfile``), resampling (``soxr``), log-mel features and SpecAugment.

No torchaudio: it has no CPU wheels everywhere we run, and everything it would give us here is a
window, an STFT and a matrix product. Decoding and resampling are optional dependencies
(``pip install "polymodal[audio]"``) imported only when a file is read, so models that take
precomputed features need neither.

Files are *converted*, never rejected for their format: any sample rate is resampled to the one the
model was trained with, and any channel count is averaged down to mono. A processor's settings travel
with a checkpoint (``to_dict``/``from_dict``), so a model always sees the features it was trained on.
"""

from __future__ import annotations

import importlib
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError, DataError

__all__ = [
    "AudioDependencyError",
    "AudioError",
    "AudioProcessor",
    "AudioProcessorConfig",
    "LogMelSpectrogram",
    "load_audio",
    "mel_filterbank",
    "spec_augment",
    "spec_augment_bands",
]

MelScale = Literal["slaney", "htk"]

# Power below this is treated as silence: log(1e-6) ~= -13.8 (-60 dB), the floor Whisper and
# Hugging Face feature extractors use. Without one, digital silence would give log(0) = -inf.
LOG_FLOOR = 1e-6

_INSTALL_HINT = 'pip install "polymodal[audio]"'


class AudioError(DataError):
    """An audio file is missing, unreadable, corrupt or empty (the message names it)."""


class AudioDependencyError(AudioError, ImportError):
    """``soundfile`` / ``soxr`` is not installed; the message says how to install it."""


# ----- decoding and resampling -----------------------------------------------------------------------


def _import(module: str) -> ModuleType:
    """Import an optional audio dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise AudioDependencyError(f"reading audio files needs the `{module}` package: {_INSTALL_HINT}") from exc
    except OSError as exc:  # soundfile raises OSError when libsndfile itself is missing
        raise AudioDependencyError(f"`{module}` cannot load its native library ({exc}): {_INSTALL_HINT}") from exc


def _label(source: str | Path | bytes, name: str | None) -> str:
    if name is not None:
        return name
    return "<audio bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def _decode(source: str | Path | bytes, label: str) -> tuple[np.ndarray, int]:
    """``([frames, channels] float32 in [-1, 1], sample rate)``; every failure names ``label``."""
    sf = _import("soundfile")
    if isinstance(source, (bytes, bytearray)):
        fp: Any = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise AudioError(f"audio file not found: {label}")
        fp = path
    try:
        # float32 output: libsndfile scales integer PCM by 1 / 2**(bits-1), so int16 lands in [-1, 1).
        data, rate = sf.read(fp, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        # libsndfile's own reason ("Format not recognised.") without soundfile's "Error opening <obj>"
        reason = getattr(exc, "error_string", None) or str(exc)
        raise AudioError(f"not a readable audio file: {label} ({reason})") from None
    except OSError as exc:
        raise AudioError(f"cannot read audio file {label}: {exc.strerror or exc}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {label} is empty (no samples)")
    return data, int(rate)


def _resample(data: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``[frames, channels]`` at ``rate`` -> at ``target`` with soxr's high-quality filter."""
    if rate == target:
        return data
    soxr = _import("soxr")
    out = soxr.resample(np.ascontiguousarray(data), rate, target, quality="HQ")
    return np.asarray(out, dtype=np.float32).reshape(-1, data.shape[1])


def load_audio(
    source: str | Path | bytes, sample_rate: int, mono: bool = True, name: str | None = None
) -> Tensor:
    """Decode a WAV / FLAC / OGG file (path or bytes) to float32 samples in [-1, 1] at ``sample_rate``.

    Returns ``[samples]`` when ``mono`` (channels averaged) else ``[channels, samples]``. Any input
    rate is resampled, so a dataset may mix 44.1 kHz and 16 kHz recordings. Downmixing happens before
    resampling: it is linear, so the result is the same and half the work for stereo.
    Raises :class:`AudioError` naming the file (or ``name``) when it is missing, corrupt or empty.
    """
    if sample_rate <= 0:
        raise ConfigError(f"load_audio: sample_rate must be > 0, got {sample_rate}")
    label = _label(source, name)
    data, rate = _decode(source, label)
    if mono and data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True, dtype=np.float32)
    data = _resample(data, rate, sample_rate)
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # [channels, samples]
    return wave[0].clone() if mono else wave


# ----- features --------------------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray, scale: MelScale) -> np.ndarray:
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    # Slaney (Auditory Toolbox / librosa): linear below 1 kHz, logarithmic above.
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    mel = hz / f_sp
    log_region = hz >= min_log_hz
    mel[log_region] = min_log_hz / f_sp + np.log(hz[log_region] / min_log_hz) / logstep
    return mel


def _mel_to_hz(mel: np.ndarray, scale: MelScale) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    hz = mel * f_sp
    log_region = mel >= min_log_mel
    hz[log_region] = min_log_hz * np.exp(logstep * (mel[log_region] - min_log_mel))
    return hz


def mel_filterbank(
    n_freqs: int,
    n_mels: int,
    sample_rate: int,
    f_min: float = 0.0,
    f_max: float | None = None,
    mel_scale: MelScale = "slaney",
    norm: Literal["slaney"] | None = "slaney",
) -> Tensor:
    """Triangular mel filters ``[n_freqs, n_mels]`` mapping a one-sided power spectrum to mel bands.

    The same construction as librosa / torchaudio / Hugging Face: ``n_mels + 2`` points evenly spaced
    on the mel scale between ``f_min`` and ``f_max`` (default Nyquist), one triangle per inner point.
    ``norm='slaney'`` divides each triangle by its width in Hz so every band has the same area, which
    keeps wide high-frequency bands from dominating the features.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_freqs < 2 or n_mels < 1:
        raise ConfigError(f"mel_filterbank: need n_freqs >= 2 and n_mels >= 1, got {n_freqs} and {n_mels}")
    if not 0.0 <= f_min < f_max <= sample_rate / 2:
        raise ConfigError(
            f"mel_filterbank: need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, "
            f"got f_min={f_min}, f_max={f_max}"
        )
    if mel_scale not in ("slaney", "htk"):
        raise ConfigError(f"mel_filterbank: mel_scale must be 'slaney' or 'htk', got {mel_scale!r}")
    if norm not in ("slaney", None):
        raise ConfigError(f"mel_filterbank: norm must be 'slaney' or None, got {norm!r}")
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    mel_edges = np.linspace(*_hz_to_mel(np.array([f_min, f_max], dtype=np.float64), mel_scale), n_mels + 2)
    hz_edges = _mel_to_hz(mel_edges, mel_scale)
    widths = np.diff(hz_edges)  # [n_mels + 1]
    slopes = hz_edges[None, :] - fft_freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    if norm == "slaney":
        filters *= 2.0 / (hz_edges[2:] - hz_edges[:-2])
    return torch.from_numpy(filters.astype(np.float32))


class LogMelSpectrogram(nn.Module):
    """Waveform ``[samples]`` / ``[batch, samples]`` -> natural-log mel power ``[(batch,) n_mels, frames]``.

    Periodic Hann window, frames centred on ``t * hop_length`` (reflect padding, so the first frame
    sees the start of the clip mirrored rather than silence), power spectrum, mel filters, then
    ``log(max(mel, LOG_FLOOR))``: the floor turns digital silence into a finite -13.8 instead of -inf.
    ``frames = 1 + samples // hop_length``. The window and filters are non-persistent buffers: they
    follow ``.to(device)`` but are rebuilt from the settings, not stored in checkpoints.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        win_length: int | None = None,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 0.0,
        f_max: float | None = None,
        mel_scale: MelScale = "slaney",
        norm: Literal["slaney"] | None = "slaney",
        floor: float = LOG_FLOOR,
    ) -> None:
        super().__init__()
        win_length = win_length or n_fft
        if not 0 < win_length <= n_fft or hop_length < 1:
            raise ConfigError(
                f"log-mel: need 0 < win_length <= n_fft and hop_length >= 1, "
                f"got win_length={win_length}, n_fft={n_fft}, hop_length={hop_length}"
            )
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = sample_rate, n_fft, win_length, hop_length
        self.n_mels, self.floor = n_mels, floor
        fb = mel_filterbank(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max, mel_scale, norm)
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        self.register_buffer("filters", fb.T.contiguous(), persistent=False)  # [n_mels, n_freqs]

    def num_frames(self, samples: int) -> int:
        """How many frames ``samples`` samples give (for building frame masks of padded batches)."""
        return 1 + samples // self.hop_length

    def forward(self, waveform: Tensor) -> Tensor:
        if waveform.dim() not in (1, 2) or waveform.shape[-1] == 0:
            raise ValueError(
                f"log-mel: expected a waveform [samples] or [batch, samples] with samples > 0, "
                f"got {list(waveform.shape)}"
            )
        x = waveform.to(self.window.dtype)
        samples = x.shape[-1]
        if samples <= self.n_fft // 2:
            # Reflect padding needs more samples than it pads; a clip this short is padded with silence.
            x = nn.functional.pad(x, (0, self.n_fft // 2 + 1 - samples))
        spec = torch.stft(
            x,
            self.n_fft,
            hop_length=self.hop_length,
            win_length=self.win_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )[..., : self.num_frames(samples)]
        power = spec.real.square() + spec.imag.square()
        return torch.matmul(self.filters, power).clamp(min=self.floor).log()


# ----- SpecAugment -----------------------------------------------------------------------------------


def spec_augment_bands(
    n_mels: int,
    frames: int,
    rng: np.random.Generator,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_width_fraction: float,
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The ``(start, width)`` bands :func:`spec_augment` masks: mel bands first, then frame ranges.

    Widths are uniform in ``[0, freq_width]`` mel bands and ``[0, time_width_fraction * frames]``
    frames (a fraction, so short and long clips lose the same share), starts uniform over where the
    band fits. Draw order is fixed, so the same ``rng`` state gives the same bands.
    """
    freq: list[tuple[int, int]] = []
    for _ in range(freq_masks):
        width = int(rng.integers(0, min(freq_width, n_mels) + 1))
        freq.append((int(rng.integers(0, n_mels - width + 1)), width))
    time: list[tuple[int, int]] = []
    max_time = min(int(time_width_fraction * frames), frames)
    for _ in range(time_masks):
        width = int(rng.integers(0, max_time + 1))
        time.append((int(rng.integers(0, frames - width + 1)), width))
    return freq, time


def spec_augment(
    mel: Tensor,
    rng: np.random.Generator,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_width_fraction: float,
) -> Tensor:
    """SpecAugment (Park et al., 2019) frequency and time masking of ``mel`` ``[n_mels, frames]``.

    Returns a masked copy; masked cells take the mel's mean rather than zero, because zero is a loud
    value on a log scale (silence is about -13.8) and would teach the model a fake spectral edge.
    """
    if mel.dim() != 2:
        raise ValueError(f"spec_augment: expected a log-mel [n_mels, frames], got {list(mel.shape)}")
    freq, time = spec_augment_bands(*mel.shape, rng, freq_masks, freq_width, time_masks, time_width_fraction)
    out = mel.clone()
    fill = mel.mean()
    for start, width in freq:
        out[start : start + width, :] = fill
    for start, width in time:
        out[:, start : start + width] = fill
    return out


# ----- processor -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioProcessorConfig:
    """Everything that turns a waveform into the encoder's input; saved next to every checkpoint."""

    sample_rate: int = 16000
    n_fft: int = 400  # 25 ms windows at 16 kHz
    hop_length: int = 160  # 10 ms hop: 100 frames per second
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    win_length: int | None = None  # None: n_fft
    mel_scale: str = "slaney"
    mel_norm: str | None = "slaney"
    # Longer clips are cut to this: a random window in training, the first max_seconds in eval.
    max_seconds: float | None = 10.0
    # Shorter clips are padded with silence to max_seconds, so every clip has the same shape: what a tower
    # that takes no mask needs (audio as the non-text side of a dual encoder, CLAP-style).
    pad_to_max: bool = False
    # SpecAugment, training only; 0 masks = off
    freq_masks: int = 0
    freq_width: int = 8  # mel bands per frequency mask, at most
    time_masks: int = 0
    time_width_fraction: float = 0.05  # frames per time mask, at most, as a fraction of the clip

    def __post_init__(self) -> None:
        def need(ok: bool, option: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"audio processor: {option} must be {rule}, got {getattr(self, option)!r}")

        need(self.sample_rate > 0, "sample_rate", "> 0")
        need(self.n_fft >= 2, "n_fft", ">= 2")
        need(self.hop_length >= 1, "hop_length", ">= 1")
        need(self.win_length is None or 0 < self.win_length <= self.n_fft, "win_length", f"in (0, n_fft={self.n_fft}]")
        need(self.n_mels >= 1, "n_mels", ">= 1")
        nyquist = self.sample_rate / 2
        need(0 <= self.f_min < (self.f_max or nyquist), "f_min", "in [0, f_max)")
        need(self.f_max is None or self.f_max <= nyquist, "f_max", f"<= sample_rate / 2 = {nyquist}")
        need(self.mel_scale in ("slaney", "htk"), "mel_scale", "'slaney' or 'htk'")
        need(self.mel_norm in ("slaney", None), "mel_norm", "'slaney' or None")
        need(self.max_seconds is None or self.max_seconds > 0, "max_seconds", "> 0 or None")
        need(not self.pad_to_max or self.max_seconds is not None, "pad_to_max", "used with a max_seconds")
        for option in ("freq_masks", "freq_width", "time_masks"):
            need(getattr(self, option) >= 0, option, ">= 0")
        need(0.0 <= self.time_width_fraction <= 1.0, "time_width_fraction", "in [0, 1]")

    @property
    def max_samples(self) -> int | None:
        return None if self.max_seconds is None else max(1, round(self.max_seconds * self.sample_rate))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AudioProcessorConfig:
        """Rebuild from :meth:`to_dict`; unknown keys are an error, not silently dropped settings."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"audio processor: unknown option(s) {unknown}; valid options: {sorted(known)}")
        return cls(**d)


class AudioProcessor:
    """Waveform ``[samples]`` -> log-mel ``[n_mels, frames]``; ``train=True`` adds random crops + SpecAugment.

    ``rng`` drives the augmentation; datasets pass one seeded by (epoch, index) so a resumed run draws
    the same crops and masks. Without one the processor's own generator (``seed``) is used.
    """

    def __init__(self, config: AudioProcessorConfig | None = None, train: bool = False, seed: int | None = None) -> None:
        self.config = config or AudioProcessorConfig()
        self.train = train
        self._rng = np.random.default_rng(seed)
        c = self.config
        self.features = LogMelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            win_length=c.win_length,
            hop_length=c.hop_length,
            n_mels=c.n_mels,
            f_min=c.f_min,
            f_max=c.f_max,
            mel_scale=c.mel_scale,  # type: ignore[arg-type]  # checked in the config
            norm=c.mel_norm,  # type: ignore[arg-type]
        )

    def num_frames(self, samples: int) -> int:
        """Frames of the log-mel of a ``samples``-long clip after cropping (for padding masks)."""
        limit = self.config.max_samples
        if limit is not None and self.config.pad_to_max:
            return self.features.num_frames(limit)
        return self.features.num_frames(samples if limit is None else min(samples, limit))

    def _crop(self, waveform: Tensor, rng: np.random.Generator) -> Tensor:
        limit = self.config.max_samples
        if limit is not None and self.config.pad_to_max and waveform.shape[0] < limit:
            return torch.nn.functional.pad(waveform, (0, limit - waveform.shape[0]))  # silence
        if limit is None or waveform.shape[0] <= limit:
            return waveform
        start = int(rng.integers(0, waveform.shape[0] - limit + 1)) if self.train else 0
        return waveform[start : start + limit]

    def __call__(self, waveform: Tensor | np.ndarray, rng: np.random.Generator | None = None) -> Tensor:
        rng = rng if rng is not None else self._rng
        wave = torch.as_tensor(waveform)
        if wave.dim() != 1 or not wave.is_floating_point():
            raise AudioError(
                f"audio processor: expected a mono float waveform [samples], got {wave.dtype} {list(wave.shape)}"
            )
        with torch.no_grad():
            mel = self.features(self._crop(wave, rng))
        c = self.config
        if self.train and (c.freq_masks or c.time_masks):
            mel = spec_augment(mel, rng, c.freq_masks, c.freq_width, c.time_masks, c.time_width_fraction)
        return mel

    def load(self, source: str | Path | bytes, rng: np.random.Generator | None = None, name: str | None = None) -> Tensor:
        """Decode ``source`` at the configured sample rate (mono) and process it."""
        return self(load_audio(source, self.config.sample_rate, mono=True, name=name), rng)

    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    @classmethod
    def from_dict(cls, d: dict[str, Any], train: bool = False) -> AudioProcessor:
        return cls(AudioProcessorConfig.from_dict(d), train=train)
