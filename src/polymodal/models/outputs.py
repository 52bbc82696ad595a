"""Typed outputs of the task models: named fields, never positional tuples."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from polymodal.losses import ITCOutput


@dataclass
class DualEncoderOutput:
    image_embeds: Tensor  # [B, E], L2-normalised
    text_embeds: Tensor  # [B, E], L2-normalised
    loss: Tensor
    itc: ITCOutput


@dataclass
class FusionEncoderOutput:
    loss: Tensor
    parts: dict[str, Tensor]  # unweighted, detached losses per objective (for logging)
    itm_accuracy: Tensor | None = None
    itc: ITCOutput | None = None
    # the part of ``loss`` that is a mean over every rank's tokens (the weighted MLM term); the rest are
    # means over this rank's pairs: the trainer weighs the two kinds apart (train/accumulation.py)
    loss_over_ranks: Tensor | None = None


@dataclass
class VQAOutput:
    logits: Tensor  # [B, num_answers]
    loss: Tensor | None = None


@dataclass
class ClassifierOutput:
    logits: Tensor  # [B, num_classes] or [B, num_outputs] for regression
    loss: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
