"""Conversations as token ids for a multimodal LLM: the chat layout, image tokens and assistant-only labels.

The layout is LLaVA-1.5's (Vicuna v1), which works with any tokenizer because it needs no special
tokens beyond end-of-sequence::

    [bos] SYSTEM USER: <image x N>\\nWhat is this? ASSISTANT: a red cube[eos] USER: ... ASSISTANT: ...[eos]

Each round is tokenised piece by piece - prompt, then answer - so labels can be exact: the answer's
tokens and its end-of-sequence are learned, the rest (system, user turns, image tokens, the
``ASSISTANT:`` cue) is ``-100``. Each ``<image>`` marker becomes ``tokens_per_image`` copies of the
image token, which the model overwrites with that image's features.

A conversation longer than the context window loses its last *rounds* (``truncation: drop_turns``,
counted and logged by the task), never part of a round and never part of an image; when even the
first round does not fit, nothing can be learned from it and it is an error naming the sample.

Samples that are not conversations train the same model: a caption becomes "describe the image",
a VQA question becomes a short-answer question (the answer most annotators gave), with LLaVA-1.5's
instructions, which are also the prompts :mod:`polymodal.tasks.mllm` evaluates with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.losses.mlm import IGNORE_INDEX

IMAGE_MARKER = "<image>"
CAPTION_PROMPT = "Describe the image briefly."
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."

Turns = Sequence[tuple[str, str]]


def caption_turns(caption: str | None = None) -> list[tuple[str, str]]:
    turns = [("user", f"{IMAGE_MARKER}\n{CAPTION_PROMPT}")]
    return turns + ([("assistant", caption)] if caption is not None else [])


def question_turns(question: str, answer: str | None = None) -> list[tuple[str, str]]:
    turns = [("user", f"{IMAGE_MARKER}\n{question}\n{SHORT_ANSWER_PROMPT}")]
    return turns + ([("assistant", answer)] if answer is not None else [])


def majority_answer(answers: Sequence[str]) -> str:
    """The answer most annotators gave (ties: the first given), what a short-answer turn teaches."""
    return Counter(a.strip() for a in answers).most_common(1)[0][0]  # most_common keeps first-seen order on ties


def as_conversation(sample: Sample) -> list[tuple[str, str]] | None:
    """The sample as chat turns: its conversation, a captioning round, a short-answer round, or None."""
    if sample.conversation:
        return list(sample.conversation)
    if not sample.has_image or not sample.text:
        return None
    if sample.answers:
        return question_turns(sample.text, majority_answer(sample.answers))
    if sample.label is None:
        return caption_turns(sample.text)
    return None


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    num_images: int  # images used (markers in the kept rounds)
    dropped_rounds: int = 0


@dataclass(frozen=True)
class ChatFormat:
    system: str = ""
    user: str = "USER:"
    assistant: str = "ASSISTANT:"


class ChatEncoder:
    """Turns conversations into ``input_ids``/``labels`` for one tokenizer and one model's image size."""

    def __init__(
        self,
        tokenizer: Any,
        image_token_id: int,
        tokens_per_image: int,
        max_length: int,
        fmt: ChatFormat | None = None,
        truncation: str = "drop_turns",
    ) -> None:
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.tokens_per_image = tokens_per_image
        self.max_length = max_length
        self.fmt = fmt or ChatFormat()
        self.truncation = truncation
        self.bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
        if tokenizer.eos_token_id is None:
            raise DataError("the language model's tokenizer has no end-of-sequence token; set tokenizer.eos_token in its folder")
        self.eos = int(tokenizer.eos_token_id)

    def _text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _user(self, text: str, first: bool) -> tuple[list[int], int]:
        """A user turn followed by the assistant cue, image markers expanded; and its image count."""
        lead = (self.fmt.system + " ") if first and self.fmt.system else ""
        pieces = f"{lead}{self.fmt.user} {text} {self.fmt.assistant}".split(IMAGE_MARKER)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k:
                ids += [self.image_token_id] * self.tokens_per_image
            ids += self._text(piece)
        return ids, len(pieces) - 1

    def encode(self, turns: Turns, where: str = "conversation") -> EncodedConversation:
        """Training ids and labels; ``turns`` alternate user/assistant and end with the assistant."""
        if len(turns) < 2 or len(turns) % 2 or any(r != ("user" if k % 2 == 0 else "assistant") for k, (r, _) in enumerate(turns)):
            roles = [r for r, _ in turns]
            raise DataError(f"{where}: a training conversation alternates user/assistant turns and ends with the assistant, got {roles}")
        ids, labels, images = list(self.bos), [IGNORE_INDEX] * len(self.bos), 0
        rounds = len(turns) // 2
        for r in range(rounds):
            prompt, answer, n_img = self._round(turns, r)
            if len(ids) + len(prompt) + len(answer) > self.max_length:
                if r == 0 or self.truncation == "error":
                    # this round and every later one, after what is already in (bos and the earlier rounds)
                    need = len(ids) + sum(len(p) + len(a) for p, a, _ in (self._round(turns, k) for k in range(r, rounds if r else 1)))
                    raise DataError(
                        f"{where}: {'the first round' if r == 0 else 'the conversation'} needs {need} "
                        f"tokens (each image takes {self.tokens_per_image}) but the context window is {self.max_length}; "
                        "shorten it, use fewer images, or raise model.max_length up to the language model's window"
                    )
                return EncodedConversation(ids, labels, images, rounds - r)
            ids += prompt + answer
            labels += [IGNORE_INDEX] * len(prompt) + answer
            images += n_img
        return EncodedConversation(ids, labels, images)

    def _round(self, turns: Turns, r: int) -> tuple[list[int], list[int], int]:
        """Round ``r``'s prompt ids (up to the assistant cue), its answer ids (with end-of-sequence) and images."""
        prompt, n_img = self._user(turns[2 * r][1], first=r == 0)
        return prompt, self._text(" " + turns[2 * r + 1][1]) + [self.eos], n_img

    def prompt(self, turns: Turns, where: str = "prompt") -> tuple[list[int], int]:
        """Generation prompt for ``turns`` ending with a user turn: ids up to the assistant cue, and the
        number of images its markers take. Earlier assistant turns are part of the context."""
        roles = [r for r, _ in turns]
        if not turns or len(turns) % 2 == 0 or any(r != ("user" if k % 2 == 0 else "assistant") for k, r in enumerate(roles)):
            raise DataError(f"{where}: a prompt alternates user/assistant turns, starting and ending with a user turn; got roles {roles}")
        ids, images = list(self.bos), 0
        for k, (role, text) in enumerate(turns):
            if role == "user":
                part, n = self._user(text, first=k == 0)
                ids += part
                images += n
            else:
                ids += self._text(" " + text) + [self.eos]
        if len(ids) >= self.max_length:
            raise DataError(f"{where}: the prompt takes {len(ids)} tokens, the context window is {self.max_length}: no room to answer")
        return ids, images

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True)).strip()
