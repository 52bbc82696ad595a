"""Image captioner: an image encoder + a causal text decoder cross-attending to the image tokens.

Training is teacher forcing on tokenizer output (``[CLS] a red cube [SEP] [PAD] ...``): the decoder
reads ``ids[:, :-1]`` and is scored on ``ids[:, 1:]`` with pad positions ignored. The LM head is tied
to the decoder's token embedding (plus a free bias), so it adds only ``vocab`` parameters.

Generation (:meth:`Captioner.generate`) encodes the images once, runs the decoder on the whole
prompt in one call (which fills the KV cache, including the image keys / values of every cross-
attention layer), then feeds one token per step; the search itself lives in
:mod:`polymodal.models.generation`. A text prompt makes it a generative VQA model::

    batch = tokenizer.encode(["question: what color is the cube? answer:", ...], max_length=32)
    out = captioner.generate(images, prompt_ids=batch.input_ids, prompt_mask=batch.attention_mask)
    answers = [tokenizer.decode(seq) for seq in out.sequences]

The tokenizer's ``[CLS] ... [SEP]`` framing is fine: a trailing EOS is dropped from the prompt, and
right-padded prompts are re-aligned to the left so every row's next token comes at the same step.
Positions count real tokens only, so a padded prompt generates exactly what it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.losses._token_mean import scored_rows_cross_entropy
from polymodal.losses.captioning import lm_loss
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.models.generation import GenerationOutput, check_method
from polymodal.models.generation import generate as run_search
from polymodal.modules.encoders.base import Encoder, EncoderOutput, ShapeError, format_shape, shape_error
from polymodal.modules.encoders.text import TextTransformer
from polymodal.modules.transformer import KVCache, reorder_cache

__all__ = ["Captioner", "CaptionerOutput"]


@dataclass
class CaptionerOutput:
    """``loss``: scalar LM loss over the real target tokens; ``logits`` ``[B, T - 1, vocab]``
    (position ``t`` predicts ``text_ids[:, t + 1]``) when the forward was asked for them
    (``return_logits=True``), else None."""

    loss: Tensor
    logits: Tensor | None = None


@dataclass
class _CachedState:
    """Generation state with a KV cache: the cache and the position id of each row's next token."""

    cache: KVCache
    next_pos: Tensor  # [N] long


@dataclass
class _PrefixState:
    """Generation state without a cache: the whole prefix, recomputed at every step."""

    ids: Tensor  # [N, T]
    mask: Tensor | None  # [N, T] bool, None = all real
    positions: Tensor  # [N, T] long
    context: Tensor  # [N, S, D] image tokens
    context_mask: Tensor | None  # [N, S]


def _select(t: Tensor | None, index: Tensor) -> Tensor | None:
    return None if t is None else t.index_select(0, index.to(t.device))


