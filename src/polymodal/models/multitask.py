"""One model for every world task: shared towers, one head (or decoder) per task.

The image is encoded once per batch and feeds all objectives: ITC/ITM/MLM through the ALBEF-style
:class:`FusionEncoder`, captioning LM through a :class:`Captioner` whose decoder cross-attends to the
same image tokens, VQA and statement verification through the same image-grounded text backbone.
Sharing is by module identity, so a checkpoint stores each tower once and every sub-model (retrieval,
captioning, VQA) can be used on its own at inference.

Two *ablation probes* sit beside the joint statement classifier: one sees only the image's pooled
features, one only the statement's text features, both detached so they cannot shape the shared
towers. When the label needs both modalities (as the world's statements do by construction) the
probes stay near chance while the joint head does not; if a dataset leaks the label through one
modality, its probe shows it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polymodal.errors import ConfigError
from polymodal.losses import MultiTaskLoss, vqa_bce_loss
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.models.backbone import ImageTextBackbone
from polymodal.models.captioner import Captioner
from polymodal.models.fusion_encoder import FusionEncoder
from polymodal.models.grounded_readout import GroundedReadout, KnownObjects, PlanTargets, Readout
from polymodal.models.object_head import ObjectHead, ObjectVocab
from polymodal.models.vqa import AnswerVocab, VQAClassifier
from polymodal.modules.encoders.base import EncoderOutput, pooled_output

PRETRAIN_OBJECTIVES = ("itc", "itm", "mlm")
OBJECTIVES = PRETRAIN_OBJECTIVES + ("lm", "vqa", "cls", "obj", "ground")
PROBES = ("image_only", "text_only")
REQUIRED = ("itc", "lm", "vqa", "cls")


@dataclass
class MultiTaskOutput:
    loss: Tensor
    parts: dict[str, Tensor]  # unweighted, detached, per objective (probes included)
    accuracy: dict[str, Tensor]  # training-batch accuracies of the classification heads
    # the part of ``loss`` that is a mean over every rank's tokens (LM, MLM); the other heads are means over
    # this rank's images, questions or statements: the trainer weighs the two kinds apart (train/accumulation.py)
    loss_over_ranks: Tensor | None = None


def _head(width: int, outputs: int, dropout: float = 0.1) -> nn.Module:
    return nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.LayerNorm(2 * width), nn.Dropout(dropout), nn.Linear(2 * width, outputs))


def _row_images(images: int, times: int, device: torch.device) -> Tensor:
    """The image of each text row: ``times - 1`` questions per image (image-major), then one statement per image."""
    each = torch.arange(images, device=device)
    return torch.cat([each.repeat_interleave(times - 1), each])


def _pad_cat(a: Tensor, b: Tensor, pad: int) -> Tensor:
    """Stack two ``[B, T]`` id/mask tensors of different lengths along the batch, right-padded."""
    t = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, t - a.shape[1]), value=pad), F.pad(b, (0, t - b.shape[1]), value=pad)])


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """The objectives' weights as floats, or a ConfigError naming what is unknown or missing."""
    weights = {k: float(v) for k, v in weights.items()}
    unknown = sorted(set(weights) - set(OBJECTIVES))
    if unknown:
        raise ConfigError(f"multitask: unknown objectives {unknown}; valid: {list(OBJECTIVES)}")
    missing = [k for k in REQUIRED if weights.get(k, 0.0) <= 0]
    if missing:
        raise ConfigError(
            f"multitask: the weights of {missing} must be > 0: every head of a multi-task model is trained "
            "(itc, lm, vqa and cls are required; itm, mlm, obj and ground are optional); for fewer tasks use a single-task model type"
        )
    return weights


