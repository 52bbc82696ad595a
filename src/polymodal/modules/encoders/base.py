"""What every encoder returns and promises, so models can swap a ViT for a CNN or a Hugging Face tower.

An encoder turns one modality into a sequence of token features plus one pooled vector:

* ``tokens``  ``[batch, tokens, width]``  what fusion / cross-attention / captioning decoders consume;
* ``pooled``  ``[batch, output_dim]``     what contrastive heads and classifiers consume;
* ``mask``    ``[batch, tokens]`` bool, True = a real token (None when every token is real).

Wrong input shapes raise :class:`ShapeError` with a message that names the encoder, the input and the
shape it expected, because "mat1 and mat2 shapes cannot be multiplied" three modules deep tells a
user nothing about which of their images was the wrong size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from polymodal.errors import PolymodalError
from polymodal.modules.hooks import has_forward_hooks

__all__ = ["Encoder", "EncoderOutput", "ShapeError", "TransformerEncoder", "format_shape", "masked_mean", "shape_error"]


class ShapeError(PolymodalError, ValueError):
    """An encoder received an input of the wrong rank, size, channel count or dtype."""


@dataclass
class EncoderOutput:
    """The typed result of every encoder (never a tuple, so fields can't be swapped silently)."""

    tokens: Tensor  # [B, T, D] with D = encoder.width
    pooled: Tensor  # [B, output_dim]
    mask: Tensor | None = None  # [B, T] bool, True = real token; None = all real

    def take(self, index: Tensor) -> "EncoderOutput":
        """The outputs of rows ``index`` (repeats allowed), e.g. one image's encoding for each text about it."""
        return EncoderOutput(self.tokens[index], self.pooled[index], None if self.mask is None else self.mask[index])


def pooled_output(encoder: nn.Module, *inputs: Tensor | None) -> Tensor:
    """``encoder(*inputs).pooled``, through the encoder's ``forward_pooled`` (which may skip work) when
    that is safe: not for a module without one, one with forward hooks, or a ``torch.compile`` wrapper
    (whose attribute lookup would hand back the uncompiled method)."""
    forward_pooled = getattr(encoder, "forward_pooled", None)
    if forward_pooled is None or has_forward_hooks(encoder) or hasattr(encoder, "_orig_mod"):
        return encoder(*inputs).pooled
    return forward_pooled(*inputs)


def format_shape(shape: Tensor | Sequence[int | str] | torch.Size) -> str:
    """``[8, 3, 64, 64]`` for a tensor or a sequence of sizes / symbolic names like ``"batch"``."""
    dims = tuple(shape.shape) if isinstance(shape, Tensor) else tuple(shape)
    return "[" + ", ".join(str(d) for d in dims) + "]"


def masked_mean(tokens: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over the token axis of ``[B, T, D]`` counting only real tokens (``mask`` ``[B, T]`` True),
    so padding never changes a pooled vector; a row with no real token pools to zeros, not NaN."""
    if mask is None:
        return tokens.mean(dim=1)
    weights = mask.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def shape_error(where: str, what: str, expected: Sequence[int | str], got: Tensor) -> ShapeError:
    """Build the one message format every encoder uses: ``<where>: expected <what> [..], got [..]``."""
    return ShapeError(f"{where}: expected {what} {format_shape(expected)}, got {format_shape(got)}")


class Encoder(nn.Module):
    """Base class of every encoder: the sizes a model needs to wire heads, plus locked-tower tuning.

    Subclasses set ``width`` (feature size of ``tokens``) and ``output_dim`` (size of ``pooled``) in
    ``__init__`` and return :class:`EncoderOutput` from ``forward``.
    """

    modality: ClassVar[str] = "input"
    name: ClassVar[str] = "encoder"

    width: int
    output_dim: int

    def __init__(self) -> None:
        super().__init__()
        self._frozen = False

    def batch_keys(self, modality: str) -> tuple[str, str]:
        """Where this encoder's input and its mask live in a batch dict: ``(batch[modality],
        batch[modality + "_mask"])`` by default; token encoders read ``text_ids``, feature-sequence
        encoders read ``<modality>_features``, so raw and pre-extracted inputs never share a key."""
        return modality, f"{modality}_mask"

    @property
    def where(self) -> str:
        """Prefix for error messages, e.g. ``image encoder 'vit'``."""
        return f"{self.modality} encoder '{self.name}'"

    @property
    def frozen(self) -> bool:
        return getattr(self, "_frozen", False)

    def freeze(self) -> Encoder:
        """Lock the encoder (LiT-style locked-tower tuning): no gradients and eval mode for good.

        Eval mode is kept even when the parent model calls ``.train()``, so dropout / batch-norm
        statistics of a frozen tower never change. With no parameter requiring grad and inputs that
        don't either, autograd records nothing here, so no activations are kept for backward.
        """
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        super().train(False)
        return self

    def unfreeze(self) -> Encoder:
        """Undo :meth:`freeze` (the caller picks train/eval mode afterwards)."""
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen = False
        return self

    def train(self, mode: bool = True) -> Encoder:
        return super().train(False if self.frozen else mode)

    def forward_pooled(self, *args: Any, **kwargs: Any) -> Tensor:
        """``forward(...).pooled``, for callers that read nothing else (a dual encoder's embeddings).

        Encoders that can skip work nobody reads override it: a transformer pooling one token runs its
        last block for that token alone (:meth:`polymodal.modules.transformer.Transformer.forward`).
        Call it through :func:`pooled_output`, which keeps the plain ``__call__`` where forward hooks
        or a compiled wrapper expect it.
        """
        return self(*args, **kwargs).pooled

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks in backward to save memory (no-op for encoders without any)."""
        for m in self.modules():
            if m is not self and hasattr(m, "grad_checkpointing"):
                m.grad_checkpointing = enable


class TransformerEncoder(Encoder):
    """An encoder whose body is one :class:`~polymodal.modules.transformer.Transformer` stack in
    ``self.transformer``: its gradient checkpointing is that stack's (ViT, text, audio)."""

    transformer: nn.Module
    proj: nn.Module | None

    def _project(self, pooled: Tensor) -> Tensor:
        """The pooled vector in ``output_dim`` (the bias-free ``proj``), or as it is without one."""
        return pooled if self.proj is None else self.proj(pooled)

    def _build_body(
        self, width: int, depth: int, heads: int, mlp_ratio: float, dropout: float, norm_eps: float,
        activation: str, grad_checkpointing: bool, output_dim: int | None,
    ) -> None:
        """The shared tail of a token encoder: the transformer stack, a final LayerNorm (``ln_post``) and
        an optional bias-free projection of the pooled vector (``proj``, initialised at width**-0.5)."""
        from polymodal.modules.transformer import Transformer  # the stack imports encoders' neighbours

        self.transformer = Transformer(
            width, depth, heads, mlp_ratio, dropout=dropout, norm_eps=norm_eps, activation=activation,
            grad_checkpointing=grad_checkpointing,
        )
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim else None
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=width**-0.5)

    @property
    def grad_checkpointing(self) -> bool:
        return self.transformer.grad_checkpointing

    @grad_checkpointing.setter
    def grad_checkpointing(self, enable: bool) -> None:
        self.transformer.grad_checkpointing = enable
