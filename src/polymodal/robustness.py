"""Robustness curves: a task's headline metric as one input modality is corrupted or dropped, level by level.

    from polymodal.robustness import robustness_curves

    curves = robustness_curves(task, model, samples, loader, device, tokenizer=proc.tokenizer, max_length=32)
    curves["curves"]["image"]["noise"]["headline"]  # one value per level, level 0 first

Every corruption is a batch-level function ``f(batch, level, generator, target) -> batch`` registered in
:data:`CORRUPTIONS` under ``(input type, kind)``; ``level`` runs from 0 (the identity: the very same
batch comes back) to 1 (the strongest corruption). ``target`` says which batch key to corrupt (a model's
``audio`` modality may be a log-mel or a ``audio_features`` sequence) and carries what some corruptions
need (the tokenizer to re-tokenise corrupted text, the image normalisation). Corruptions never modify
the batch they are given.

Levels use *common random numbers*: a run draws the same random values at every level (only the level
decides what they do), so the corruption at level 0.6 contains the one at 0.4 (the same words are
dropped and more, the same noise is larger, the occluder grows around the same place). Curves are then
smooth in the level instead of jittering with a fresh draw per point, and everything is a pure function
of ``seed``.

What one level means per kind (``level`` = l):

* image / video ``noise``: Gaussian noise of standard deviation ``l * IMAGE_NOISE_MAX`` of the pixel range
  ([0, 1] before normalisation), added in normalised space as ``sigma / std_c`` per channel, then the
  pixels are clipped back into the valid range.
* image / video ``blur``: a Gaussian blur of sigma ``l * IMAGE_BLUR_MAX`` of the image side (a torch
  convolution, reflect padding; done in normalised space, which blurring commutes with).
* image / video ``occlusion``: one random square covering the fraction ``l`` of the area (the same place
  in every frame of a clip), filled with 0, the normalised mean colour.
* text ``word_dropout``: each word is removed with probability ``l``; ``typos``: each word gets one
  typo (swap, delete, insert or substitute a character) with probability ``l``. The corrupted strings
  are re-tokenised into ``text_ids`` / ``text_mask``.
* audio (log-mel) ``noise``: additive noise at an SNR falling linearly from ``AUDIO_SNR_DB[0]`` (just
  above level 0) to ``AUDIO_SNR_DB[1]`` (level 1); see :func:`audio_noise` for the approximation.
* features ``noise``: Gaussian noise of ``l`` times each feature dimension's standard deviation.
* ``drop`` (every modality): each sample loses the modality with probability ``l`` (level 1: all of
  them): its input is zeroed and ``<modality>_present`` set False, the classifier's missing-modality
  path; a dropped text is the empty string.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.data.processors import CLIP_MEAN, CLIP_STD
from polymodal.errors import ConfigError
from polymodal.modules.encoders.run_tower import image_tower_of

__all__ = [
    "CORRUPTIONS",
    "DEFAULT_LEVELS",
    "HEADLINE_METRICS",
    "KINDS",
    "Target",
    "applicable_targets",
    "headline_metric",
    "parse_levels",
    "robustness_curves",
]

DEFAULT_LEVELS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
IMAGE_NOISE_MAX = 0.5  # noise std at level 1, as a fraction of the [0, 1] pixel range
IMAGE_BLUR_MAX = 0.06  # blur sigma at level 1, as a fraction of the image side (~2 px at 32, ~13 px at 224)
AUDIO_SNR_DB = (30.0, -10.0)  # SNR just above level 0 and at level 1

# The metric each task's curve plots, first one present wins (every metric is kept in the output too).
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy",),
    "vqa": ("accuracy",),
    "retrieval": ("t2i_R@1", "rsum"),
    "captioning": ("CIDEr",),
    "regression": ("acc2", "mae"),
    "multitask": ("vqa/accuracy", "classification/accuracy", "retrieval/t2i_R@1", "captioning/CIDEr"),
}


@dataclass(frozen=True)
class Target:
    """One input the model reads: which modality it is, its batch key and type, and what corrupting it needs.

    ``input`` is ``"image"`` (``[B, 3, S, S]``, or a clip ``[B, T, 3, S, S]`` when a video tower is the
    visual input), ``"video"``, ``"text"``, ``"audio"`` (a log-mel) or ``"features"`` (``<m>_features``).
    """

    modality: str
    key: str
    input: str
    tokenizer: Any = None
    max_length: int = 32
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD

    @property
    def present_key(self) -> str:
        return f"{self.modality}_present"

    @property
    def mask_key(self) -> str:
        return "text_mask" if self.input == "text" else f"{self.key}_mask"


Corruption = Callable[[dict[str, Any], float, torch.Generator, Target], dict[str, Any]]


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 <= level <= 1.0:
        raise ConfigError(f"corruption level must be in [0, 1], got {level}")
    return level


def _pixels(batch: Mapping[str, Any], target: Target) -> Tensor:
    x = batch.get(target.key)
    if not isinstance(x, Tensor) or x.dim() not in (4, 5):
        raise ValueError(f"{target.modality}: batch['{target.key}'] must be [B, 3, S, S] or [B, T, 3, S, S] pixels")
    return x


def _channel_stats(x: Tensor, target: Target) -> tuple[Tensor, Tensor]:
    shape = [1] * x.dim()
    shape[-3] = x.shape[-3]
    mean = torch.tensor(target.mean[: x.shape[-3]], dtype=x.dtype, device=x.device).view(shape)
    std = torch.tensor(target.std[: x.shape[-3]], dtype=x.dtype, device=x.device).view(shape)
    return mean, std


# ------------------------------------------------------------------------------------------ images


def image_noise(batch: dict[str, Any], level: float, generator: torch.Generator, target: Target) -> dict[str, Any]:
    """Gaussian noise of ``level * IMAGE_NOISE_MAX`` of the pixel range; pixels stay in the valid range."""
    level = _check_level(level)
    x = _pixels(batch, target)
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    if level == 0:
        return batch
    mean, std = _channel_stats(x, target)
    pixels = x * std + mean  # back to [0, 1] to add noise as a fraction of the range and clip there
    noisy = (pixels + level * IMAGE_NOISE_MAX * noise).clamp(0.0, 1.0)
    return batch | {target.key: (noisy - mean) / std}


def _gaussian_kernel(sigma: float, size: int) -> Tensor:
    radius = max(1, min(math.ceil(3 * sigma), size - 1))  # reflect padding needs radius < size
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def image_blur(batch: dict[str, Any], level: float, generator: torch.Generator, target: Target) -> dict[str, Any]:
    """Separable Gaussian blur of sigma ``level * IMAGE_BLUR_MAX * side`` (no random numbers)."""
    level = _check_level(level)
    x = _pixels(batch, target)
    if level == 0:
        return batch
    shape = x.shape
    flat = x.reshape(-1, 1, shape[-2], shape[-1]).float()
    sigma = level * IMAGE_BLUR_MAX * max(shape[-2], shape[-1])
    k = _gaussian_kernel(sigma, min(shape[-2], shape[-1])).to(x.device)
    r = (k.numel() - 1) // 2
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return batch | {target.key: flat.reshape(shape).to(x.dtype)}


def image_occlusion(batch: dict[str, Any], level: float, generator: torch.Generator, target: Target) -> dict[str, Any]:
    """A square covering ``level`` of the area at a random place, filled with 0 (the normalised mean)."""
    level = _check_level(level)
    x = _pixels(batch, target)
    where = torch.rand(x.shape[0], 2, generator=generator)  # drawn at every level: nested squares
    if level == 0:
        return batch
    h, w = x.shape[-2], x.shape[-1]
    side = round(math.sqrt(level) * min(h, w))
    if side == 0:
        return batch
    out = x.clone()
    for row, (u, v) in enumerate(where.tolist()):
        top, left = round(u * (h - side)), round(v * (w - side))
        out[row, ..., top : top + side, left : left + side] = 0.0  # every frame of a clip, every channel
    return batch | {target.key: out}


# ------------------------------------------------------------------------------------------ text


def _text_rng(generator: torch.Generator) -> random.Random:
    return random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))


def _typo(word: str, op: int, a: float, b: float, c: float) -> str:
    """One typo of kind ``op`` (0 swap, 1 delete, 2 insert, 3 substitute) at positions drawn from a, b, c."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    n = len(word)
    if n < 2 and op in (0, 1):
        op = 3  # a one-letter word cannot swap, and deleting it would be word dropout
    i = min(int(a * n), n - 1)
    if op == 0:
        i = min(int(a * (n - 1)), n - 2)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:
        return word[:i] + word[i + 1 :]
    if op == 2:
        return word[: min(int(a * (n + 1)), n)] + letters[int(b * 26) % 26] + word[min(int(a * (n + 1)), n) :]
    new = letters[int(b * 26) % 26]
    if new == word[i].lower():
        new = letters[(int(b * 26) + 1 + int(c * 25)) % 26]
    return word[:i] + new + word[i + 1 :]


