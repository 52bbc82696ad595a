"""ALBEF-style pretraining model: ITC on the towers, ITM with hard negatives and MLM on the fusion.

Hard negatives for ITM are drawn from the ITC similarities of the same batch (the texts an image is
most easily confused with), which is what makes ITM learn fine-grained alignment rather than the
trivial "random caption" distinction.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.losses import (
    ITCLoss,
    MultiTaskLoss,
    itm_loss,
    itm_pairs,
    mask_tokens,
    sample_hard_negatives,
)
from polymodal.losses._token_mean import scored_rows_cross_entropy
from polymodal.models.backbone import ImageTextBackbone
from polymodal.models.dual_encoder import _projection
from polymodal.models.outputs import FusionEncoderOutput
from polymodal.modules.encoders.base import EncoderOutput, pooled_output

OBJECTIVES = ("itc", "itm", "mlm")


class FusionEncoder(nn.Module):
    def __init__(
        self,
        backbone: ImageTextBackbone,
        vocab_size: int,
        mask_token_id: int,
        pad_token_id: int,
        special_token_ids: tuple[int, ...] = (),
        embed_dim: int = 128,
        weights: Mapping[str, float] | None = None,
        mlm_probability: float = 0.15,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.image_proj = _projection(backbone.image_encoder.output_dim, embed_dim)
        self.text_proj = _projection(backbone.text_encoder.output_dim, embed_dim)
        self.itc = ITCLoss()
        weights = dict(weights or {k: 1.0 for k in OBJECTIVES})
        unknown = set(weights) - set(OBJECTIVES)
        if unknown:
            raise ConfigError(f"fusion encoder: unknown objectives {sorted(unknown)} in weights; valid: {list(OBJECTIVES)}")
        # heads exist only for the objectives that train them: an untrained head would be dead weight in
        # every checkpoint, and DDP refuses parameters that never receive a gradient
        self.itm_head = nn.Linear(backbone.width, 2) if "itm" in weights else None
        self.mlm_head = (
            nn.Sequential(nn.Linear(backbone.width, backbone.width), nn.GELU(), nn.LayerNorm(backbone.width), nn.Linear(backbone.width, vocab_size))
            if "mlm" in weights
            else None
        )
        self.objectives = MultiTaskLoss(weights, over_ranks=("mlm",))  # a token mean over every rank
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.special_token_ids = tuple(special_token_ids)
        self.mlm_probability = mlm_probability

    def _special_mask(self, ids: Tensor) -> Tensor:
        special = ids == self.pad_token_id
        for t in self.special_token_ids:
            special |= ids == t
        return special

    def forward(
        self,
        images: Tensor | EncoderOutput,
        text_ids: Tensor,
        text_mask: Tensor | None = None,
        image_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
        text: EncoderOutput | None = None,
    ) -> FusionEncoderOutput:
        """``images`` may be already encoded and ``text`` the already encoded ``text_ids``: a caller that
        needs the encodings too shares them. Left to encode the text itself, it runs the text tower only
        as far as the objectives read it: ITC alone reads the pooled vector, so the tower's last block
        runs for that one token (:func:`pooled_output`); MLM encodes its masked copy instead."""
        weights = self.objectives.weights
        image = images if isinstance(images, EncoderOutput) else self.backbone.encode_image(images)
        losses: dict[str, Tensor] = {}
        itc = None
        itm_acc = None
        if "itc" in weights or "itm" in weights:
            if text is None and "itm" not in weights:
                text_pooled = pooled_output(self.backbone.text_encoder, text_ids, text_mask)
            else:
                text = text if text is not None else self.backbone.encode_text(text_ids, text_mask)
                text_pooled = text.pooled
            img_z = F.normalize(self.image_proj(image.pooled), dim=-1)
            txt_z = F.normalize(self.text_proj(text_pooled), dim=-1)
            itc = self.itc(img_z, txt_z, image_ids=image_ids)
            if "itc" in weights:
                losses["itc"] = itc.loss
        if "itm" in weights and text_ids.shape[0] > 1:
            with torch.no_grad():  # negatives among this rank's pairs: under DDP the ITC logits span every rank's
                i2t, t2i = itc.local_logits()  # type: ignore[union-attr]
                negs = sample_hard_negatives(i2t.detach().float(), t2i.detach().float(), image_ids=image_ids, generator=generator)
            pairs = itm_pairs(negs)
            fused = self.backbone.fuse(text.take(pairs.text_index), image, pairs.image_index)  # type: ignore[union-attr]
            out = itm_loss(self.itm_head(fused.pooled), pairs.labels)  # type: ignore[misc]
            losses["itm"], itm_acc = out.loss, out.accuracy
        if "mlm" in weights:
            masked = mask_tokens(
                text_ids,
                self.vocab_size,
                self.mask_token_id,
                special_tokens_mask=self._special_mask(text_ids),
                prob=self.mlm_probability,
                generator=generator,
            )
            masked_text = self.backbone.encode_text(masked.input_ids, text_mask)
            fused = self.backbone.fuse(masked_text, image)
            # only the selected ~15% of positions go through the head (its vocabulary projection is the
            # largest matmul of the step)
            losses["mlm"] = scored_rows_cross_entropy(fused.tokens, masked.labels, self.mlm_head)  # type: ignore[arg-type]
        total = self.objectives(losses)
        return FusionEncoderOutput(loss=total.total, parts=total.parts, itm_accuracy=itm_acc, itc=itc, loss_over_ranks=total.over_ranks)

    @torch.no_grad()
    def itm_score(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """Probability ``[B]`` that each (image, text) pair matches."""
        if self.itm_head is None:
            raise ValueError("fusion encoder: this model was built without the 'itm' objective, so it has no matching head")
        fused = self.backbone(images, text_ids, text_mask)
        return self.itm_head(fused.pooled).softmax(dim=-1)[:, 1]
