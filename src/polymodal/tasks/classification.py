"""Multimodal classification: labels mapped to indices from the training data, accuracy and macro-F1."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.metrics import classification_scores, confusion_matrix
from polymodal.tasks.base import EvalResult, LoaderFactory, StepOutput, Task, batch_device, to_device


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
        known = set(self.classes)
        return [("classes", str(s.label) in known, str(s.label)) if self.select(s) else None for s in samples]

    def state(self) -> dict[str, Any]:
        return {"classes": self.classes}

    def load_state(self, state: dict[str, Any]) -> None:
        self.classes = list(state.get("classes", self.classes))

    def targets(self, samples: Sequence[Sample]) -> torch.Tensor:
        index = {c: i for i, c in enumerate(self.classes)}
        return torch.tensor([index.get(str(s.label), -100) for s in samples])

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        labels = self.targets(batch["samples"]).to(batch_device(batch))
        out = model(batch, labels)
        acc = (out.logits.argmax(-1) == labels).float().mean()
        return StepOutput(out.loss, {"acc": acc.detach()})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        truth: list[int] = []
        pred: list[int] = []
        for b in make_loader(samples, True):
            batch = to_device(b, device)
            pred += model(batch).logits.argmax(-1).tolist()
            truth += self.targets(b["samples"]).tolist()
        scores = classification_scores(truth, pred, zero_division=0)
        return EvalResult(dict(scores), {"classes": self.classes, "confusion": confusion_matrix(truth, pred, len(self.classes))})
