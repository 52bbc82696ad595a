"""Multimodal classification: labels mapped to indices from the training data, accuracy and macro-F1."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Sequence

import torch
from torch import nn

from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.metrics import classification_scores, confusion_matrix
from polymodal.tasks.base import EvalResult, LoaderFactory, StepOutput, Task, batch_device, to_device

log = logging.getLogger(__name__)


def _class_index(label: Any, index: dict[str, int]) -> int:
    """The class of ``label``, -100 (ignored by the loss, wrong in accuracy) for none. A whole-number float
    (a CSV cell '1.0') is the class '1' when the classes were learned from integer labels."""
    found = index.get(str(label))
    if found is None and isinstance(label, float) and label.is_integer():
        found = index.get(str(int(label)))
    return -100 if found is None else found


class ClassificationTask(Task):
    name = "classification"
    model_type = "classifier"

    def __init__(self) -> None:
        self.classes: list[str] = []

    def select(self, sample: Sample) -> bool:
        return sample.label is not None and not sample.answers

    def prepare(self, train: Sequence[Sample]) -> None:
        if not self.classes:
            self.classes = sorted({str(s.label) for s in train})
            if len(self.classes) < 2:
                raise DataError(
                    f"classification: the training data (data.train) has {len(self.classes)} distinct label(s) "
                    f"({', '.join(repr(c) for c in self.classes)}); a classifier needs at least 2"
                )

    def model_overrides(self) -> dict[str, Any]:
        return {"num_outputs": len(self.classes)}

    def targets_known(self, samples: Sequence[Sample]) -> list[tuple[str, bool, str] | None]:
        index = {c: i for i, c in enumerate(self.classes)}
        return [("classes", _class_index(s.label, index) >= 0, str(s.label)) if self.select(s) else None for s in samples]

    def state(self) -> dict[str, Any]:
        return {"classes": self.classes}

    def load_state(self, state: dict[str, Any]) -> None:
        self.classes = list(state.get("classes", self.classes))

    def targets(self, samples: Sequence[Sample]) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor([_class_index(s.label, index) for s in samples])

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        labels = self.targets(batch["samples"]).to(batch_device(batch))
        out = model(batch, labels)
        acc = (out.logits.argmax(-1) == labels).float().mean()
        return StepOutput(out.loss, {"acc": acc.detach()})

    def _outside_classes(self, samples: Sequence[Sample]) -> tuple[int, int, str, str]:
        """(samples whose label the model has no class for, samples with a label, examples of the
        outside labels, the classes), from :meth:`targets_known`."""
        verdicts = [v for v in self.targets_known(samples) if v is not None]
        outside = Counter(label for _, known, label in verdicts if not known)
        examples = ", ".join(repr(label) for label, _ in outside.most_common(5))
        classes = ", ".join(map(repr, self.classes[:10])) + (" ..." if len(self.classes) > 10 else "")
        return sum(outside.values()), len(verdicts), examples, classes

    def check_eval_targets(self, samples: Sequence[Sample], where: str) -> None:
        """Refuse samples none of whose labels the model has a class for (a relabelled file, 'true' for
        '1'): every one would count as wrong. Called before any work (before training, for its val/test)."""
        n, labelled, examples, classes = self._outside_classes(samples)
        if n and n == labelled:
            raise DataError(
                f"classification: none of the {n} {where} samples has a label among the model's classes ({classes}); "
                f"their labels are {examples}: map them to the classes the model is trained with"
            )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        outside, _, examples, classes = self._outside_classes(samples)
        if outside:  # they can only count as wrong
            log.warning("classification: %d of %d samples have labels outside the model's classes (%s), e.g. %s; they count as wrong",
                        outside, len(samples), classes, examples)
        truth: list[int] = []
        pred: list[int] = []
        for b in make_loader(samples, True):
            batch = to_device(b, device)
            pred += model(batch).logits.argmax(-1).tolist()
            truth += self.targets(b["samples"]).tolist()
        scores = classification_scores(truth, pred, zero_division=0)
        return EvalResult(dict(scores), {"classes": self.classes, "confusion": confusion_matrix(truth, pred, len(self.classes)), "outside_classes": outside})
