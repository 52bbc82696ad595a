"""VQA as answer classification: vocabulary from the training answers, official accuracy at evaluation.

Accuracy is reported overall, per answer type and per question family (the world's ``family`` meta,
or VQA v2's question type), with the official leave-one-out formula over the human answers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import torch
from torch import nn

from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.data.tokenizers import TextTokenizer
from polymodal.metrics import answer_accuracy
from polymodal.metrics.vqa import warn_about_few_answers
from polymodal.metrics.vqa import normalize_answer
from polymodal.models.factory import BuildContext
from polymodal.models.vqa import AnswerVocab
from polymodal.tasks.base import EvalResult, LoaderFactory, StepOutput, Task


class VQATask(Task):
    name = "vqa"
    model_type = "vqa"

    def __init__(self, max_answers: int = 3129) -> None:
        self.max_answers = max_answers
        self.vocab: AnswerVocab | None = None

    def select(self, sample: Sample) -> bool:
        return sample.has_media and bool(sample.text) and bool(sample.answers)

    def rejection(self, sample: Sample) -> str | None:
        if not sample.answers:
            return None  # a caption or a statement
        return "a question without an image" if not sample.has_media else "answers without a question"

    def prepare(self, train: Sequence[Sample]) -> None:
        if self.vocab is None:
            self.vocab = AnswerVocab.build((s.answers for s in train), max_answers=self.max_answers)

    def context(self, tokenizer: TextTokenizer) -> BuildContext:
        return BuildContext(tokenizer=tokenizer, answer_vocab=self.vocab)

    def targets_known(self, samples: Sequence[Sample]) -> list[tuple[str, bool, str] | None]:
        """A question is covered when one of its (normalised) answers is in the vocabulary."""
        if self.vocab is None:
            return [None] * len(samples)
        known = set(self.vocab.answers)
        verdicts: list[tuple[str, bool, str] | None] = []
        for s in samples:
            answers = [normalize_answer(a) for a in s.answers] if self.select(s) else []
            verdicts.append(("answers", any(a in known for a in answers), answers[0]) if answers else None)
        return verdicts

    def state(self) -> dict[str, Any]:
        return {"answer_vocab": self.vocab.to_dict()} if self.vocab else {}

    def load_state(self, state: dict[str, Any]) -> None:
        if "answer_vocab" in state:
            self.vocab = AnswerVocab.from_dict(state["answer_vocab"])

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        answers = batch["answers"]
        inner = getattr(model, "module", model)  # under DDP; a compiled model forwards attributes to its own
        if getattr(inner, "takes_answer_targets", False):
            # string work done here, outside the model: under torch.compile it would break the graph
            answers = inner.vocab.targets(answers)
        out = model(batch["image"], batch["text_ids"], batch["text_mask"], answers=answers)
        # a generative answerer (BLIP) averages over this rank's answer tokens; a classifier over questions
        return StepOutput(out.loss, weight=getattr(out, "rank_tokens", None))

    @torch.no_grad()
    def predict(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> list[str]:
        preds: list[str] = []
        for b in make_loader(samples, True):
            preds += model.answer(b["image"].to(device), b["text_ids"].to(device), b["text_mask"].to(device))
        return preds

    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        preds = self.predict(model, samples, make_loader, device)
        if len(preds) != len(samples):
            raise DataError(f"vqa evaluation: {len(samples) - len(preds)} questions were skipped (unreadable images); run 'polymodal data check' on the data")
        warn_about_few_answers((s.answers for s in samples), "vqa evaluation")
        by_family: dict[str, list[float]] = defaultdict(list)
        by_type: dict[str, list[float]] = defaultdict(list)
        scores = []
        for s, p in zip(samples, preds):
            acc = answer_accuracy(p, list(s.answers))
            scores.append(acc)
            by_family[str(s.meta.get("family") or s.meta.get("question_type") or "all")].append(acc)
            by_type[str(s.meta.get("answer_type") or "unknown")].append(acc)
        metrics = {"accuracy": sum(scores) / max(1, len(scores))}
        metrics |= {f"acc_{t}": sum(v) / len(v) for t, v in sorted(by_type.items())}
        examples = [
            {"image": str(s.image_path), "question": s.text, "predicted": p, "answers": list(dict.fromkeys(s.answers)), "correct": answer_accuracy(p, list(s.answers)) >= 1.0}
            for s, p in list(zip(samples, preds))[:12]
        ]
        details = {"by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())}, "examples": examples, "questions": len(samples)}
        return EvalResult(metrics, details)