def corrupt_texts(texts: Sequence[str | None], kind: str, level: float, rng: random.Random) -> list[str]:
    """Word dropout (``kind="word_dropout"``), one typo per word (``"typos"``) or empty texts (``"drop"``),
    each word affected with probability ``level``. The same random values are drawn at every level."""
    level = _check_level(level)
    out = []
    for text in texts:
        words = (text or "").split()
        draws = [(rng.random(), rng.randrange(4), rng.random(), rng.random(), rng.random()) for _ in words]
        row_draw = rng.random()
        if kind == "drop":
            out.append("" if row_draw < level else (text or ""))
        elif level == 0:
            out.append(text or "")
        elif kind == "word_dropout":
            out.append(" ".join(w for w, d in zip(words, draws) if d[0] >= level))
        elif kind == "typos":
            out.append(" ".join(_typo(w, d[1], d[2], d[3], d[4]) if d[0] < level else w for w, d in zip(words, draws)))
        else:
            raise ValueError(f"unknown text corruption {kind!r}; valid: word_dropout, typos, drop")
    return out


def _retokenise(batch: dict[str, Any], texts: list[str], target: Target) -> dict[str, Any]:
    if target.tokenizer is None:
        raise ConfigError("text corruptions re-tokenise the corrupted texts and need the checkpoint's tokenizer (robustness_curves(tokenizer=...))")
    enc = target.tokenizer.encode(texts, target.max_length)
    out = batch | {"text": texts}
    device = batch["text_ids"].device if isinstance(batch.get("text_ids"), Tensor) else None
    out["text_ids"] = enc.input_ids if device is None else enc.input_ids.to(device)
    out["text_mask"] = enc.attention_mask if device is None else enc.attention_mask.to(device)
    return out


