"""Training and evaluating a multimodal LLM on conversations, captions and VQA questions.

Training: every sample becomes chat turns (:func:`polymodal.data.chat.as_conversation`) and the loss
is the next-token cross-entropy on the assistant's tokens only.

Evaluation scores *generated text*, the way an assistant is used:

* a VQA question is asked with LLaVA-1.5's short-answer instruction; the **answer** is the generated
  text up to its first line break, stripped of surrounding whitespace and a final period, then
  scored with the official VQA accuracy (whose normalisation maps "Two." and "two" to "2");
* each distinct image of a caption sample is asked to be described; the generated text is scored
  against all of that image's references (BLEU, ROUGE-L, CIDEr-D; METEOR with Java);
* a conversation is scored by its mean assistant-token loss (teacher-forced), and each of its
  assistant turns by exact match of the generated reply given the true history.

``blind`` removes every image (and its ``<image>`` marker) from training and evaluation: the same
recipe then trains a text-only assistant, the baseline an assistant must beat to show that it looks.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from polymodal.data.chat import (
    IMAGE_MARKER,
    ChatEncoder,
    as_conversation,
    caption_turns,
    question_turns,
)
from polymodal.data.dataset import open_or_skip
from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.metrics import answer_accuracy, caption_scores
from polymodal.metrics.vqa import warn_about_few_answers
from polymodal.metrics.meteor import meteor_available
from polymodal.metrics.vqa import normalize_answer
from polymodal.models.factory import BuildContext
from polymodal.tasks.base import EvalResult, LoaderFactory, StepOutput, Task, group_by_image, is_caption

log = logging.getLogger(__name__)
_MARKER = re.compile(re.escape(IMAGE_MARKER) + r"\n?")


def extract_answer(text: str) -> str:
    """The short answer in a generated reply: its first line, trimmed, without a final period."""
    first = text.strip().split("\n", 1)[0].strip()
    return first[:-1].rstrip() if first.endswith(".") else first


def without_images(turns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(role, _MARKER.sub("", text).strip()) for role, text in turns]


@dataclass
class ConversationItem:
    sample: Sample
    input_ids: list[int]
    labels: list[int]
    images: Tensor | None
    dropped_rounds: int


def load_images(sample: Sample, count: int, processor: Any, rng: np.random.Generator) -> Tensor | None | bool:
    """``[count, 3, H, W]`` for the sample's first ``count`` images; None for none; False when one is unreadable."""
    if count == 0:
        return None
    paths = ([sample] if sample.has_image else []) + [Sample(sample_id=sample.sample_id, origin=sample.origin, image_path=p) for p in sample.more_images]
    pixels = []
    for holder in paths[:count]:
        img = open_or_skip(holder, processor)
        if img is None:
            return False
        pixels.append(processor(img, rng))
    return torch.stack(pixels)


class ConversationDataset(Dataset):
    def __init__(self, samples: Sequence[Sample], encoder: ChatEncoder, processor: Any, seed: int = 0, blind: bool = False) -> None:
        self.samples, self.encoder, self.processor, self.seed, self.blind = samples, encoder, processor, seed, blind

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> ConversationItem | None:
        sample = self.samples[index]
        turns = as_conversation(sample)
        if turns is None:
            return None
        if self.blind:
            turns = without_images(turns)
        try:
            enc = self.encoder.encode(turns, sample.origin or sample.sample_id)
        except DataError as e:
            if self.encoder.truncation == "error":
                raise
            log.warning("skipping %s", e)
            return None
        images = load_images(sample, enc.num_images, self.processor, np.random.default_rng([self.seed, index]))
        if images is False:
            return None
        return ConversationItem(sample, enc.input_ids, enc.labels, images, enc.dropped_rounds)  # type: ignore[arg-type]