class Captioner(nn.Module):
    """``image_encoder`` (any :class:`Encoder`) + ``decoder`` (causal :class:`TextTransformer` with
    ``cross_attention=True`` and ``context_dim == image_encoder.width``) + tied LM head.

    ``bos_id`` starts every caption (the tokenizer's ``[CLS]``), ``eos_id`` ends it (``[SEP]``),
    ``pad_id`` fills after it.
    """

    def __init__(
        self,
        image_encoder: Encoder,
        decoder: TextTransformer,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(decoder, TextTransformer):
            raise ConfigError(f"captioner: decoder must be a TextTransformer, got {type(decoder).__name__}")
        if not decoder.causal or decoder.context_dim is None:
            raise ConfigError(
                "captioner: the decoder must be built with causal=True and cross_attention=True, got "
                f"causal={decoder.causal}, cross_attention={decoder.context_dim is not None}"
            )
        if decoder.context_dim != image_encoder.width:
            raise ConfigError(
                f"captioner: decoder context_dim={decoder.context_dim} must equal the image encoder's "
                f"width={image_encoder.width} (the size of its tokens)"
            )
        for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
            if not 0 <= value < decoder.vocab_size:
                raise ConfigError(
                    f"captioner: {name}={value} is outside the vocabulary [0, {decoder.vocab_size})"
                )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"captioner: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.image_encoder = image_encoder
        self.decoder = decoder
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.label_smoothing = label_smoothing
        self.lm_bias = nn.Parameter(torch.zeros(decoder.vocab_size))

    # ---------------------------------------------------------------------------------------------
    # Building blocks
    # ---------------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.decoder.vocab_size

    @property
    def suppress_ids(self) -> tuple[int, ...]:
        """Ids never generated: pad and BOS are never training targets (unless one is the EOS id)."""
        return tuple(sorted({self.pad_id, self.bos_id} - {self.eos_id}))

    def lm_logits(self, hidden: Tensor) -> Tensor:
        """Decoder features ``[..., width]`` -> logits ``[..., vocab]`` (weights tied to the embedding)."""
        return F.linear(hidden, self.decoder.token_embed.weight, self.lm_bias)

    def encode_image(self, images: Tensor) -> EncoderOutput:
        """``images`` -> the image encoder's :class:`EncoderOutput` (its ``tokens`` feed the decoder)."""
        return self.image_encoder(images)

    def _image_features(self, images: Tensor | EncoderOutput) -> EncoderOutput:
        return images if isinstance(images, EncoderOutput) else self.encode_image(images)

    def _decode(
        self,
        ids: Tensor,
        mask: Tensor | None,
        positions: Tensor,
        context: Tensor | None,
        context_mask: Tensor | None,
        cache: KVCache | None,
    ) -> Tensor:
        """The decoder's forward with explicit per-row ``positions`` ``[N, T]`` -> logits ``[N, T, V]``.

        :meth:`TextTransformer.forward` numbers positions from ``cache.length`` for every row; a
        left-padded prompt needs them counted from its first real token instead.
        """
        dec = self.decoder
        if int(positions.max()) >= dec.max_length:
            raise ShapeError(
                f"{dec.where}: a prompt plus generated tokens may not exceed max_length={dec.max_length} "
                f"positions, got position {int(positions.max())} (prompt ids {format_shape(ids)})"
            )
        x = dec.token_embed(ids) + dec.pos_embed[positions]
        x = dec.transformer(dec.drop(x), mask=mask, context=context, context_mask=context_mask, cache=cache)
        return self.lm_logits(dec.ln_final(x))

    # ---------------------------------------------------------------------------------------------
    # Training
    # ---------------------------------------------------------------------------------------------

    def forward(
        self,
        images: Tensor | EncoderOutput,
        text_ids: Tensor,
        text_mask: Tensor | None = None,
        label_mask: Tensor | None = None,
        *,
        return_logits: bool = False,
    ) -> CaptionerOutput:
        """Teacher-forced LM loss. ``text_ids`` ``[B, T]`` start with BOS and end with EOS (then pad);
        ``text_mask`` ``[B, T]`` (1 = real token) defaults to ``text_ids != pad_id``.

        ``label_mask`` ``[B, T]`` (1 = scored) restricts the loss to some real tokens: for generative
        VQA on ``[CLS] question: ... answer: red [SEP]`` mark only ``red [SEP]`` so the model learns
        the answer, not the question (the question still conditions it). Default: every real token.

        Only the scored positions go through the vocabulary projection and the softmax unless
        ``return_logits`` asks for every position's logits: a batch padded to its longest caption is
        ~40% padding, and with a 30k-word vocabulary that projection is most of a small decoder's
        step. The loss is the same either way.
        """
        if text_ids.dim() != 2 or text_ids.shape[1] < 2:
            raise shape_error("captioner", "text_ids (BOS + at least one token)", ("batch", ">= 2"), text_ids)
        if text_mask is None:
            text_mask = text_ids != self.pad_id
        elif text_mask.shape != text_ids.shape:
            raise shape_error(
                "captioner", "text_mask (same shape as text_ids)", tuple(text_ids.shape), text_mask
            )
        text_mask = text_mask if text_mask.dtype == torch.bool else text_mask != 0
        image = self._image_features(images)
        out = self.decoder(
            text_ids[:, :-1],
            attention_mask=text_mask[:, :-1],
            encoder_tokens=image.tokens,
            encoder_mask=image.mask,
        )
        scored = text_mask[:, 1:]
        if label_mask is not None:
            if label_mask.shape != text_ids.shape:
                raise shape_error(
                    "captioner", "label_mask (same shape as text_ids)", tuple(text_ids.shape), label_mask
                )
            scored = scored & (label_mask[:, 1:] != 0)
        labels = text_ids[:, 1:].masked_fill(~scored, IGNORE_INDEX)
        if return_logits:
            logits = self.lm_logits(out.tokens)
            return CaptionerOutput(lm_loss(logits, labels, shift=False, label_smoothing=self.label_smoothing), logits)
        return CaptionerOutput(scored_rows_cross_entropy(out.tokens, labels, self.lm_logits, self.label_smoothing))

    # ---------------------------------------------------------------------------------------------
    # Generation
    # ---------------------------------------------------------------------------------------------

    def _prompt(
        self, batch: int, device: torch.device, prompt_ids: Tensor | None, prompt_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """-> left-aligned ``ids`` ``[B, P]``, ``mask`` (None when no padding), ``positions`` ``[B, P]``."""
        if prompt_ids is None:
            if prompt_mask is not None:
                raise ValueError("captioner: prompt_mask given without prompt_ids")
            ids = torch.full((batch, 1), self.bos_id, dtype=torch.long, device=device)
            return ids, None, torch.zeros_like(ids)
        if prompt_ids.dim() == 1:
            prompt_ids = prompt_ids.unsqueeze(0).expand(batch, -1)
            if prompt_mask is not None and prompt_mask.dim() == 1:
                prompt_mask = prompt_mask.unsqueeze(0).expand(batch, -1)
        if prompt_ids.dim() != 2 or prompt_ids.shape[0] != batch or prompt_ids.shape[1] == 0:
            raise shape_error("captioner", "prompt_ids (one prompt per image)", (batch, "tokens"), prompt_ids)
        ids = prompt_ids.to(device=device, dtype=torch.long)
        if prompt_mask is None:
            mask = ids != self.pad_id
        else:
            if prompt_mask.shape != prompt_ids.shape:
                raise shape_error(
                    "captioner", "prompt_mask (same shape as prompt_ids)", tuple(ids.shape), prompt_mask
                )
            mask = prompt_mask.to(device) if prompt_mask.dtype == torch.bool else prompt_mask.to(device) != 0
        # A prompt ending in EOS (the tokenizer's '[CLS] text [SEP]') continues before the EOS.
        last = (mask.long() * torch.arange(1, mask.shape[1] + 1, device=device)).argmax(dim=1)
        ends_eos = (ids.gather(1, last[:, None]).squeeze(1) == self.eos_id) & (mask.sum(dim=1) > 1)
        mask = mask.clone()
        mask[torch.arange(batch, device=device)[ends_eos], last[ends_eos]] = False
        if not bool(mask.any(dim=1).all()):
            raise ValueError("captioner: every prompt needs at least one real token (e.g. the BOS id)")
        # Left-align: padding first, then the real tokens in order (a stable sort on the mask), so
        # every row's next token comes at the same step.
        order = torch.sort(mask.to(torch.uint8), dim=1, stable=True).indices
        ids, mask = ids.gather(1, order), mask.gather(1, order)
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return ids, (None if bool(mask.all()) else mask), positions

    @torch.no_grad()
    def generate(
        self,
        images: Tensor | EncoderOutput,
        max_length: int = 30,
        method: str = "greedy",
        beam_size: int = 3,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        repetition_penalty: float = 1.0,
        top_p: float = 0.9,
        temperature: float = 1.0,
        min_length: int = 0,
        prompt_ids: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        early_stopping: bool = False,
    ) -> GenerationOutput:
        """Caption (or answer, given ``prompt_ids``) a batch of images.

        ``max_length`` / ``min_length`` count generated tokens (EOS included / excluded); the
        result holds only generated tokens, EOS included, padded with ``pad_id``. ``max_length`` is
        capped so that prompt + caption fit the decoder's ``max_length`` positions. ``prompt_ids``
        ``[B, P]`` (or ``[P]`` for all images) should begin with ``bos_id``; left or right padding
        both work (the tokenizer's ``encode`` output can be passed as is: a trailing EOS is dropped);
        ``prompt_mask`` (1 = real) defaults to ``prompt_ids != pad_id``. ``use_cache=False``
        recomputes the whole prefix at every step (slow; for testing). Images may also be given as
        an :class:`EncoderOutput` already computed by :meth:`encode_image`. The pad and BOS ids are
        never generated. See
        :mod:`polymodal.models.generation` for the meaning of the search options.
        """
        check_method(method)
        image = self._image_features(images)
        context, context_mask = image.tokens, image.mask
        batch = context.shape[0]
        ids, mask, positions = self._prompt(batch, context.device, prompt_ids, prompt_mask)
        prompt_len = int(positions[:, -1].max()) + 1
        limit = self.decoder.max_length + 1 - prompt_len  # the last generated token is never fed back
        if limit < 1:
            raise ValueError(
                f"captioner: a prompt of {prompt_len} tokens leaves no room in the decoder's "
                f"max_length={self.decoder.max_length}"
            )
        max_length = min(max_length, limit)

        step_fn: Any
        reorder_fn: Any
        if use_cache:
            cache = KVCache()
            logits = self._decode(ids, mask, positions, context, context_mask, cache)[:, -1]
            state: Any = _CachedState(cache, positions[:, -1] + 1)

            def step_fn(tokens: Tensor, st: _CachedState) -> tuple[Tensor, _CachedState]:
                out = self._decode(tokens[:, None], None, st.next_pos[:, None], None, None, st.cache)
                return out[:, -1], _CachedState(st.cache, st.next_pos + 1)

            def reorder_fn(st: _CachedState, index: Tensor) -> _CachedState:
                return _CachedState(reorder_cache(st.cache, index), st.next_pos.index_select(0, index))

        else:
            logits = self._decode(ids, mask, positions, context, context_mask, None)[:, -1]
            state = _PrefixState(ids, mask, positions, context, context_mask)

            def step_fn(tokens: Tensor, st: _PrefixState) -> tuple[Tensor, _PrefixState]:
                new = _PrefixState(
                    ids=torch.cat([st.ids, tokens[:, None]], dim=1),
                    mask=None if st.mask is None else F.pad(st.mask, (0, 1), value=True),
                    positions=torch.cat([st.positions, st.positions[:, -1:] + 1], dim=1),
                    context=st.context,
                    context_mask=st.context_mask,
                )
                out = self._decode(new.ids, new.mask, new.positions, new.context, new.context_mask, None)
                return out[:, -1], new

            def reorder_fn(st: _PrefixState, index: Tensor) -> _PrefixState:
                return _PrefixState(
                    ids=st.ids.index_select(0, index),
                    mask=_select(st.mask, index),
                    positions=st.positions.index_select(0, index),
                    context=st.context.index_select(0, index),
                    context_mask=_select(st.context_mask, index),
                )

        return run_search(
            step_fn,
            logits,
            state,
            method=method,
            reorder_fn=reorder_fn,
            max_length=max_length,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
            beam_size=beam_size,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
            top_p=top_p,
            temperature=temperature,
            generator=generator,
            min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size,
            repetition_penalty=repetition_penalty,
            suppress_ids=self.suppress_ids,
        )