def _text(kind: str) -> Corruption:
    def corrupt(batch: dict[str, Any], level: float, generator: torch.Generator, target: Target) -> dict[str, Any]:
        texts = batch.get("text")
        if not isinstance(texts, (list, tuple)):
            raise TypeError("text corruption: the batch has no 'text' strings to corrupt")
        new = corrupt_texts(texts, kind, level, _text_rng(generator))
        if _check_level(level) == 0:
            return batch
        out = _retokenise(batch, new, target)
        if kind == "drop":
            kept = torch.tensor([not (n == "" and (o or "") != "") for n, o in zip(new, texts)])
            out[target.present_key] = _present(batch, target, len(new)) & kept
        return out

    corrupt.__name__ = f"text_{kind}"
    corrupt.__doc__ = f"Text {kind.replace('_', ' ')} on batch['text'], re-tokenised into text_ids / text_mask."
    return corrupt


text_word_dropout = _text("word_dropout")
text_typos = _text("typos")
text_drop = _text("drop")


# ------------------------------------------------------------------------------------------ audio, features


def _real(batch: Mapping[str, Any], target: Target, x: Tensor, time_axis: int) -> Tensor:
    """A float mask broadcastable to ``x``: 1 on real frames of present rows, 0 on padding / absent rows."""
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    keep = torch.ones(x.shape, dtype=x.dtype, device=x.device)
    mask = batch.get(target.mask_key)
    if isinstance(mask, Tensor):
        mshape = [x.shape[0]] + [1] * (x.dim() - 1)
        mshape[time_axis % x.dim()] = mask.shape[1]
        keep = keep * mask.to(x.device, x.dtype).view(mshape)
    present = batch.get(target.present_key)
    if isinstance(present, Tensor):
        keep = keep * present.to(x.device, x.dtype).view(shape)
    return keep


def audio_snr_db(level: float) -> float:
    """The SNR (dB) of ``audio`` ``noise`` at ``level`` > 0: linear from AUDIO_SNR_DB[0] to AUDIO_SNR_DB[1]."""
    hi, lo = AUDIO_SNR_DB
    return hi + (lo - hi) * _check_level(level)


