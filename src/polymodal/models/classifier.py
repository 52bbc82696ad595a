"""Multimodal classifier: any set of modality encoders, any fusion op, one head.

Early, late and hybrid fusion are *configurations* of this one class:

- ``late``: each encoder's pooled vector goes into a vector fusion op (concat, gated, TFN, LMF ...);
- ``early``: the encoders' token sequences meet in cross-attention before any pooling;
- ``hybrid``: both, their results concatenated before the head.

A text-only or image-only ablation is the same class with one encoder, which is how the world's
statement-verification task shows that single modalities stay at chance.

Samples that lack a modality (a clip without sound, an utterance whose video failed to decode) arrive
zero-filled with ``batch["<modality>_present"]`` False. ``missing="zero"`` encodes the zeros as they
are; ``missing="learned"`` swaps that modality's encoder output for a learned "absent" embedding, so
the model can tell silence from a missing microphone.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.models.outputs import ClassifierOutput
from polymodal.modules.encoders.base import Encoder, EncoderOutput, pooled_output
from polymodal.modules.fusion import build_fusion

STAGES = ("late", "early", "hybrid")
TASKS = ("classification", "regression")
MISSING = ("zero", "learned")


class ModalityInputError(ValueError):
    pass


def encode_modality(name: str, encoder: Encoder, batch: Mapping[str, Any]) -> EncoderOutput:
    """Call an encoder with its input (and mask, when the batch has one) from a batch dict; the keys
    come from the encoder (``text_ids``/``text_mask`` for text, ``audio``/``audio_mask`` ...)."""
    return encoder(*modality_inputs(name, encoder, batch))


def modality_inputs(name: str, encoder: Encoder, batch: Mapping[str, Any]) -> tuple[Tensor, ...]:
    """An encoder's arguments from a batch dict: its input, and its mask when the batch has one."""
    key, mask_key = encoder.batch_keys(name)
    if key not in batch:
        present = sorted(k for k, v in batch.items() if isinstance(v, Tensor))
        raise ModalityInputError(f"classifier: modality '{name}' needs batch['{key}'], which is missing (batch has {present})")
    mask = batch.get(mask_key)
    return (batch[key],) if mask is None else (batch[key], mask)


class MissingModality(nn.Module):
    """A learned stand-in for the encoder output of samples that lack this modality."""

    def __init__(self, width: int, output_dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(width))
        self.pooled = nn.Parameter(torch.zeros(output_dim))
        nn.init.normal_(self.token, std=0.02)
        nn.init.normal_(self.pooled, std=0.02)

    def forward(self, out: EncoderOutput, present: Tensor) -> EncoderOutput:
        """Rows where ``present`` is False get the learned token (once, the only real one) and pooled vector."""
        absent = ~present.to(torch.bool)
        if not bool(absent.any()):
            return out
        tokens = torch.where(absent[:, None, None], self.token.to(out.tokens.dtype), out.tokens)
        pooled = self._fill_pooled(out.pooled, absent)  # absent rows were checked above: no second device sync
        only_first = torch.zeros(out.tokens.shape[:2], dtype=torch.bool, device=out.tokens.device)
        only_first[:, 0] = True
        mask = out.mask if out.mask is not None else torch.ones_like(only_first)
        mask = torch.where(absent[:, None], only_first, mask)
        return EncoderOutput(tokens=tokens, pooled=pooled, mask=mask)

    def stand_in_pooled(self, pooled: Tensor, absent: Tensor) -> Tensor:
        """``pooled`` with the learned vector in the ``absent`` rows (all a late-fusion classifier reads).
        Untouched when no row is absent, so the learned vector gets no gradient, not a zero one (which
        AdamW's weight decay would act on)."""
        if not bool(absent.any()):
            return pooled
        return self._fill_pooled(pooled, absent)

    def _fill_pooled(self, pooled: Tensor, absent: Tensor) -> Tensor:
        return torch.where(absent[:, None], self.pooled.to(pooled.dtype), pooled)


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
        early_fusion: str = "cross_attention",
        missing: str = "zero",
    ) -> None:
        super().__init__()
        if not encoders:
            raise ConfigError("classifier: give at least one modality encoder")
        if stage not in STAGES:
            raise ConfigError(f"classifier: stage must be one of {STAGES}, got {stage!r}")
        if task not in TASKS:
            raise ConfigError(f"classifier: task must be one of {TASKS}, got {task!r}")
        if missing not in MISSING:
            raise ConfigError(f"classifier: missing must be one of {MISSING}, got {missing!r}")
        self.encoders = nn.ModuleDict(dict(sorted(encoders.items())))
        self.task, self.stage = task, stage
        head_in = 0
        self.late = self.early = None
        if stage in ("late", "hybrid"):
            dims = {m: e.output_dim for m, e in self.encoders.items()}
            self.late = build_fusion(fusion, dims, fusion_dim, **dict(fusion_options or {}))
            head_in += self.late.out_dim
        if stage in ("early", "hybrid"):
            opts = dict(early_options or {})
            if early_fusion == "cross_attention":
                opts = {"query": next(iter(self.encoders))} | opts
            dims = {m: e.width for m, e in self.encoders.items()}
            self.early = build_fusion(early_fusion, dims, fusion_dim, **opts)
            head_in += self.early.out_dim
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_in, fusion_dim), nn.GELU(), nn.Linear(fusion_dim, num_outputs))
        self.missing = nn.ModuleDict(
            {m: MissingModality(e.width, e.output_dim) for m, e in self.encoders.items()} if missing == "learned" else {}
        )

    def encode(self, batch: Mapping[str, Any]) -> dict[str, EncoderOutput]:
        """Every modality's encoder output, with learned stand-ins for absent samples when configured."""
        outs = {}
        for m, enc in self.encoders.items():
            out = encode_modality(m, enc, batch)
            present = batch.get(f"{m}_present")
            if m in self.missing and isinstance(present, Tensor):
                out = self.missing[m](out, present)
            outs[m] = out
        return outs

    def encode_pooled(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Every modality's pooled vector, all that late fusion reads: through each encoder's
        ``forward_pooled``, so a transformer pooling one token runs its last block for that token alone."""
        pooled = {}
        for m, enc in self.encoders.items():
            vector = pooled_output(enc, *modality_inputs(m, enc, batch))
            present = batch.get(f"{m}_present")
            if m in self.missing and isinstance(present, Tensor):
                vector = self.missing[m].stand_in_pooled(vector, ~present.to(torch.bool))
            pooled[m] = vector
        return pooled

    def forward(self, batch: Mapping[str, Any], labels: Tensor | None = None) -> ClassifierOutput:
        parts = []
        if self.early is None:  # late fusion alone: no encoder's tokens are read
            parts.append(self.late(self.encode_pooled(batch)))  # type: ignore[misc]
        else:
            outs = self.encode(batch)
            if self.late is not None:
                parts.append(self.late({m: o.pooled for m, o in outs.items()}))
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
