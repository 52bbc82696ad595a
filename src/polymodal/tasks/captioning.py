"""Captioning: teacher-forced LM training, generated captions scored by pycocoevalcap-equal metrics.

Evaluation generates one caption per distinct image and scores it against all of that image's
references (CIDEr-D, BLEU, ROUGE-L; METEOR too when Java is available).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from polymodal.data.sample import Sample
from polymodal.metrics import caption_scores
from polymodal.metrics.meteor import meteor_available
from polymodal.tasks.base import EvalResult, LoaderFactory, StepOutput, Task, caption_rejection, group_by_image, is_caption


class CaptioningTask(Task):
    name = "captioning"
    model_type = "captioner"
    scores_captions = True

    def __init__(self, tokenizer: Any, max_new_tokens: int = 30, method: str = "greedy", beam_size: int = 3) -> None:
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.method = method
        self.beam_size = beam_size

    def select(self, sample: Sample) -> bool:
        return is_caption(sample)

    def rejection(self, sample: Sample) -> str | None:
        return caption_rejection(sample)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        out = model(batch["image"], batch["text_ids"], batch["text_mask"])
        hf_tokens = getattr(out, "rank_tokens", None)
        if hf_tokens is not None:  # a Hugging Face captioner: the mean over this rank's labelled tokens
            return StepOutput(out.loss, weight=hf_tokens)
        # polymodal's captioner: the mean over every token after BOS, of every rank
        return StepOutput(out.loss, weight=int(batch["text_mask"][:, 1:].sum()), loss_over_ranks=out.loss)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, samples: Sequence[Sample], make_loader: LoaderFactory, device: torch.device) -> EvalResult:
        groups = group_by_image(samples)
        refs = {key: [s.text or "" for s in group] for key, group in groups.items()}
        first = {key: group[0] for key, group in groups.items()}
        cands: dict[str, str] = {}
        for b in make_loader(list(first.values()), True):
            out = model.generate(b["image"].to(device), max_length=self.max_new_tokens, method=self.method, beam_size=self.beam_size)
            for s, seq in zip(b["samples"], out.sequences):
                cands[s.image_key] = self.tokenizer.decode(seq)
        refs = {k: v for k, v in refs.items() if k in cands}
        wanted = ["bleu", "rouge", "cider"] + (["meteor"] if meteor_available() else [])
        scores = caption_scores(refs, cands, wanted)
        examples = [{"image": str(first[k].image_path), "caption": cands[k], "references": refs[k]} for k in list(cands)[:8]]
        return EvalResult(dict(scores), {"images": len(cands), "examples": examples})