def audio_noise(batch: dict[str, Any], level: float, generator: torch.Generator, target: Target) -> dict[str, Any]:
    """Additive noise on a natural-log mel power ``[B, n_mels, frames]``: ``log(exp(mel) + N)``.

    ``N`` is one flat noise power per clip, ``mean(exp(mel)) / 10 ** (snr / 10)`` over the clip's real
    frames. The approximation: noise added to the waveform adds its power to each mel band *in
    expectation* (the cross term signal x noise averages out over a band's bins and a frame), so the
    corrupted mel power is the sum of the two; we take the noise spectrum flat in mel power (white noise
    would be flat per Hz, so wide high bands would get more) and ignore the frame-to-frame variance of
    real noise. No random numbers are drawn; the result is deterministic.
    """
    level = _check_level(level)
    x = batch.get(target.key)
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"audio noise: batch['{target.key}'] must be a log-mel [B, n_mels, frames]")
    if level == 0:
        return batch
    keep = _real(batch, target, x, -1)
    power = x.float().exp() * keep
    mean_power = power.sum(dim=(1, 2)) / keep.sum(dim=(1, 2)).clamp(min=1)
    noise = mean_power / 10 ** (audio_snr_db(level) / 10)
    noisy = torch.log(x.float().exp() + noise[:, None, None]).to(x.dtype)
    return batch | {target.key: torch.where(keep > 0, noisy, x)}


def feature_noise(batch: dict[str, Any], level: float, generator: torch.Generator, target: Target) -> dict[str, Any]:
    """Gaussian noise of ``level`` times each feature dimension's standard deviation (over the batch's
    real frames) on ``<m>_features`` ``[B, T, F]``; padding and absent rows stay as they are."""
    level = _check_level(level)
    x = batch.get(target.key)
    if not isinstance(x, Tensor) or x.dim() != 3:
        raise ValueError(f"feature noise: batch['{target.key}'] must be [B, T, F]")
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    if level == 0:
        return batch
    keep = _real(batch, target, x, 1)
    n = keep.sum(dim=(0, 1)).clamp(min=2)
    mean = (x * keep).sum(dim=(0, 1)) / n
    std = (((x - mean) ** 2 * keep).sum(dim=(0, 1)) / (n - 1)).sqrt()
    return batch | {target.key: x + level * std * noise * keep}


# ------------------------------------------------------------------------------------------ drop


def _present(batch: Mapping[str, Any], target: Target, rows: int) -> Tensor:
    present = batch.get(target.present_key)
    return present.clone().bool().cpu() if isinstance(present, Tensor) else torch.ones(rows, dtype=torch.bool)


def drop(batch: dict[str, Any], level: float, generator: torch.Generator, target: Target) -> dict[str, Any]:
    """Each sample loses the modality with probability ``level``: zeroed input, ``<modality>_present`` False."""
    level = _check_level(level)
    if target.input == "text":
        return text_drop(batch, level, generator, target)
    x = batch.get(target.key)
    if not isinstance(x, Tensor):
        raise TypeError(f"drop: the batch has no '{target.key}' tensor")
    dropped = torch.rand(x.shape[0], generator=generator) < level
    if level == 0 or not bool(dropped.any()):
        return batch
    rows = dropped.to(x.device).view([-1] + [1] * (x.dim() - 1))
    out = batch | {target.key: torch.where(rows, torch.zeros_like(x), x)}
    out[target.present_key] = _present(batch, target, x.shape[0]) & ~dropped
    mask = batch.get(target.mask_key)
    if isinstance(mask, Tensor):  # an absent row is one zero step that counts as real (see data.media.pad_stack)
        first = torch.zeros_like(mask)
        first[:, 0] = True
        out[target.mask_key] = torch.where(dropped.to(mask.device)[:, None], first, mask)
    return out


# ------------------------------------------------------------------------------------------ registry

CORRUPTIONS: dict[tuple[str, str], Corruption] = {
    ("image", "noise"): image_noise,
    ("image", "blur"): image_blur,
    ("image", "occlusion"): image_occlusion,
    ("image", "drop"): drop,
    ("video", "noise"): image_noise,
    ("video", "blur"): image_blur,
    ("video", "occlusion"): image_occlusion,
    ("video", "drop"): drop,
    ("text", "word_dropout"): text_word_dropout,
    ("text", "typos"): text_typos,
    ("text", "drop"): text_drop,
    ("audio", "noise"): audio_noise,
    ("audio", "drop"): drop,
    ("features", "noise"): feature_noise,
    ("features", "drop"): drop,
}
KINDS: tuple[str, ...] = tuple(dict.fromkeys(kind for _, kind in CORRUPTIONS))


def kinds_for(input_type: str) -> list[str]:
    return [k for (i, k) in CORRUPTIONS if i == input_type]


