"""The procedural soundtrack of a clip: one short tone per event, over light background noise.

Each event sounds at its onset (``onset / fps`` seconds) for ``TONE_FRAMES`` frames:

* timbre by shape: sphere = sine "beep", cube = square "buzz", cylinder = sawtooth "horn",
  cone = band-limited noise "hiss" (noise centred on the pitch, so it still sounds low or high);
* pitch by size: large = low (~220 Hz), small = high (~880 Hz), two octaves apart so that the
  dominant frequency separates them at any timbre; these registers are what "the low sound" means;
* loudness by size: large objects are louder. Every waveform is normalised to unit RMS before the
  size's amplitude is applied, so loudness depends on size only, not on timbre.

A tone's form does not depend on the event's kind (slide or appearance): the soundtrack tells *when*
something happened and what kind of object did it, never *what* happened. The statement task relies
on that (see ``av_writer``). ``dub`` builds the counterfactual soundtrack of the statement task: the
size-dependent part of the two voices (pitch and loudness) swapped, everything else identical.

Output: 16 kHz mono float32 in [-1, 1], deterministic given the clip and the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from polymodal.data.world.motion import Clip

SAMPLE_RATE = 16_000
TIMBRES: dict[str, str] = {"sphere": "sine", "cube": "square", "cylinder": "sawtooth", "cone": "noise"}
SOUND_WORDS: dict[str, str] = {"sine": "beep", "square": "buzz", "sawtooth": "horn", "noise": "hiss"}
REGISTERS: dict[str, str] = {"large": "low", "small": "high"}  # size -> register
PITCH_HZ: dict[str, float] = {"low": 220.0, "high": 880.0}
AMPLITUDE: dict[str, float] = {"large": 0.25, "small": 0.12}
TONE_FRAMES = 1.6  # tone length in frames: under the 2-frame gap between onsets, so tones never overlap
NOISE_LEVEL = 0.004
_ATTACK_S = 0.008


@dataclass(frozen=True)
class Voice:
    """The tone one event makes (``event`` indexes ``Clip.events``)."""

    event: int
    onset_s: float
    duration_s: float
    timbre: str
    register: str
    freq_hz: float
    amplitude: float


def voices(clip: Clip, seed: int) -> list[Voice]:
    """The clip's voices, in event order; a small seeded detune (+-3%) keeps pitches from being identical."""
    rng = np.random.default_rng([seed, clip.clip_id, 13])
    out = []
    for k, e in enumerate(clip.events):
        obj = clip.objects[e.obj]
        register = REGISTERS[obj.size]
        out.append(
            Voice(
                event=k,
                onset_s=e.onset / clip.fps,
                duration_s=TONE_FRAMES / clip.fps,
                timbre=TIMBRES[obj.shape],
                register=register,
                freq_hz=PITCH_HZ[register] * float(rng.uniform(0.97, 1.03)),
                amplitude=AMPLITUDE[obj.size],
            )
        )
    return out


def dub(vs: list[Voice]) -> list[Voice]:
    """Swap pitch and loudness between two voices, keeping each one's timbre and onset.

    The result is the soundtrack of the same clip with the two objects' sizes exchanged: exactly as
    likely as a real soundtrack (sizes are drawn independently of shape and timing), so a listener
    alone cannot tell a dubbed track from a real one.
    """
    if len(vs) != 2:
        raise ValueError(f"dub needs exactly two voices, got {len(vs)}")
    a, b = vs
    return [
        replace(a, register=b.register, freq_hz=b.freq_hz, amplitude=b.amplitude),
        replace(b, register=a.register, freq_hz=a.freq_hz, amplitude=a.amplitude),
    ]


def _waveform(timbre: str, freq: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    phase = freq * t
    if timbre == "sine":
        w = np.sin(2 * np.pi * phase)
    elif timbre == "square":
        w = np.sign(np.sin(2 * np.pi * phase))
    elif timbre == "sawtooth":
        w = 2.0 * (phase % 1.0) - 1.0
    elif timbre == "noise":
        # white noise low-passed to +-freq/4 (moving average), shifted up to freq by a carrier
        width = max(1, int(SAMPLE_RATE / (0.25 * freq)))
        smooth = np.convolve(rng.normal(size=n + width), np.ones(width) / width, mode="valid")[:n]
        w = smooth * np.sin(2 * np.pi * phase)
    else:
        raise ValueError(f"unknown timbre {timbre!r}; expected one of {sorted(SOUND_WORDS)}")
    return w / (np.sqrt(np.mean(w**2)) + 1e-12)


def synthesize(vs: list[Voice], duration_s: float, noise_seed: int) -> np.ndarray:
    """Mix the voices over background noise: float32 mono at ``SAMPLE_RATE``, clipped to [-1, 1].

    The background and each noise-timbre tone are drawn from ``noise_seed`` (and the voice's index),
    never from the voice's pitch, so a real track and its dub share every random sample.
    """
    total = round(duration_s * SAMPLE_RATE)
    rng = np.random.default_rng([noise_seed, 0])
    out = rng.normal(0.0, NOISE_LEVEL, total)
    for v in vs:
        start = round(v.onset_s * SAMPLE_RATE)
        n = min(round(v.duration_s * SAMPLE_RATE), total - start)
        if n <= 0:
            continue
        tone = _waveform(v.timbre, v.freq_hz, n, np.random.default_rng([noise_seed, 1, v.event]))
        t = np.arange(n) / SAMPLE_RATE
        # quick attack, then exponential decay to ~5% at the end: a struck sound, not a click
        env = np.minimum(1.0, t / _ATTACK_S) * np.exp(-3.0 * t / v.duration_s)
        out[start : start + n] += v.amplitude * env * tone
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def sound_phrase(v: Voice) -> str:
    """'a low buzz': how captions name a voice."""
    return f"a {v.register} {SOUND_WORDS[v.timbre]}"
