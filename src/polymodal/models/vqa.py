"""VQA as answer classification over a vocabulary built from the training answers.

Targets are VQA soft scores (min(#humans who gave the answer / 3, 1)), so a question whose humans
disagree teaches every plausible answer in proportion, as the official metric rewards them.
Answers are normalised the way the official evaluation normalises them before counting, so
"two" and "2" are one class.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from polymodal.losses import vqa_bce_loss, vqa_soft_targets
from polymodal.metrics.vqa import normalize_answer
from polymodal.models.backbone import ImageTextBackbone
from polymodal.models.grounded_readout import GroundedReadout
from polymodal.models.outputs import VQAOutput
from polymodal.modules.encoders.base import EncoderOutput


@dataclass(frozen=True)
class AnswerVocab:
    answers: tuple[str, ...]

    @classmethod
    def build(cls, answer_lists: Iterable[Sequence[str]], max_answers: int | None = 3129, min_count: int = 1) -> "AnswerVocab":
        """Most frequent normalised answers first (3,129 is the usual VQA v2 vocabulary size)."""
        counts: Counter[str] = Counter()
        for answers in answer_lists:
            counts.update({normalize_answer(a) for a in answers})  # count questions, not annotators
        ranked = [a for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count and a]
        if not ranked:
            raise ValueError("answer vocabulary: no answers found in the training data")
        return cls(tuple(ranked[:max_answers] if max_answers else ranked))

    def __len__(self) -> int:
        return len(self.answers)

    def index(self) -> dict[str, int]:
        return {a: i for i, a in enumerate(self.answers)}

    def targets(self, batch_answers: Sequence[Sequence[str]]) -> Tensor:
        """``[B, A]`` soft scores; answers outside the vocabulary contribute nothing."""
        if torch.compiler.is_compiling():
            # host-side work on strings: traced, each batch's answers would become guards and recompile the graph.
            # Disabled here, not by a decorator, which would import Dynamo (~1.5 s) wherever this module is imported
            return torch.compiler.disable(AnswerVocab._soft_targets)(self, batch_answers)
        return self._soft_targets(batch_answers)

    def _soft_targets(self, batch_answers: Sequence[Sequence[str]]) -> Tensor:
        normalised = [[normalize_answer(a) for a in answers] for answers in batch_answers]
        return vqa_soft_targets(normalised, self.index())

    def targets_for(self, answers: Sequence[Sequence[str]] | Tensor, logits: Tensor, model: str) -> Tensor:
        """The soft targets for ``logits [Q, A]``: from each question's answer strings, or given as that
        tensor already (a training loop computes them outside a compiled model, where strings would break
        its graph). A count or shape that does not fit is named, with ``model``."""
        if isinstance(answers, Tensor):
            if tuple(answers.shape) != (logits.shape[0], len(self)):
                raise ValueError(f"{model}: answer targets must be [questions, answers in the vocabulary] = {[logits.shape[0], len(self)]}, got {list(answers.shape)}")
            return answers.to(logits.device, logits.dtype)
        if len(answers) != logits.shape[0]:
            raise ValueError(f"{model}: got {len(answers)} answer lists for a batch of {logits.shape[0]} questions")
        return self.targets(answers).to(logits.device, logits.dtype)

    def decode(self, logits: Tensor) -> list[str]:
        return [self.answers[i] for i in logits.argmax(dim=-1).tolist()]

    def to_dict(self) -> dict[str, list[str]]:
        return {"answers": list(self.answers)}

    @classmethod
    def from_dict(cls, d: dict[str, list[str]]) -> "AnswerVocab":
        return cls(tuple(d["answers"]))


def repeated_images(images: Tensor) -> tuple[Tensor, Tensor | None]:
    """``images [B, ...]`` without the consecutive repeats, and for each input row the index of its image
    in what is left (``None`` when nothing repeats)."""
    if images.shape[0] < 2:
        return images, None
    new = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
    new[1:] = (images[1:] != images[:-1]).flatten(1).any(1)
    if bool(new.all()):
        return images, None
    return images[new], new.long().cumsum(0) - 1


class VQAClassifier(nn.Module):
    takes_answer_targets = True  # forward's answers may be AnswerVocab.targets (see tasks.vqa)

    def __init__(
        self, backbone: ImageTextBackbone, vocab: AnswerVocab, hidden: int | None = None, dropout: float = 0.1, readout: GroundedReadout | None = None
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.vocab = vocab
        self.readout = readout
        hidden = hidden or 2 * backbone.width
        self.head = nn.Sequential(nn.Linear(backbone.width, hidden), nn.GELU(), nn.LayerNorm(hidden), nn.Dropout(dropout), nn.Linear(hidden, len(vocab)))

    def forward(
        self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None, answers: Sequence[Sequence[str]] | Tensor | None = None
    ) -> VQAOutput:
        """``answers``: each question's answer strings, or their soft targets ``[Q, A]`` (:meth:`AnswerVocab.targets`)."""
        logits = self.head(self.features(images, text_ids, text_mask))
        loss = None if answers is None else vqa_bce_loss(logits, self.vocab.targets_for(answers, logits, "vqa"))
        return VQAOutput(logits=logits, loss=loss)

    def features(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """What the answer head reads: the fused question, plus its grounded readout when the model has one.

        At inference, questions about the same image usually come in a row (VQA files list them per
        image): such an image is encoded once, not once per question, which is most of an evaluation's
        time. Training batches are left alone, as batch norm's statistics depend on them."""
        unique, rows = (images, None) if self.training else repeated_images(images)
        image = self.backbone.encode_image(unique)
        return self.read(self.backbone.fuse(self.backbone.encode_text(text_ids, text_mask), image, rows), image.tokens, rows)

    def read(self, fused: EncoderOutput, image_tokens: Tensor, rows: Tensor | None = None) -> Tensor:
        """The pooled fused text with the grounded readout of its image's tokens added (as is without a
        readout); text ``r`` is about image ``rows[r]`` (``None``: image ``r``)."""
        return fused.pooled if self.readout is None else self.readout(fused, image_tokens, rows=rows).pooled

    @torch.no_grad()
    def answer(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> list[str]:
        return self.vocab.decode(self.forward(images, text_ids, text_mask).logits)