class ConversationCollator:
    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: list[ConversationItem | None]) -> dict[str, Any]:
        kept = [it for it in items if it is not None]
        batch: dict[str, Any] = {"num_skipped": len(items) - len(kept), "samples": [it.sample for it in kept]}
        if not kept:
            return batch
        width = max(len(it.input_ids) for it in kept)
        ids = torch.full((len(kept), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros(len(kept), width, dtype=torch.long)
        for i, it in enumerate(kept):
            n = len(it.input_ids)
            ids[i, :n] = torch.tensor(it.input_ids)
            labels[i, :n] = torch.tensor(it.labels)
            mask[i, :n] = 1
        batch |= {"input_ids": ids, "labels": labels, "attention_mask": mask, "dropped_rounds": sum(it.dropped_rounds for it in kept)}
        images = [it.images for it in kept if it.images is not None]
        if images:
            batch["images"] = torch.cat(images)
        return batch


class MLLMTask(Task):
    name = "mllm"
    model_type = "mllm"
    scores_captions = True

    def __init__(self, tokenizer: Any, blind: bool = False, max_new_tokens: int = 24, eval_batch_size: int = 32) -> None:
        self.tokenizer = tokenizer
        self.blind = blind
        self.max_new_tokens = max_new_tokens
        self.eval_batch_size = eval_batch_size
        self.encoder: ChatEncoder | None = None
        self.processor: Any = None
        self.dropped_rounds = 0

    def select(self, sample: Sample) -> bool:
        return as_conversation(sample) is not None

    def context(self, tokenizer: Any) -> BuildContext:
        return BuildContext(lm_tokenizer=self.tokenizer)

    def attach(self, model: nn.Module, model_config: Any, eval_processor: Any) -> None:
        """Learn the prompt layout from the built model (image tokens, context) and its config."""
        from polymodal.models.mllm_build import chat_encoder

        self.encoder = chat_encoder(model, self.tokenizer, model_config.system_prompt, model_config.truncation)
        self.processor = eval_processor

    def _encoder(self) -> ChatEncoder:
        if self.encoder is None:
            raise RuntimeError("MLLMTask.attach(model, ...) must be called before training or evaluation")
        return self.encoder

    def train_dataset(self, items: Sequence[Any], processor: Any, flip_prob: float, seed: int) -> tuple[Any, Any]:
        return ConversationDataset(items, self._encoder(), processor, seed, self.blind), ConversationCollator(self._encoder().tokenizer.pad_token_id)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(batch["input_ids"], batch["attention_mask"], batch.get("images"), batch["labels"])
        self.dropped_rounds += int(batch.get("dropped_rounds", 0))
        logs = {"assistant_tokens": float(out.tokens), "dropped_rounds_total": float(self.dropped_rounds)}
        return StepOutput(out.loss, logs, weight=float(out.tokens), loss_over_ranks=out.loss)  # over every rank's assistant tokens

    # ------------------------------------------------------------------ evaluation
    def _prompts(self, asked: Sequence[tuple[Sample, list[tuple[str, str]]]]) -> list[tuple[Sample, list[int], Tensor | None]]:
        """Each (sample, turns ending with a user turn) as prompt ids with the images its markers take."""
        enc = self._encoder()
        out = []
        for i, (s, turns) in enumerate(asked):
            if self.blind:
                turns = without_images(turns)
            ids, n = enc.prompt(turns, s.origin or s.sample_id)
            images = load_images(s, n, self.processor, np.random.default_rng(i))
            if images is False:
                raise DataError(f"mllm evaluation: the image of {s.origin or s.sample_id} cannot be read; run 'polymodal data check' on the data")
            out.append((s, ids, images))  # type: ignore[arg-type]
        return out

    def generate(self, model: nn.Module, prompts: list[tuple[Sample, list[int], Tensor | None]], device: torch.device) -> list[str]:
        """Generated replies, in order, batched (prompts sorted by length waste less padding)."""
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i][1]))
        replies: dict[int, str] = {}
        for start in range(0, len(order), self.eval_batch_size):
            chunk = order[start : start + self.eval_batch_size]
            images = [prompts[i][2] for i in chunk if prompts[i][2] is not None]
            pixels = torch.cat(images).to(device) if images else None
            out = model.generate([prompts[i][1] for i in chunk], pixels, max_new_tokens=self.max_new_tokens)
            for i, seq in zip(chunk, out.sequences):
                replies[i] = self._encoder().decode(seq)
        return [replies[i] for i in range(len(prompts))]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        questions = [s for s in samples if s.answers and s.has_image and s.text and not s.conversation]
        captions = [s for s in samples if is_caption(s) and not s.conversation]
        dialogues = [s for s in samples if s.conversation]
        metrics: dict[str, float] = {}
        details: dict[str, Any] = {}  # per sub-task, as a multi-task evaluation nests them (the report reads both)
        if questions:
            m, details["vqa"] = self._vqa(model, questions, device)
            metrics |= m
        if captions:
            m, details["captioning"] = self._captions(model, captions, device)
            metrics |= m
        if dialogues:
            metrics |= self._dialogues(model, dialogues, device)
        if not metrics:
            raise DataError("mllm evaluation: no VQA questions, captions or conversations among the samples")
        return EvalResult(metrics, details)

    def _vqa(self, model: nn.Module, questions: Sequence[Sample], device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
        replies = self.generate(model, self._prompts([(s, question_turns(s.text or "")) for s in questions]), device)
        warn_about_few_answers((s.answers for s in questions), "mllm vqa evaluation")
        by_family: dict[str, list[float]] = defaultdict(list)
        scores = []
        for s, r in zip(questions, replies):
            acc = answer_accuracy(extract_answer(r), list(s.answers))
            scores.append(acc)
            by_family[str(s.meta.get("family") or s.meta.get("question_type") or "all")].append(acc)
        examples = [
            {"image": str(s.image_path), "question": s.text, "reply": r, "predicted": extract_answer(r), "answers": list(dict.fromkeys(s.answers)),
             "correct": acc >= 1.0}
            for s, r, acc in list(zip(questions, replies, scores))[:12]
        ]
        metrics = {"vqa_accuracy": sum(scores) / len(scores)}
        return metrics, {"by_family": {f: sum(v) / len(v) for f, v in sorted(by_family.items())}, "questions": len(questions), "examples": examples}

    def _captions(self, model: nn.Module, captions: Sequence[Sample], device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
        groups = group_by_image(captions)
        firsts = [g[0] for g in groups.values()]
        replies = self.generate(model, self._prompts([(s, caption_turns()) for s in firsts]), device)
        refs = {s.image_key: [x.text or "" for x in groups[s.image_key]] for s in firsts}
        cands = {s.image_key: r for s, r in zip(firsts, replies)}
        wanted = ["bleu", "rouge", "cider"] + (["meteor"] if meteor_available() else [])
        scores = caption_scores(refs, cands, wanted)
        examples = [{"image": str(s.image_path), "caption": cands[s.image_key], "references": refs[s.image_key]} for s in firsts[:8]]
        return {f"caption_{k}": float(v) for k, v in scores.items()}, {"images": len(firsts), "examples": examples}

    def _dialogues(self, model: nn.Module, dialogues: Sequence[Sample], device: torch.device) -> dict[str, float]:
        """Teacher-forced loss over all assistant tokens, and exact match of each generated reply."""
        dataset = ConversationDataset(dialogues, self._encoder(), self.processor, blind=self.blind)
        loader = DataLoader(dataset, batch_size=self.eval_batch_size, collate_fn=ConversationCollator(self._encoder().tokenizer.pad_token_id))
        total, tokens = 0.0, 0
        for b in loader:
            if not b["samples"]:
                continue
            images = b.get("images")
            out = model(b["input_ids"].to(device), b["attention_mask"].to(device), None if images is None else images.to(device), b["labels"].to(device))
            total += float(out.loss) * int(out.tokens)
            tokens += int(out.tokens)
        asked, expected = [], []
        for s in dialogues:
            conv = list(s.conversation)
            for k in range(1, len(conv), 2):
                asked.append((s, conv[:k]))
                expected.append(conv[k][1])
        replies = self.generate(model, self._prompts(asked), device)
        exact = [normalize_answer(extract_answer(r)) == normalize_answer(extract_answer(e)) for r, e in zip(replies, expected)]
        return {"dialogue_loss": total / max(1, tokens), "dialogue_turn_accuracy": sum(exact) / max(1, len(exact))}
