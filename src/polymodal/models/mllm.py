"""A multimodal LLM in the LLaVA mould: vision tower -> connector -> any Hugging Face causal LM.

The prompt holds one *image token* per connector output token, placed where the user wrote
``<image>`` (:mod:`polymodal.data.chat` expands each marker). The model embeds the text with the LM's
own embedding table and writes the image features over the image-token positions in order - the
same convention as ``transformers``' ``LlavaForConditionalGeneration``, so its checkpoints load
here unchanged and several images per conversation simply mean several runs of image tokens.

The LM is any ``AutoModelForCausalLM`` (GPT-2, Llama, Qwen, SmolLM ...): the model only needs its
input embeddings, ``inputs_embeds``/``position_ids``/``cache`` (``past_key_values`` before transformers 5.24) in ``forward``, and logits
out. Generation drives that forward directly with the LM's KV cache, so it streams token by token
and batches prompts of different lengths (left padding with explicit position ids).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from polymodal.losses._token_mean import token_mean_cross_entropy
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.models.generation import left_pad, top_p_filter
from polymodal.modules.encoders.base import ShapeError


@dataclass
class MLLMOutput:
    logits: Tensor  # [B, T, V]
    loss: Tensor | None = None  # mean cross-entropy over the labelled (assistant) tokens
    tokens: Tensor | None = None  # labelled tokens in the batch (for a token-weighted mean across batches)


@dataclass
class GenerationOutput:
    sequences: list[list[int]]  # per prompt: the generated ids (without the prompt, without the stop token)
    finished: list[bool] = field(default_factory=list)  # stopped at end-of-sequence (else at max_new_tokens)


class VisionFeatures(nn.Module):
    """The vision tokens a connector reads: a polymodal encoder's tokens, or a Hugging Face tower's hidden layer.

    LLaVA reads the *penultimate* layer of CLIP (``feature_layer=-2``) and drops [CLS] (``drop_cls``):
    the last layer is shaped by CLIP's contrastive head and keeps less spatial detail.
    """

    def __init__(self, encoder: nn.Module, feature_layer: int | None = None, drop_cls: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_layer = feature_layer
        self.drop_cls = drop_cls

    @property
    def width(self) -> int:
        return int(self.encoder.width)

    def forward(self, images: Tensor) -> Tensor:
        if self.feature_layer is not None:
            hf = getattr(self.encoder, "model", None)
            if hf is None:
                raise ShapeError(f"feature_layer is set, but {type(self.encoder).__name__} is not a Hugging Face vision tower")
            tokens = hf(pixel_values=images, output_hidden_states=True).hidden_states[self.feature_layer]
        else:
            tokens = self.encoder(images).tokens
        return tokens[:, 1:] if self.drop_cls else tokens


class MultimodalLM(nn.Module):
    def __init__(
        self,
        vision: VisionFeatures,
        connector: nn.Module,
        lm: nn.Module,
        image_token_id: int,
        tokens_per_image: int,
        pad_token_id: int,
        eos_token_id: int | Sequence[int],
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.connector = connector
        self.lm = lm
        self.image_token_id = int(image_token_id)
        self.tokens_per_image = int(tokens_per_image)
        self.pad_token_id = int(pad_token_id)
        self.eos_token_ids = {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(e) for e in eos_token_id}
        self.max_length = max_length

    # ------------------------------------------------------------------ embedding
    def image_features(self, images: Tensor) -> Tensor:
        """``[N, tokens_per_image, lm_width]`` for ``N`` images ``[N, 3, H, W]``."""
        if images.dim() != 4:
            raise ShapeError(f"mllm: expected images [N, 3, H, W], got {list(images.shape)}")
        feats = self.connector(self.vision(images))
        if feats.shape[1] != self.tokens_per_image:
            raise ShapeError(
                f"mllm: an image gave {feats.shape[1]} tokens, the prompts were built with {self.tokens_per_image}; "
                "the images must have the size the model was built for"
            )
        return feats

    def embed(self, input_ids: Tensor, images: Tensor | None) -> Tensor:
        """Text embeddings with every run of image tokens replaced by one image's features, in order."""
        is_image = input_ids == self.image_token_id
        slots = int(is_image.sum())
        n = 0 if images is None else images.shape[0]
        if slots != n * self.tokens_per_image:
            raise ShapeError(
                f"mllm: the prompts hold {slots} image tokens ({slots / self.tokens_per_image:g} images of "
                f"{self.tokens_per_image} tokens) but {n} images were given; each <image> marker takes exactly one image"
            )
        table = self.lm.get_input_embeddings()
        embeds = table(input_ids.masked_fill(is_image, 0))
        if n:
            feats = self.image_features(images).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))
        return embeds

    # ------------------------------------------------------------------ training
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        images: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> MLLMOutput:
        """``labels`` hold the target id at every assistant token and ``-100`` elsewhere (unshifted:
        position t is predicted from positions < t, as Hugging Face causal LMs take them)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        embeds = self.embed(input_ids, images)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=positions, use_cache=False).logits
        if labels is None:
            return MLLMOutput(logits)
        target = labels[:, 1:].reshape(-1)
        # the mean over the assistant tokens of every rank under DDP, as one process would compute it
        loss = token_mean_cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target)
        return MLLMOutput(logits, loss, (target != IGNORE_INDEX).sum())

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        images: Tensor | None = None,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Iterator[list[int | None]]:
        """Yield one step at a time: per prompt, the new token id, or None once that prompt has stopped.

        ``prompts`` are token-id lists (image tokens already expanded), ``images`` all their images in
        marker order. ``temperature == 0`` is greedy; otherwise nucleus sampling with ``top_p``.
        The LM's KV cache holds the prompt after the first step, so each later step costs one token.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ShapeError("mllm generation: every prompt needs at least one token")
        limit = self.max_length
        longest = max(len(p) for p in prompts)
        if limit is not None and longest >= limit:
            raise ShapeError(f"mllm generation: a prompt of {longest} tokens leaves no room in the {limit}-token context window")
        if limit is not None:
            max_new_tokens = min(max_new_tokens, limit - longest)
        device = next(self.parameters()).device
        ids, padded = left_pad(prompts, self.pad_token_id, device)
        mask = padded.long()
        embeds = self.embed(ids, images)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True)
        # transformers 5.24 renamed the KV cache from past_key_values to cache (the old name goes in 5.40);
        # whichever name the LM returned it under is the one its forward takes
        cache_name = "cache" if "cache" in out else "past_key_values"
        past, logits = out[cache_name], out.logits[:, -1]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        eos = torch.tensor(sorted(self.eos_token_ids), device=device)
        next_pos = positions[:, -1] + 1
        for _ in range(max_new_tokens):
            token = _pick(logits.float(), temperature, top_p, generator)
            stopped = torch.isin(token, eos) | done
            yield [None if stopped[i] else int(token[i]) for i in range(len(prompts))]
            done = stopped
            if bool(done.all()):
                return
            token = token.masked_fill(done, self.pad_token_id)
            mask = torch.cat([mask, (~done).long().unsqueeze(1)], dim=1)
            step = self.lm.get_input_embeddings()(token.unsqueeze(1))
            out = self.lm(inputs_embeds=step, attention_mask=mask, position_ids=next_pos.unsqueeze(1), use_cache=True, **{cache_name: past})
            past, logits = out[cache_name], out.logits[:, -1]
            next_pos = next_pos + 1

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], images: Tensor | None = None, **options: Any) -> GenerationOutput:
        """All of :meth:`stream` at once: the generated ids per prompt."""
        seqs: list[list[int]] = [[] for _ in prompts]
        finished = [False] * len(prompts)
        for step in self.stream(prompts, images, **options):
            for i, tok in enumerate(step):
                if tok is None:
                    finished[i] = True
                elif not finished[i]:
                    seqs[i].append(tok)
        return GenerationOutput(seqs, finished)


def _pick(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """The next token per row: argmax, or a sample from the smallest set holding ``top_p`` of the mass."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = top_p_filter((logits / temperature).log_softmax(-1), top_p).exp()  # the captioner's nucleus filter
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
