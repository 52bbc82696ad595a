"""Text transformer: a CLIP-style causal or BERT-style bidirectional encoder, and a decoder.

With ``cross_attention=True`` its blocks also attend to another encoder's tokens, which makes the same
class a captioning decoder (``causal=True``) or an image-grounded fusion encoder (``causal=False``).
For generation it takes a :class:`~polymodal.modules.transformer.KVCache` so each new token costs
one position of compute, not the whole prefix.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.modules.attention import rows_at
from polymodal.modules.encoders.base import (
    EncoderOutput,
    ShapeError,
    TransformerEncoder,
    format_shape,
    masked_mean,
    shape_error,
)
from polymodal.modules.transformer import KVCache, Transformer

__all__ = ["TextTransformer"]

Pool = Literal["cls", "eos", "mean"]


class TextTransformer(TransformerEncoder):
    """Token + learned position embeddings, pre-LN blocks, final LayerNorm.

    ``pool`` picks ``pooled``: ``'cls'`` the first token, ``'eos'`` the last real token (CLIP; the
    only token of a causal model that has seen the whole text), ``'mean'`` the mean of real tokens.
    Default: ``'eos'`` if causal else ``'cls'``. ``pooled`` is projected to ``output_dim`` if given.
    Padding: ``attention_mask`` (True / 1 = real token); when omitted and ``pad_id`` is not None the
    mask is ``input_ids != pad_id``.
    """

    modality = "text"
    name = "text_transformer"

    def batch_keys(self, modality: str) -> tuple[str, str]:
        return "text_ids", "text_mask"

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        width: int,
        depth: int,
        heads: int,
        causal: bool,
        pad_id: int | None = 0,
        pool: Pool | None = None,
        output_dim: int | None = None,
        cross_attention: bool = False,
        *,
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        norm_eps: float = 1e-5,
        activation: str = "gelu",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        pool = pool or ("eos" if causal else "cls")
        if pool not in ("cls", "eos", "mean"):
            raise ConfigError(f"text_transformer: pool must be 'cls', 'eos' or 'mean', got {pool!r}")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.causal = causal
        self.pad_id = pad_id
        self.pool = pool
        self.width = width
        self.output_dim = output_dim or width
        self.context_dim = (context_dim or width) if cross_attention else None

        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.empty(max_length, width))
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.transformer = Transformer(
            width,
            depth,
            heads,
            mlp_ratio,
            causal=causal,
            cross_attention=cross_attention,
            context_dim=self.context_dim,
            dropout=dropout,
            norm_eps=norm_eps,
            activation=activation,
            grad_checkpointing=grad_checkpointing,
        )
        self.ln_final = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Linear(width, output_dim, bias=False) if output_dim else None
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=width**-0.5)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        encoder_tokens: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> EncoderOutput:
        """``input_ids`` ``[B, T]`` (+ optional ``attention_mask`` ``[B, T]``) -> :class:`EncoderOutput`.

        ``encoder_tokens`` ``[B, S, context_dim]`` / ``encoder_mask`` ``[B, S]`` feed cross-attention
        (needs ``cross_attention=True``; without them the cross-attention sub-layers are skipped).
        With ``cache`` the ids continue the cached sequence and the cache is updated in place; the
        output then covers the new tokens only. Encoder tokens need only be given on the first call.
        """
        past = cache.length if cache is not None else 0
        mask = self._check_inputs(input_ids, attention_mask, encoder_tokens, encoder_mask, past)
        x = self.transformer(
            self._embed(input_ids, past), mask=mask, context=encoder_tokens, context_mask=encoder_mask, cache=cache
        )
        tokens = self.ln_final(x)
        if self.pool == "mean":
            pooled = masked_mean(tokens, mask)
        else:
            pooled = rows_at(tokens, self._pooled_positions(input_ids, mask))
        return EncoderOutput(tokens=tokens, pooled=self._project(pooled), mask=mask)

    def forward_pooled(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        encoder_tokens: Tensor | None = None,
        encoder_mask: Tensor | None = None,
    ) -> Tensor:
        """``forward(...).pooled``; pooling one token (``'cls'``, ``'eos'``), the last block runs for it alone."""
        if self.pool == "mean" or type(self).forward is not TextTransformer.forward:  # a subclass's forward rules
            return super().forward_pooled(input_ids, attention_mask, encoder_tokens, encoder_mask)
        mask = self._check_inputs(input_ids, attention_mask, encoder_tokens, encoder_mask, 0)
        pooled = self.transformer(
            self._embed(input_ids, 0), mask=mask, context=encoder_tokens, context_mask=encoder_mask,
            positions=self._pooled_positions(input_ids, mask),
        )
        return self._project(self.ln_final(pooled[:, 0]))

    def _embed(self, input_ids: Tensor, past: int) -> Tensor:
        """Token embeddings plus the positions ``past ..`` (after cached tokens), with embedding dropout."""
        return self.drop(self.token_embed(input_ids) + self.pos_embed[past : past + input_ids.shape[1]])

    def _pooled_positions(self, input_ids: Tensor, mask: Tensor | None) -> Tensor:
        """Per row, the token ``'cls'`` / ``'eos'`` pooling reads: the first, or the last real one
        (wherever the padding is: argmax picks the largest real index)."""
        b, t = input_ids.shape
        if self.pool == "cls":
            return torch.zeros(b, dtype=torch.long, device=input_ids.device)
        if mask is None:
            return torch.full((b,), t - 1, dtype=torch.long, device=input_ids.device)
        return (mask.long() * torch.arange(t, device=input_ids.device)).argmax(dim=1)

    def _check_inputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        encoder_tokens: Tensor | None,
        encoder_mask: Tensor | None,
        past: int,
    ) -> Tensor | None:
        """Validate shapes against the config and return the bool padding mask (or None)."""
        where = self.where
        if not isinstance(input_ids, Tensor):
            hint = " (strings are tokenised by processors.texts(...) or the run's tokenizer)" if isinstance(input_ids, (str, list, tuple)) else ""
            raise ShapeError(f"{where}: expected input_ids as a torch.Tensor [batch, tokens] of token ids, got {type(input_ids).__name__}{hint}")
        if input_ids.dim() != 2:
            raise shape_error(where, "input_ids", ("batch", "tokens"), input_ids)
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ShapeError(f"{where}: expected integer input_ids, got {input_ids.dtype}")
        b, t = input_ids.shape
        if t == 0 and not past:
            raise ShapeError(f"{where}: expected at least one token per row, got input_ids {format_shape(input_ids)}")
        # ids from another tokenizer: an IndexError deep in the embedding on a CPU, a device-side assert on a
        # GPU. Checked on a fresh input outside training and compilation only: it reads the device back, training
        # ids come from the run's tokenizer, and generated ones (past > 0) from the model's own vocabulary
        if not self.training and not past and not torch.compiler.is_compiling():
            outside = (input_ids < 0) | (input_ids >= self.vocab_size)
            if bool(outside.any()):
                raise ShapeError(
                    f"{where}: token id {int(input_ids[outside][0])} is outside the vocabulary (ids 0..{self.vocab_size - 1}); "
                    "were these ids made by another tokenizer?"
                )
        if past + t > self.max_length:
            cached = f" after {past} cached tokens" if past else ""
            raise ShapeError(
                f"{where}: expected input_ids [batch, tokens <= max_length={self.max_length}], "
                f"got {format_shape(input_ids)}{cached}"
            )
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise shape_error(where, "attention_mask (same shape as input_ids)", (b, t), attention_mask)
            mask: Tensor | None = (
                attention_mask if attention_mask.dtype == torch.bool else attention_mask != 0
            )
        elif self.pad_id is not None:
            mask = input_ids != self.pad_id
        else:
            mask = None
        if encoder_tokens is not None:
            if self.context_dim is None:
                raise ConfigError(
                    f"{where}: got encoder_tokens but was built with cross_attention=False; "
                    "build it with cross_attention=True to attend to another modality"
                )
            if (
                encoder_tokens.dim() != 3
                or encoder_tokens.shape[0] != b
                or encoder_tokens.shape[2] != self.context_dim
            ):
                raise shape_error(where, "encoder_tokens", (b, "tokens", self.context_dim), encoder_tokens)
            if encoder_mask is not None and encoder_mask.shape != encoder_tokens.shape[:2]:
                raise shape_error(where, "encoder_mask", tuple(encoder_tokens.shape[:2]), encoder_mask)
        elif encoder_mask is not None and past == 0:
            raise ShapeError(f"{where}: got encoder_mask without encoder_tokens")
        return mask