def parse_levels(text: str | Sequence[float] | None) -> tuple[float, ...]:
    """``"0,0.25,0.5,1"`` -> sorted unique levels, 0 included (the clean point every curve starts from)."""
    if text is None:
        return DEFAULT_LEVELS
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        levels = [float(v) for v in items if str(v).strip()]
    except ValueError:
        raise ConfigError(f"--robustness-levels: expected numbers in [0, 1] separated by commas, got {text!r}") from None
    bad = [v for v in levels if not 0.0 <= v <= 1.0]
    if not levels or bad:
        raise ConfigError(f"--robustness-levels: every level must be in [0, 1], got {text!r}")
    return tuple(sorted(set(levels) | {0.0}))


def headline_metric(task_name: str, metrics: Mapping[str, float]) -> str:
    """The metric a task's curves plot (:data:`HEADLINE_METRICS`), else the first metric there is."""
    for name in HEADLINE_METRICS.get(task_name, ()):
        if name in metrics:
            return name
    if not metrics:
        raise ValueError(f"robustness: the {task_name} evaluation returned no metrics")
    return next(iter(metrics))


# ------------------------------------------------------------------------------------------ what the model reads


def _encoder_input(name: str, encoder: nn.Module) -> tuple[str, str] | None:
    """(batch key, input type) of a classifier's modality encoder."""
    key, _ = encoder.batch_keys(name)  # type: ignore[operator]
    if key == "text_ids":
        return key, "text"
    if key.endswith("_features"):
        return key, "features"
    enc_name = getattr(encoder, "name", "")
    if enc_name == "audio" or key == "audio":
        return key, "audio"
    if enc_name == "video" or key == "video":
        return key, "video"
    return key, "image"


def applicable_targets(task: Any, model: nn.Module) -> tuple[list[Target], dict[str, str]]:
    """The inputs of ``model`` that a corruption can reach in ``task``'s evaluation, and the ones skipped (why).

    A classifier reads one input per encoder (a text-only ablation has no image to corrupt); the other
    models read the image (or a clip) and, except the captioner, text. Retrieval encodes its captions
    outside the loader; :func:`robustness_curves` routes them through the corruption too.
    """
    name = getattr(task, "name", "")
    skipped: dict[str, str] = {}
    if name in ("classification", "regression"):
        encoders = getattr(model, "encoders", None)
        if not isinstance(encoders, Mapping) and not isinstance(encoders, nn.ModuleDict):
            raise ConfigError(f"robustness: a {name} model needs per-modality encoders (model.encoders)")
        targets = []
        for m, enc in encoders.items():
            found = _encoder_input(m, enc)
            if found is not None:
                targets.append(Target(m, found[0], found[1]))
        return targets, skipped
    tower = image_tower_of(model)
    visual = getattr(tower, "modality", "image") if tower is not None else "image"  # a video or audio tower in the image's place
    visual = visual if visual in ("video", "audio") else "image"
    targets = [Target(visual, "image", visual)]
    if name == "captioning":
        skipped["text"] = "the captioner generates from the image alone: text is not an input at evaluation"
    else:
        targets.append(Target("text", "text_ids", "text"))
    if name == "multitask":
        skipped["text (captioning part)"] = "multitask captioning generates from the image alone; text corruptions reach its retrieval, VQA and classification parts"
    return targets, skipped


# ------------------------------------------------------------------------------------------ curves


