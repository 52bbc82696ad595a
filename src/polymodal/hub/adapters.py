"""Hugging Face checkpoints behind polymodal's task API.

Each adapter holds the ``transformers`` model itself and calls its own methods, so the numbers are
the Hugging Face model's numbers (the tests compare them to 1e-5); what the adapter adds is the
interface every polymodal command and task already speaks:

* :class:`HFDualEncoder` (CLIP, SigLIP): ``encode_image`` / ``encode_text`` / ``logit_scale`` for
  retrieval and zero-shot classification, and ``forward(images, ids, mask) -> .loss`` (CLIP's
  softmax InfoNCE, SigLIP's sigmoid loss) so ``polymodal train`` fine-tunes it on retrieval data.
* :class:`HFCaptioner` (BLIP): ``generate(images) -> .sequences`` and a captioning LM loss.
* :class:`HFAnswerClassifier` (ViLT VQA): ``forward(...) -> .logits`` over its answer labels.
* :class:`HFGenerativeVQA` (BLIP VQA): answers are generated text.
* :class:`HFMatcher` (BLIP ITM): the probability that an image and a text match.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.losses import itc_loss, itm_loss, itm_pairs, sample_hard_negatives, vqa_bce_loss
from polymodal.losses.contrastive import sigmoid_pair_loss
from polymodal.models.dual_encoder import PairEncoder
from polymodal.models.vqa import AnswerVocab


def _features(out: Any) -> Tensor:
    """``get_*_features`` return a tensor in older ``transformers`` and an output with ``pooler_output`` in newer ones."""
    return out if isinstance(out, Tensor) else out.pooler_output


# The submodules that make up each tower, across CLIP, SigLIP and BLIP.
TOWER_MODULES: dict[str, tuple[str, ...]] = {
    "vision": ("vision_model", "visual_projection"),
    "text": ("text_model", "text_projection", "text_decoder", "text_encoder"),
}


class _Adapter(nn.Module):
    """Holds the transformers model as ``self.hf``; frozen towers stay in eval mode when training."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        self.frozen_towers: list[str] = []

    def train(self, mode: bool = True) -> _Adapter:
        super().train(mode)
        for tower in self.frozen_towers:
            for name in TOWER_MODULES[tower]:
                sub = getattr(self.hf, name, None)
                if isinstance(sub, nn.Module):
                    sub.eval()
        return self


def freeze_tower(model: nn.Module, tower: str, where: str = "the checkpoint") -> None:
    """Lock one tower (no gradients, eval mode for good): ``vision`` or ``text``."""
    if tower not in TOWER_MODULES or not isinstance(model, _Adapter):
        raise ConfigError(f"model.freeze: cannot freeze {tower!r} in {where}; towers are 'vision' and 'text'")
    subs = [m for name in TOWER_MODULES[tower] if isinstance(m := getattr(model.hf, name, None), nn.Module)]
    if not subs:
        raise ConfigError(f"model.freeze: {where} ({type(model.hf).__name__}) has no {tower} tower to freeze")
    for sub in subs:
        sub.requires_grad_(False)
    model.frozen_towers.append(tower)
    model.train(model.training)


@dataclass
class PairStats:
    """What retrieval training logs: the in-batch top-1 image->text accuracy and the scale used."""

    acc_i2t: Tensor
    logit_scale: Tensor


@dataclass
class HFDualEncoderOutput:
    image_embeds: Tensor
    text_embeds: Tensor
    loss: Tensor
    itc: Any = None  # ITCOutput (CLIP) or PairStats (SigLIP)


