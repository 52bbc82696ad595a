"""CLIP-style dual encoder: two towers, one shared embedding space, a learnable temperature.

Zero-shot classification builds one text embedding per class from prompt templates and averages
the normalised embeddings over templates (prompt ensembling, as in CLIP), so a class is
represented by what all its phrasings share.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.losses import ITCLoss
from polymodal.models.outputs import DualEncoderOutput
from polymodal.modules.encoders.base import Encoder, pooled_output

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "an image showing a {}.")


def prompt_ensemble(embed: Callable[[list[str]], Tensor], class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """``[C, E]``: each class's prompts embedded by ``embed``, normalised, averaged over templates and
    normalised again, so one odd phrasing cannot dominate a class. Any text tower can supply ``embed``."""
    if not class_names:
        raise ValueError("zero-shot: give at least one class name")
    bad = [t for t in templates if t.count("{}") != 1 or "{" in t.replace("{}", "")]
    if not templates or bad:
        raise ValueError(f"zero-shot: every template needs a '{{}}' where the class name goes (exactly one '{{}}', no other braces); these do not: {bad}")
    rows = [F.normalize(F.normalize(embed([t.format(name) for t in templates]), dim=-1).mean(dim=0), dim=-1) for name in class_names]
    return torch.stack(rows)


class PairEncoder:
    """A contrastive model whose loss reads only per-pair rows: ``embed_pairs`` makes them, ``pair_loss``
    scores them. That split is what gradient-cached accumulation (``RetrievalTask.accumulated_loss``)
    needs; ``forward`` joins them, or with ``embeddings_only`` returns the rows, through ``forward`` so
    that DDP's gradient hooks are armed for them."""

    def embed_pairs(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def pair_loss(self, *rows: Tensor, image_ids: Tensor | None = None) -> Any:
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        text_ids: Tensor,
        text_mask: Tensor | None = None,
        image_ids: Tensor | None = None,
        *,
        embeddings_only: bool = False,
    ) -> Any:
        rows = self.embed_pairs(images, text_ids, text_mask)
        return rows if embeddings_only else self.pair_loss(*rows, image_ids=image_ids)


def _projection(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim, bias=False)


class DualEncoder(PairEncoder, nn.Module):
    def __init__(
        self,
        image_encoder: Encoder,
        text_encoder: Encoder,
        embed_dim: int,
        init_temperature: float = 0.07,
        learnable_temperature: bool = True,
        gather: bool = True,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.embed_dim = embed_dim
        self.image_proj = _projection(image_encoder.output_dim, embed_dim)
        self.text_proj = _projection(text_encoder.output_dim, embed_dim)
        self.itc = ITCLoss(init_temperature, learnable=learnable_temperature, gather=gather, local_loss=local_loss)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        z = self.image_proj(pooled_output(self.image_encoder, images))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, text_ids: Tensor, text_mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        z = self.text_proj(pooled_output(self.text_encoder, text_ids, text_mask))
        return F.normalize(z, dim=-1) if normalize else z

    def embed_pairs(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Everything the pair loss reads, one row per pair: image and text embeddings, and the loss's
        log-scale repeated per row.

        The repeated scale is what lets gradient-cached accumulation (``train/contrastive_accum``)
        treat the temperature like a feature: it is an output of the forward pass, so DDP sees the
        parameter used, and its gradient reaches the parameter through the re-encoding's backward,
        once, with every other gradient.
        """
        img = self.encode_image(images)
        txt = self.encode_text(text_ids, text_mask)
        return img, txt, self.itc.logit_scale.expand(img.shape[0])

    def pair_loss(self, image_embeds: Tensor, text_embeds: Tensor, scale_rows: Tensor, image_ids: Tensor | None = None) -> DualEncoderOutput:
        """The contrastive loss of ``embed_pairs``' outputs (the scale is read from its first row)."""
        itc = self.itc(image_embeds, text_embeds, image_ids=image_ids, logit_scale=scale_rows[:1])
        return DualEncoderOutput(image_embeds=image_embeds, text_embeds=text_embeds, loss=itc.loss, itc=itc)

    @property
    def logit_scale(self) -> float:
        return self.itc.scale

    @torch.no_grad()
    def zero_shot_weights(
        self,
        class_names: Sequence[str],
        tokenizer: TextTokenizer,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        max_length: int = 32,
    ) -> Tensor:
        """``[C, E]`` class embeddings: the renormalised mean over templates of each class's prompts."""
        device = next(self.parameters()).device

        def embed(prompts: list[str]) -> Tensor:
            enc = tokenizer.encode(prompts, max_length)
            return self.encode_text(enc.input_ids.to(device), enc.attention_mask.to(device))

        return prompt_ensemble(embed, class_names, templates)

    @torch.no_grad()
    def zero_shot_logits(self, images: Tensor, class_weights: Tensor) -> Tensor:
        """Scaled cosine similarities ``[B, C]``; softmax gives class probabilities."""
        return self.itc.scale * self.encode_image(images) @ class_weights.t()
