"""Regression on a sample's numeric label (e.g. CMU-MOSI sentiment in [-3, 3]) with a classifier model.

Sentiment scores get the metrics the MOSI/MOSEI papers report (binary and 7-class accuracy, F1, MAE,
correlation); any other numeric target gets MAE and Pearson correlation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.metrics.classification import mean_absolute_error, pearson_r
from polymodal.tasks.base import EvalResult, LoaderFactory, StepOutput, Task, batch_device, to_device

SENTIMENT_RANGE = (-3.0, 3.0)


def _number(label: Any) -> float | None:
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        return None
    return float(label)


class RegressionTask(Task):
    name = "regression"
    model_type = "classifier"

    def select(self, sample: Sample) -> bool:
        return _number(sample.label) is not None and not sample.answers

    def rejection(self, sample: Sample) -> str | None:
        if sample.label is None or sample.answers:
            return None
        return "a label that is not a number"

    def prepare(self, train: Sequence[Sample]) -> None:
        values = {_number(s.label) for s in train}
        if len(values) < 2:
            raise DataError(f"regression: the training labels (data.train) take {len(values)} distinct value(s); need at least 2")

    def model_overrides(self) -> dict[str, Any]:
        return {"num_outputs": 1, "task": "regression"}

    @staticmethod
    def targets(samples: Sequence[Sample]) -> torch.Tensor:
        return torch.tensor([_number(s.label) for s in samples], dtype=torch.float32)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        labels = self.targets(batch["samples"]).to(batch_device(batch))
        out = model(batch, labels)
        mae = (out.logits.squeeze(-1).detach() - labels).abs().mean()
        return StepOutput(out.loss, {"mae": mae})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        truth: list[float] = []
        pred: list[float] = []
        for b in make_loader(samples, True):
            batch = to_device(b, device)
            pred += model(batch).logits.squeeze(-1).float().tolist()
            truth += self.targets(b["samples"]).tolist()
        lo, hi = SENTIMENT_RANGE
        if truth and all(lo <= t <= hi for t in truth):
            from polymodal.metrics.sentiment import sentiment_scores

            metrics = dict(sentiment_scores(truth, pred))
        else:
            metrics = {"mae": mean_absolute_error(truth, pred), "corr": pearson_r(truth, pred)}
        examples = [{"id": s.sample_id, "truth": t, "pred": p} for s, t, p in list(zip(samples, truth, pred))[:20]]
        return EvalResult(metrics, {"examples": examples})