class MultiTaskModel(nn.Module):
    def __init__(
        self,
        pretrain: FusionEncoder,
        captioner: Captioner,
        vocab: AnswerVocab,
        num_classes: int = 2,
        weights: Mapping[str, float] | None = None,
        dropout: float = 0.1,
        objects: ObjectVocab | None = None,
    ) -> None:
        super().__init__()
        weights = check_weights(weights or {k: 1.0 for k in REQUIRED})
        if weights.get("obj", 0.0) > 0 and objects is None:
            raise ConfigError(
                "multitask: the 'obj' objective needs object annotations in the training data (a 'scenes' source "
                "with each image's objects, as the built-in world writes); none were found. Set weights.obj to 0 "
                "or add scene graphs"
            )
        if weights.get("ground", 0.0) > 0 and objects is None:
            raise ConfigError(
                "multitask: the 'ground' objective needs scene graphs (a 'scenes' source) and texts that name their "
                "objects ('grounding' indices, as the built-in world writes); no scene graphs were found. Set weights.ground to 0"
            )
        if captioner.image_encoder is not pretrain.backbone.image_encoder:
            raise ConfigError("multitask: the captioner must share the backbone's image encoder")
        self.weights = {k: v for k, v in weights.items() if v > 0}
        self.pretrain = pretrain
        self.captioner = captioner
        grounded = weights.get("ground", 0.0) > 0  # with scene graphs: checked above
        readout = GroundedReadout(pretrain.backbone.width, pretrain.backbone.image_encoder.width) if grounded else None
        self.vqa = VQAClassifier(pretrain.backbone, vocab, dropout=dropout, readout=readout)
        width = pretrain.backbone.width
        self.num_classes = num_classes
        self.cls_head = _head(width, num_classes, dropout)
        self.probes = nn.ModuleDict({
            "image_only": _head(pretrain.backbone.image_encoder.output_dim, num_classes, dropout),
            "text_only": _head(pretrain.backbone.text_encoder.output_dim, num_classes, dropout),
        })
        self.objects = ObjectHead(pretrain.backbone.image_encoder.width, objects) if objects is not None and weights.get("obj", 0.0) > 0 else None
        self.objectives = MultiTaskLoss(
            {k: v for k, v in self.weights.items() if k not in PRETRAIN_OBJECTIVES} | {f"probe_{p}": 1.0 for p in PROBES},
            over_ranks=("lm",),  # the captioner's token mean over every rank
        )

    @property
    def backbone(self) -> ImageTextBackbone:
        return self.pretrain.backbone

    @property
    def vocab(self) -> AnswerVocab:
        return self.vqa.vocab

    # ------------------------------------------------------------------ training
    def forward(
        self,
        images: Tensor,
        caption_ids: Tensor,
        caption_mask: Tensor,
        question_ids: Tensor,
        question_mask: Tensor,
        answers: Sequence[Sequence[str]] | Tensor,
        statement_ids: Tensor,
        statement_mask: Tensor,
        labels: Tensor,
        image_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
        object_attributes: Tensor | None = None,
        object_xy: Tensor | None = None,
        object_annotated: Tensor | None = None,
        grounding: Tensor | None = None,
        plan: PlanTargets | None = None,
    ) -> MultiTaskOutput:
        """Per image: a caption, ``k >= 1`` questions with their answers (rows image-major), a statement
        with its label, and (for the ``obj`` objective) its objects as :meth:`ObjectVocab.targets` gives
        them. Several questions per image make VQA learn faster for little extra cost, since the image
        is encoded once. ``answers`` are each question's answer strings, or their soft targets ``[Q, A]`` over
        the answer vocabulary (:meth:`AnswerVocab.targets`): the training collator computes them in the
        loader, so a compiled forward gets only tensors (strings would break its graph)."""
        b = images.shape[0]
        for name, t in (("caption_ids", caption_ids), ("statement_ids", statement_ids), ("labels", labels)):
            if t.shape[0] != b:
                raise ValueError(f"multitask: {name} has {t.shape[0]} rows for {b} images (one per image expected)")
        per_image = question_ids.shape[0] // b
        if per_image < 1 or question_ids.shape[0] != per_image * b or len(answers) != question_ids.shape[0]:
            raise ValueError(
                f"multitask: expected k questions per image (rows image-major) and one answer list per question; got "
                f"{question_ids.shape[0]} questions and {len(answers)} answer lists for {b} images"
            )
        image = self.backbone.encode_image(images)
        # the caption's text encoding is the pretraining objectives' alone: they encode only what they read
        pre = self.pretrain(image, caption_ids, caption_mask, image_ids=image_ids, generator=generator)
        losses: dict[str, Tensor] = {}
        accuracy: dict[str, Tensor] = {}
        if pre.itm_accuracy is not None:
            accuracy["itm"] = pre.itm_accuracy
        losses["lm"] = self.captioner(image, caption_ids, caption_mask).loss

        known = None
        if self.vqa.readout is not None:
            if grounding is None or object_xy is None or object_attributes is None:
                raise ValueError("multitask: this model trains the 'ground' objective, so every batch needs object_attributes, object_xy and grounding targets")
            annotated = object_annotated if object_annotated is not None else torch.ones(b, dtype=torch.bool)
            valid = (object_attributes != IGNORE_INDEX).any(-1)
            known = KnownObjects(object_xy.to(images.device), valid.to(images.device), annotated.to(images.device))
        text, fused, readout = self.fuse_questions_and_statements(image, question_ids, question_mask, statement_ids, statement_mask, known)
        nq = per_image * b
        vqa_logits = self.vqa.head(fused[:nq])
        targets = self.vocab.targets_for(answers, vqa_logits, "multitask")
        losses["vqa"] = vqa_bce_loss(vqa_logits, targets)
        accuracy["vqa"] = targets.gather(1, vqa_logits.argmax(-1, keepdim=True)).float().mean().detach()
        labels = labels.long()
        cls_logits = self.cls_head(fused[nq:])
        losses["cls"] = F.cross_entropy(cls_logits.float(), labels)
        accuracy["cls"] = (cls_logits.argmax(-1) == labels).float().mean().detach()
        probe_inputs = {"image_only": image.pooled.detach(), "text_only": text.pooled[nq:].detach()}
        for name, features in probe_inputs.items():
            logits = self.probes[name](features)
            losses[f"probe_{name}"] = F.cross_entropy(logits.float(), labels)
            accuracy[f"probe_{name}"] = (logits.argmax(-1) == labels).float().mean().detach()
        if self.objects is not None:
            if object_attributes is None or object_xy is None:
                raise ValueError("multitask: this model trains the 'obj' objective, so every batch needs object_attributes and object_xy")
            found = self.objects(image.tokens, object_attributes, object_xy, object_annotated)
            losses["obj"] = found.loss
            accuracy["obj"] = found.attribute_accuracy
        if readout is not None and known is not None:
            grounded = GroundedReadout.loss(readout, known, grounding.to(fused.device), None if plan is None else plan.to(fused.device))
            losses["ground"] = grounded.loss
            accuracy["ground"] = grounded.exact
        rest = self.objectives(losses)
        over_ranks = rest.over_ranks  # the LM term: lm is a required objective
        if pre.loss_over_ranks is not None:  # MLM
            over_ranks = pre.loss_over_ranks if over_ranks is None else over_ranks + pre.loss_over_ranks
        return MultiTaskOutput(pre.loss + rest.total, pre.parts | rest.parts, accuracy, over_ranks)

    def fuse_questions_and_statements(
        self,
        image: EncoderOutput,
        question_ids: Tensor,
        question_mask: Tensor,
        statement_ids: Tensor,
        statement_mask: Tensor,
        known: KnownObjects | None = None,
    ) -> tuple[EncoderOutput, Tensor, Readout | None]:
        """The text encoding, the features the heads read (see :meth:`VQAClassifier.features`) and, with a
        grounded readout, what it found, for every question (image-major) and then every statement: one
        pass through the text encoder and the fusion layers for both. ``known`` are the rows' annotated
        objects while training (see :class:`KnownObjects`)."""
        per_image = question_ids.shape[0] // image.tokens.shape[0]
        ids = _pad_cat(question_ids, statement_ids, self.captioner.pad_id)
        mask = _pad_cat(question_mask.long(), statement_mask.long(), 0)
        text = self.backbone.encode_text(ids, mask)
        rows = _row_images(image.tokens.shape[0], per_image + 1, image.tokens.device)
        fused = self.backbone.fuse(text, image, rows)
        if self.vqa.readout is None:
            return text, fused.pooled, None
        found = self.vqa.readout(fused, image.tokens, known, rows)
        return text, found.pooled, found

    # ------------------------------------------------------------------ inference
    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        z = self.pretrain.image_proj(pooled_output(self.backbone.image_encoder, images))
        return F.normalize(z, dim=-1) if normalize else z

    def encode_text(self, text_ids: Tensor, text_mask: Tensor | None = None, normalize: bool = True) -> Tensor:
        z = self.pretrain.text_proj(pooled_output(self.backbone.text_encoder, text_ids, text_mask))
        return F.normalize(z, dim=-1) if normalize else z

    @property
    def logit_scale(self) -> float:
        return self.pretrain.itc.scale

    @torch.no_grad()
    def answer(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> list[str]:
        return self.vqa.answer(images, text_ids, text_mask)

    @torch.no_grad()
    def classify(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Class probabilities of the joint head and of both single-modality probes, ``[B, C]`` each."""
        image = self.backbone.encode_image(images)
        text = self.backbone.encode_text(text_ids, text_mask)
        fused = self.vqa.read(self.backbone.fuse(text, image), image.tokens)
        return {
            "joint": self.cls_head(fused).softmax(-1),
            "image_only": self.probes["image_only"](image.pooled).softmax(-1),
            "text_only": self.probes["text_only"](text.pooled).softmax(-1),
        }

    @torch.no_grad()
    def generate(self, images: Tensor, **options):  # -> GenerationOutput
        return self.captioner.generate(images, **options)
