"""Encoders: one modality in, :class:`EncoderOutput` (tokens, pooled, mask) out.

Registration is explicit: :data:`ENCODERS` maps the names used in configs to constructors, and
:func:`build_encoder` builds one by name. Hugging Face towers are registered by their loaders
(``hf_vision`` / ``hf_text`` take ``path=...``); ``transformers`` is only imported when one is built.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from polymodal.errors import ConfigError
from polymodal.modules.encoders.audio import AudioEncoder
from polymodal.modules.encoders.base import Encoder, EncoderOutput, ShapeError, format_shape
from polymodal.modules.encoders.hf import HFLoadError, HFTextTower, HFVisionTower, MissingDependencyError
from polymodal.modules.encoders.options import checked_options
from polymodal.modules.encoders.run_tower import run_vision_tower
from polymodal.modules.encoders.sequence import FeatureSequenceEncoder
from polymodal.modules.encoders.text import TextTransformer
from polymodal.modules.encoders.video import VideoEncoder
from polymodal.modules.encoders.vision import SmallCNN, VisionTransformer

__all__ = [
    "ENCODERS",
    "AudioEncoder",
    "Encoder",
    "EncoderOutput",
    "FeatureSequenceEncoder",
    "HFLoadError",
    "HFTextTower",
    "HFVisionTower",
    "MissingDependencyError",
    "ShapeError",
    "SmallCNN",
    "TextTransformer",
    "VideoEncoder",
    "VisionTransformer",
    "build_encoder",
    "format_shape",
]

ENCODERS: dict[str, Callable[..., Encoder]] = {
    "vit": VisionTransformer,
    "cnn": SmallCNN,
    "text_transformer": TextTransformer,
    "hf_vision": HFVisionTower.from_pretrained,
    "hf_text": HFTextTower.from_pretrained,
    "features": FeatureSequenceEncoder,
    "audio": AudioEncoder,
    "video": VideoEncoder,
    "run_vision": run_vision_tower,
}


def build_encoder(name: str, **kwargs: Any) -> Encoder:
    """Build the encoder registered as ``name`` with ``kwargs`` (e.g. straight from a YAML config)."""
    try:
        factory = ENCODERS[name]
    except KeyError:
        valid = ", ".join(sorted(ENCODERS))
        raise ConfigError(f"unknown encoder {name!r}; valid encoders: {valid}") from None
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: invalid options {sorted(kwargs)}: {exc}") from None
    return factory(**checked_options(name, factory, kwargs))