class HFDualEncoder(PairEncoder, _Adapter):
    """CLIP or SigLIP: ``family`` picks the loss (softmax InfoNCE or pairwise sigmoid)."""

    def __init__(self, hf_model: nn.Module, family: str) -> None:
        super().__init__(hf_model)
        self.family = family

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        z = _features(self.hf.get_image_features(pixel_values=images))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, text_ids: Tensor, text_mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        z = _features(self.hf.get_text_features(input_ids=text_ids, attention_mask=text_mask))
        return F.normalize(z, dim=-1) if normalize else z

    @property
    def logit_scale(self) -> float:
        return float(self.hf.logit_scale.detach().exp())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.hf, "logit_bias", None)
        return float(bias.detach()) if bias is not None else 0.0

    def similarity_logits(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """``[B_img, B_txt]`` logits exactly as the model's own forward computes them."""
        return image_embeds @ text_embeds.t() * self.hf.logit_scale.exp() + (self.hf.logit_bias if self.family == "siglip" else 0.0)

    def embed_pairs(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, ...]:
        """Embeddings and the loss's own parameters (scale; SigLIP's bias too) repeated per row; see
        ``DualEncoder.embed_pairs`` for why."""
        img, txt = self.encode_image(images), self.encode_text(text_ids, text_mask)
        rows = len(img)
        scale = self.hf.logit_scale.reshape(-1).expand(rows)
        if self.family == "siglip":
            return img, txt, scale, self.hf.logit_bias.reshape(-1).expand(rows)
        return img, txt, scale

    def pair_loss(self, img: Tensor, txt: Tensor, scale_rows: Tensor, *rest: Tensor, image_ids: Tensor | None = None) -> HFDualEncoderOutput:
        """The model's own pair loss on ``embed_pairs``' outputs (parameters read from the first row)."""
        if self.family == "siglip":
            loss = sigmoid_pair_loss(img, txt, scale_rows[:1], rest[0][:1], image_ids=image_ids)
            with torch.no_grad():
                hits = (img @ txt.t()).argmax(dim=1) == torch.arange(len(img), device=img.device)
            return HFDualEncoderOutput(img, txt, loss, PairStats(hits.float().mean(), scale_rows[:1].detach().exp().reshape(())))
        itc = itc_loss(img, txt, scale_rows[:1], image_ids=image_ids, normalize=False)
        return HFDualEncoderOutput(img, txt, itc.loss, itc)


@dataclass
class HFGeneration:
    sequences: Tensor  # [B, L] token ids, decoded by the checkpoint's tokenizer


@dataclass
class HFLossOutput:
    loss: Tensor
    # the tokens ``loss`` is the mean of: Hugging Face's language-model losses average over this process's
    # labelled tokens, shifted by one (the first token is never predicted)
    rank_tokens: int | None = None


def _scored_tokens(labels: Tensor) -> int:
    return int((labels[:, 1:] != -100).sum())


class HFCaptioner(_Adapter):
    """BLIP image captioning (``BlipForConditionalGeneration``)."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__(hf_model)

    @torch.no_grad()
    def generate(self, images: Tensor, max_length: int = 30, method: str = "greedy", beam_size: int = 3, **_: Any) -> HFGeneration:
        beams = beam_size if method == "beam" else 1
        seqs = self.hf.generate(pixel_values=images, max_new_tokens=max_length, num_beams=beams, do_sample=False)
        return HFGeneration(seqs)

    def forward(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> HFLossOutput:
        labels = text_ids.masked_fill(text_mask == 0, -100) if text_mask is not None else text_ids
        out = self.hf(pixel_values=images, input_ids=text_ids, attention_mask=text_mask, labels=labels)
        return HFLossOutput(out.loss, _scored_tokens(labels))


@dataclass
class HFLogits:
    logits: Tensor
    loss: Tensor | None = None


class HFAnswerClassifier(_Adapter):
    """ViLT VQA: a classifier over the checkpoint's answer labels (``ViltForQuestionAnswering``).

    Fine-tuning keeps the checkpoint's answer set (``vocab``, from ``id2label``) and trains with the
    same VQA soft-score BCE as polymodal's own VQA model; answers outside the set teach nothing.
    """

    takes_answer_targets = True  # forward's answers may be AnswerVocab.targets (see tasks.vqa)

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__(hf_model)
        labels = {int(k): v for k, v in hf_model.config.id2label.items()}
        self.vocab = AnswerVocab(tuple(labels[i] for i in range(len(labels))))

    def forward(
        self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None, pixel_mask: Tensor | None = None,
        answers: Sequence[Sequence[str]] | Tensor | None = None,
    ) -> HFLogits:
        logits = self.hf(input_ids=text_ids, attention_mask=text_mask, pixel_values=images, pixel_mask=pixel_mask).logits
        loss = vqa_bce_loss(logits, self.vocab.targets_for(answers, logits, "ViLT VQA")) if answers is not None else None
        return HFLogits(logits, loss)

    @torch.no_grad()
    def answer(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> list[str]:
        return self.vocab.decode(self(images, text_ids, text_mask).logits)


class HFGenerativeVQA(_Adapter):
    """BLIP VQA (``BlipForQuestionAnswering``): the answer is decoded text, not a class.

    Fine-tuning teaches each question's most frequent answer with the decoder's LM loss, the answer
    starting at the decoder's start token exactly as ``generate`` starts it.
    """

    def __init__(self, hf_model: nn.Module, tokenizer: Any) -> None:
        super().__init__(hf_model)
        self.tokenizer = tokenizer  # the checkpoint's transformers tokenizer

    def forward(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None, answers: Sequence[Sequence[str]] = ()) -> HFLossOutput:
        if len(answers) != len(text_ids) or not all(answers):
            raise ValueError(f"BLIP VQA training needs one or more answers per question; got {len(answers)} answer lists for {len(text_ids)} questions")
        wanted = [Counter(a).most_common(1)[0][0] for a in answers]
        enc = self.tokenizer(wanted, padding="longest", truncation=True, max_length=16, return_tensors="pt").to(text_ids.device)
        decoder_ids = enc["input_ids"].clone()
        decoder_ids[:, 0] = self.hf.decoder_start_token_id
        labels = decoder_ids.masked_fill(enc["attention_mask"] == 0, -100)
        out = self.hf(input_ids=text_ids, attention_mask=text_mask, pixel_values=images, decoder_input_ids=decoder_ids,
                      decoder_attention_mask=enc["attention_mask"], labels=labels)
        return HFLossOutput(out.loss, _scored_tokens(labels))

    @torch.no_grad()
    def answer(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None, max_length: int = 10) -> list[str]:
        seqs = self.hf.generate(input_ids=text_ids, attention_mask=text_mask, pixel_values=images, max_new_tokens=max_length, do_sample=False)
        return [self.tokenizer.decode(s, skip_special_tokens=True).strip() for s in seqs]


# BLIP's ITC temperature at initialisation; Hugging Face's BlipForImageTextRetrieval does not keep the
# learned one, so fine-tuning uses this fixed value.
BLIP_ITC_TEMPERATURE = 0.07


@dataclass
class HFMatcherOutput:
    loss: Tensor
    itc: Any  # ITCOutput
    itm_accuracy: Tensor


class HFMatcher(_Adapter):
    """BLIP image-text matching (``BlipForImageTextRetrieval``): P(match) from the ITM head.

    It is also a dual encoder through BLIP's ITC projections (``encode_image`` / ``encode_text``, what
    the checkpoint's ``use_itm_head=False`` path computes), so it ranks a gallery and fine-tunes on
    captions with ``task: retrieval``: ITC plus ITM on in-batch hard negatives, as BLIP was trained.
    """

    logit_scale = 1.0 / BLIP_ITC_TEMPERATURE

    def _image_embeds(self, images: Tensor) -> Tensor:
        return self.hf.vision_model(pixel_values=images)[0]

    def _image_feature(self, image_embeds: Tensor) -> Tensor:
        return F.normalize(self.hf.vision_proj(image_embeds[:, 0, :]), dim=-1)

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        z = self.hf.vision_proj(self._image_embeds(images)[:, 0, :])
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, text_ids: Tensor, text_mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        z = self.hf.text_proj(self.hf.text_encoder(input_ids=text_ids, attention_mask=text_mask)[0][:, 0, :])
        return F.normalize(z, dim=-1) if normalize else z

    def _itm_logits(self, image_embeds: Tensor, text_ids: Tensor, text_mask: Tensor | None) -> Tensor:
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        fused = self.hf.text_encoder(input_ids=text_ids, attention_mask=text_mask, encoder_hidden_states=image_embeds,
                                     encoder_attention_mask=image_mask)[0]
        return self.hf.itm_head(fused[:, 0, :])

    def forward(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None, image_ids: Tensor | None = None) -> HFMatcherOutput:
        image_embeds = self._image_embeds(images)
        img, txt = self._image_feature(image_embeds), self.encode_text(text_ids, text_mask)
        itc = itc_loss(img, txt, math.log(self.logit_scale), image_ids=image_ids, normalize=False)
        pairs = itm_pairs(sample_hard_negatives(*itc.local_logits(), image_ids=image_ids))  # among this rank's pairs
        mask = text_mask[pairs.text_index] if text_mask is not None else None
        itm = itm_loss(self._itm_logits(image_embeds[pairs.image_index], text_ids[pairs.text_index], mask), pairs.labels)
        return HFMatcherOutput(itc.loss + itm.loss, itc, itm.accuracy)

    @torch.no_grad()
    def match(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> Tensor:
        out = self.hf(input_ids=text_ids, attention_mask=text_mask, pixel_values=images, use_itm_head=True)
        logits = out.itm_score if hasattr(out, "itm_score") else out[0]
        return logits.softmax(-1)[:, 1]


__all__: Sequence[str] = (
    "HFAnswerClassifier",
    "HFCaptioner",
    "HFDualEncoder",
    "HFGenerativeVQA",
    "HFMatcher",
    "freeze_tower",
)