def _seed(*parts: Any) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _CorruptingTokenizer:
    """Stands in for a task's tokenizer where it encodes texts outside the loader (retrieval captions)."""

    def __init__(self, tokenizer: Any, kind: str, level: float, seed: int) -> None:
        self._tokenizer, self._kind, self._level, self._seed, self._calls = tokenizer, kind, level, seed, 0

    def encode(self, texts: Sequence[str], max_length: int) -> Any:
        rng = random.Random(_seed(self._seed, "text-outside-loader", self._calls))
        self._calls += 1
        return self._tokenizer.encode(corrupt_texts(texts, self._kind, self._level, rng), max_length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _tokenizer_holders(task: Any) -> list[Any]:
    """Task objects that tokenise texts outside the loader (explicit, per task type)."""
    name = getattr(task, "name", "")
    if name == "retrieval":
        return [task]
    if name == "multitask" and hasattr(task, "retrieval"):
        return [task.retrieval]
    return []


def _run(task: Any, model: nn.Module, samples: Sequence[Any], make_loader: Any, device: torch.device,
         target: Target | None, kind: str, level: float, seed: int) -> dict[str, float]:
    corruption = CORRUPTIONS[(target.input, kind)] if target is not None else None

    def loader(items: Sequence[Any], with_images: bool = True) -> Iterable[dict[str, Any]]:
        def batches() -> Iterator[dict[str, Any]]:
            for i, batch in enumerate(make_loader(items, with_images)):
                if corruption is None or target is None or target.key not in batch and target.input != "text":
                    yield batch
                    continue
                generator = torch.Generator().manual_seed(_seed(seed, target.modality, kind, i))
                yield corruption(batch, level, generator, target)

        return batches()

    holders = _tokenizer_holders(task) if target is not None and target.input == "text" else []
    saved = [h.tokenizer for h in holders]
    try:
        for h in holders:
            h.tokenizer = _CorruptingTokenizer(h.tokenizer, kind, level, _seed(seed, target.modality if target else "", kind))
        with torch.no_grad():
            result = task.evaluate(model, samples, loader, device)
    finally:
        for h, tok in zip(holders, saved):
            h.tokenizer = tok
    return {k: float(v) for k, v in result.metrics.items()}


def robustness_curves(
    task: Any,
    model: nn.Module,
    samples: Sequence[Any],
    make_loader: Any,
    device: torch.device,
    modalities: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seed: int = 0,
    *,
    tokenizer: Any = None,
    max_length: int = 32,
    image_mean: Sequence[float] = CLIP_MEAN,
    image_std: Sequence[float] = CLIP_STD,
    progress: bool = False,
) -> dict[str, Any]:
    """Re-run ``task.evaluate`` with every applicable corruption at every level; the headline metric per point.

    ``modalities`` / ``kinds`` restrict the curves (None: every input the model reads, every kind that
    applies to it); ``tokenizer`` / ``max_length`` re-tokenise corrupted text, ``image_mean`` /
    ``image_std`` are the image normalisation (noise is a fraction of the pixel range). The clean
    evaluation runs once and is the level-0 point of every curve (level 0 is the identity).

    Returns ``{"task", "headline", "levels", "seed", "clean": metrics, "curves": {modality: {kind:
    {"levels", "headline": [value per level], "metrics": [all metrics per level]}}}, "inputs": {modality:
    input type}, "skipped": {what: why}}``.
    """
    levels = parse_levels(list(levels))
    targets, skipped = applicable_targets(task, model)
    targets = [replace(t, tokenizer=tokenizer, max_length=max_length, mean=tuple(image_mean), std=tuple(image_std)) for t in targets]
    names = [t.modality for t in targets]
    if modalities:
        unknown = [m for m in modalities if m not in names]
        if unknown:
            raise ConfigError(f"robustness: the {task.name} model has no modality {', '.join(map(repr, unknown))}; it reads {', '.join(names)}")
        targets = [t for t in targets if t.modality in modalities]
    if kinds:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ConfigError(f"robustness: unknown corruption kind {', '.join(map(repr, unknown))}; valid: {', '.join(KINDS)}")
    if tokenizer is None:
        for t in [t for t in targets if t.input == "text"]:
            skipped[t.modality] = "no tokenizer to re-tokenise corrupted text"
        targets = [t for t in targets if t.input != "text"]
    plan = [(t, k) for t in targets for k in kinds_for(t.input) if not kinds or k in kinds]
    points = 1 + len(plan) * sum(1 for v in levels if v > 0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=points, desc="robustness", unit="point", dynamic_ncols=True, leave=False)
    clean = _run(task, model, samples, make_loader, device, None, "clean", 0.0, seed)
    if bar is not None:
        bar.update()
    headline = headline_metric(task.name, clean)
    curves: dict[str, dict[str, Any]] = {}
    try:
        for target, kind in plan:
            per_level = []
            for level in levels:
                if level == 0:
                    per_level.append(clean)
                    continue
                per_level.append(_run(task, model, samples, make_loader, device, target, kind, level, seed))
                if bar is not None:
                    bar.set_postfix_str(f"{target.modality} {kind} {level:g}")
                    bar.update()
            curves.setdefault(target.modality, {})[kind] = {
                "levels": list(levels),
                "headline": [m.get(headline, math.nan) for m in per_level],
                "metrics": per_level,
            }
    finally:
        if bar is not None:
            bar.close()
    return {
        "task": task.name,
        "headline": headline,
        "levels": list(levels),
        "seed": seed,
        "clean": clean,
        "curves": curves,
        "inputs": {t.modality: t.input for t in targets},
        "skipped": skipped,
    }
