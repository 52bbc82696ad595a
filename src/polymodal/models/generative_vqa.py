"""Generative VQA: the captioner's decoder answers in words, conditioned on "question: ... answer:".

Unlike the answer classifier it is not limited to answers seen in training. Only the answer tokens
(and the end marker) carry loss: the question conditions the answer but is not itself learned, so
the decoder's capacity goes to answering rather than to modelling questions.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from polymodal.data.tokenizers import TextTokenizer
from polymodal.models.captioner import Captioner, CaptionerOutput

PROMPT = "question: {question} answer:"


class GenerativeVQA(nn.Module):
    def __init__(self, captioner: Captioner, tokenizer: TextTokenizer, max_length: int = 40) -> None:
        super().__init__()
        self.captioner = captioner
        self.tokenizer = tokenizer
        self.max_length = max_length

    def prompts(self, questions: Sequence[str]) -> list[str]:
        return [PROMPT.format(question=q.strip()) for q in questions]

    def training_batch(self, questions: Sequence[str], answers: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Ids and mask of 'prompt + answer', and a label mask that is 1 on the answer and [SEP] only."""
        prompts = self.prompts(questions)
        full = self.tokenizer.encode([f"{p} {a}" for p, a in zip(prompts, answers)], self.max_length)
        prompt_only = self.tokenizer.encode(prompts, self.max_length)
        prompt_len = prompt_only.attention_mask.sum(dim=1) - 1  # without the [SEP] that closes the prompt
        positions = torch.arange(full.input_ids.shape[1]).unsqueeze(0)
        label_mask = (positions >= prompt_len.unsqueeze(1)) & full.attention_mask.bool()
        return full.input_ids, full.attention_mask, label_mask.long()

    def forward(self, images: Tensor, questions: Sequence[str], answers: Sequence[str], *, return_logits: bool = False) -> CaptionerOutput:
        ids, mask, label_mask = self.training_batch(questions, answers)
        device = images.device
        return self.captioner(images, ids.to(device), mask.to(device), label_mask=label_mask.to(device), return_logits=return_logits)

    @torch.no_grad()
    def answer(self, images: Tensor, questions: Sequence[str], max_new_tokens: int = 6, **search: object) -> list[str]:
        """Generated answers as text (greedy by default; any captioner search option applies)."""
        enc = self.tokenizer.encode(self.prompts(questions), self.max_length)
        out = self.captioner.generate(
            images, max_length=max_new_tokens, prompt_ids=enc.input_ids.to(images.device), prompt_mask=enc.attention_mask.to(images.device), **search
        )
        return [self.tokenizer.decode(seq).strip() for seq in out.sequences]
