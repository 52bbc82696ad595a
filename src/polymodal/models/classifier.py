"""Multimodal classifier: any set of modality encoders, any fusion op, one head.

Early, late and hybrid fusion are *configurations* of this one class:

- ``late``: each encoder's pooled vector goes into a vector fusion op (concat, gated, TFN, LMF ...);
- ``early``: the encoders' token sequences meet in cross-attention before any pooling;
- ``hybrid``: both, their results concatenated before the head.

A text-only or image-only ablation is the same class with one encoder, which is how the world's
statement-verification task shows that single modalities stay at chance.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.models.outputs import ClassifierOutput
from polymodal.modules.encoders.base import Encoder, EncoderOutput
from polymodal.modules.fusion import build_fusion

STAGES = ("late", "early", "hybrid")
TASKS = ("classification", "regression")


class ModalityInputError(ValueError):
    pass


def encode_modality(name: str, encoder: Encoder, batch: Mapping[str, Any]) -> EncoderOutput:
    """Call an encoder with its inputs from a batch dict (``text`` reads ``text_ids``/``text_mask``)."""
    key = "text_ids" if name == "text" else name
    if key not in batch:
        present = sorted(k for k, v in batch.items() if isinstance(v, Tensor))
        raise ModalityInputError(f"classifier: modality '{name}' needs batch['{key}'], which is missing (batch has {present})")
    if name == "text":
        return encoder(batch["text_ids"], batch.get("text_mask"))
    return encoder(batch[key])


class MultimodalClassifier(nn.Module):
    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        num_outputs: int,
        task: str = "classification",
        stage: str = "late",
        fusion: str = "concat",
        fusion_dim: int = 256,
        fusion_options: Mapping[str, Any] | None = None,
        early_options: Mapping[str, Any] | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not encoders:
            raise ConfigError("classifier: give at least one modality encoder")
        if stage not in STAGES:
            raise ConfigError(f"classifier: stage must be one of {STAGES}, got {stage!r}")
        if task not in TASKS:
            raise ConfigError(f"classifier: task must be one of {TASKS}, got {task!r}")
        self.encoders = nn.ModuleDict(dict(sorted(encoders.items())))
        self.task, self.stage = task, stage
        head_in = 0
        self.late = self.early = None
        if stage in ("late", "hybrid"):
            dims = {m: e.output_dim for m, e in self.encoders.items()}
            self.late = build_fusion(fusion, dims, fusion_dim, **dict(fusion_options or {}))
            head_in += self.late.out_dim
        if stage in ("early", "hybrid"):
            opts = {"query": next(iter(self.encoders))} | dict(early_options or {})
            dims = {m: e.width for m, e in self.encoders.items()}
            self.early = build_fusion("cross_attention", dims, fusion_dim, **opts)
            head_in += self.early.out_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_in, fusion_dim), nn.GELU(), nn.Linear(fusion_dim, num_outputs))

    def forward(self, batch: Mapping[str, Any], labels: Tensor | None = None) -> ClassifierOutput:
        outs = {m: encode_modality(m, enc, batch) for m, enc in self.encoders.items()}
        parts = []
        if self.late is not None:
            parts.append(self.late({m: o.pooled for m, o in outs.items()}))
        if self.early is not None:
            masks = {m: o.mask for m, o in outs.items() if o.mask is not None}
            parts.append(self.early({m: o.tokens for m, o in outs.items()}, masks or None))
        logits = self.head(torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
        loss = None
        if labels is not None:
            if self.task == "classification":
                loss = F.cross_entropy(logits, labels.long())
            else:
                loss = F.mse_loss(logits.squeeze(-1) if logits.shape[-1] == 1 else logits, labels.to(logits.dtype))
        return ClassifierOutput(logits=logits, loss=loss)
