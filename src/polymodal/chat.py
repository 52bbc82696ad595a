"""Chatting with an assistant (mllm) checkpoint: conversation state, context-window trimming, streamed text.

    from polymodal.api import load_model
    from polymodal.chat import ChatSession

    session = ChatSession(*load_model("runs/assistant"))
    for delta in session.ask("<image>\\nWhat is in the picture?", images=["scene.png"]):
        print(delta, end="", flush=True)
    print("".join(session.ask("And what color is it?")))   # the image stays in the conversation

Why a module of its own: the terminal (``polymodal chat``) and the server (``POST /v1/chat``) need the
same rules, so they live here once:

* **Markers and images agree.** Each ``<image>`` marker in a user message takes exactly one image, in
  order; a mismatch is a :class:`~polymodal.errors.DataError` naming both counts. The library never
  guesses where an image goes (the CLI and the web page prepend a marker for the user, and say so).
* **The context window is respected.** When the conversation (plus room for ``max_new_tokens``) no
  longer fits, the oldest complete rounds (a user turn and its answer) are dropped, with their images,
  and this is logged; when the newest question alone leaves no room to answer, it is an error.
* **Text streams correctly.** Deltas come from decoding *all* the ids so far and yielding the new
  suffix, so a character spread over several byte-level BPE tokens comes out whole, never as U+FFFD
  halves, and the deltas always concatenate to the reply.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from polymodal.api import ImageInput, Processors
from polymodal.data.chat import IMAGE_MARKER
from polymodal.errors import DataError
from polymodal.predict import WrongModelType

__all__ = ["IMAGE_MARKER", "ChatPrompt", "ChatSession", "prepare_prompt", "require_assistant", "stream_reply"]

log = logging.getLogger("polymodal.chat")

Turn = tuple[str, str]
ROLES = ("user", "assistant")
_HELD = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence: wait for the next token


def require_assistant(model_type: str | None, processors: Processors, what: str = "chat") -> None:
    """Raise :class:`WrongModelType` unless the processors carry an assistant's chat encoder."""
    if processors.chat is None:
        source = processors.source or "the model"
        raise WrongModelType(
            f"{what} needs an assistant (a multimodal LLM: a run trained with train.task: mllm), "
            f"but {source} holds a {model_type or processors.model_type or 'unknown'!r} model"
        )


def check_turns(turns: Sequence[Turn], where: str = "messages") -> None:
    """Turns alternate user/assistant, start with the user and end with the user (a question to answer)."""
    roles = [r for r, _ in turns]
    if not roles:
        raise DataError(f"{where}: the conversation is empty; give at least one user message")
    for k, role in enumerate(roles):
        want = ROLES[k % 2]
        if role != want:
            raise DataError(f"{where}[{k}]: expected role {want!r} (turns alternate user/assistant, starting with the user), got {role!r}")
    if roles[-1] != "user":
        raise DataError(f"{where}: the last message must be the user's question, got {roles[-1]!r}")


def count_markers(turns: Sequence[Turn]) -> int:
    return sum(text.count(IMAGE_MARKER) for role, text in turns if role == "user")


def check_images(turns: Sequence[Turn], n_images: int, where: str = "messages") -> None:
    """Exactly one image per ``<image>`` marker in the user turns."""
    markers = count_markers(turns)
    if markers != n_images:
        hint = (f"put an {IMAGE_MARKER} marker in the message where each image goes" if n_images > markers
                else f"attach one image per {IMAGE_MARKER} marker, or remove the extra markers")
        raise DataError(f"{where}: the user messages hold {markers} {IMAGE_MARKER} marker(s) but {n_images} image(s) were given; {hint}")


@dataclass
class ChatPrompt:
    """What the model reads for one answer: the prompt ids, its images, and what was trimmed to fit."""

    ids: list[int]
    pixels: Tensor | None  # [N, 3, H, W], one per marker kept, in order
    dropped_rounds: int
    max_new_tokens: int  # what fits after the prompt (at most the asked-for number)


def prepare_prompt(
    processors: Processors,
    turns: Sequence[Turn],
    pixels: Sequence[Tensor],
    max_new_tokens: int,
    where: str = "messages",
) -> ChatPrompt:
    """Validate ``turns`` against ``pixels`` (one ``[3, H, W]`` per marker) and trim the oldest rounds to fit.

    The prompt plus ``max_new_tokens`` must fit the context window; rounds are dropped oldest first
    (each with its images) until it does. The newest question is never dropped: if it fits but leaves
    less than ``max_new_tokens`` of room, the answer gets what room there is; if it leaves none, this
    raises a :class:`DataError`.
    """
    check_turns(turns, where)
    check_images(turns, len(pixels), where)
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    chat = processors.chat
    window = int(chat.max_length)
    turns, pixels = list(turns), list(pixels)
    dropped = 0
    while True:
        ids = _prompt_ids(chat, turns)
        if ids is not None and len(ids) + max_new_tokens <= window:
            break
        if len(turns) == 1:  # the newest question alone
            if ids is None:
                need = len(_prompt_ids(chat, turns, check=False) or [])
                raise DataError(
                    f"{where}: the newest question takes {need} tokens (each image takes {chat.tokens_per_image}) but the "
                    f"context window is {window}: no room to answer; shorten it or use fewer images"
                )
            break
        gone = count_markers(turns[:2])
        turns, pixels, dropped = turns[2:], pixels[gone:], dropped + 1
    if dropped:
        log.warning("dropped %d earlier round%s to fit the %d-token window", dropped, "" if dropped == 1 else "s", window)
    room = min(max_new_tokens, window - len(ids))
    stacked = torch.stack(pixels) if pixels else None
    return ChatPrompt(ids, stacked, dropped, room)


def _prompt_ids(chat: Any, turns: Sequence[Turn], check: bool = True) -> list[int] | None:
    """The prompt ids, or None when they do not fit the window (the encoder refuses such a prompt)."""
    try:
        ids, _ = chat.prompt(turns)
        return list(ids)
    except DataError:
        if check:
            return None
        unbounded = copy.copy(chat)  # measure only: a copy without the window (the shared encoder is untouched)
        unbounded.max_length = 1 << 30
        return list(unbounded.prompt(turns)[0])


def stream_reply(
    model: nn.Module,
    processors: Processors,
    prompt: ChatPrompt,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    stop: Callable[[], bool] | None = None,
) -> Iterator[str]:
    """Text deltas of the model's answer to ``prompt``; they concatenate to the decoded reply.

    ``stop`` is polled between tokens (a client that went away, a timeout) and ends the answer early.
    """
    chat = processors.chat
    device = next(model.parameters()).device
    pixels = prompt.pixels.to(device) if prompt.pixels is not None else None
    ids: list[int] = []
    shown = ""
    steps = model.stream([prompt.ids], pixels, max_new_tokens=prompt.max_new_tokens, temperature=temperature, top_p=top_p, generator=generator)
    for step in steps:
        token = step[0]
        if token is None or (stop is not None and stop()):
            break
        ids.append(token)
        text = chat.decode(ids)
        if text.endswith(_HELD) or not text.startswith(shown):
            continue  # an incomplete character, or a revision of what was shown: wait for more tokens
        if len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    final = chat.decode(ids)
    if final.startswith(shown) and len(final) > len(shown):  # a character held back at the very end
        yield final[len(shown):]


class ChatSession:
    """One conversation with an assistant: the turns so far, their images, and the generation settings.

    ``ask`` streams the answer; the user turn and the answer are recorded once the stream ends (also
    when the caller stops reading early: what was shown is what the assistant said).
    """

    def __init__(
        self,
        model: nn.Module,
        processors: Processors,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> None:
        from polymodal.predict import model_type_of

        require_assistant(model_type_of(model, processors), processors, "a chat session")
        self.model, self.processors = model.eval(), processors
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed) if seed is not None else None
        self.turns: list[Turn] = []
        self.pixels: list[Tensor] = []  # one per marker in self.turns, in order
        self.dropped_rounds = 0  # by the last ask

    @property
    def window(self) -> int:
        return int(self.processors.chat.max_length)

    def reset(self) -> None:
        """Forget the conversation and its images."""
        self.turns, self.pixels, self.dropped_rounds = [], [], 0

    def ask(
        self,
        text: str,
        images: Sequence[ImageInput] = (),
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> Iterator[str]:
        """Stream the answer to ``text`` (with one image per ``<image>`` marker in it) as text deltas.

        Errors (markers and images disagree, an unreadable image, the question does not fit the window)
        are raised by the call itself, before the model runs and before anything is recorded.
        """
        if not text or not text.strip():
            raise DataError("ask: the message is empty; type a question")
        markers = text.count(IMAGE_MARKER)
        if markers != len(images):
            raise DataError(
                f"ask: the message holds {markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s) were given; "
                f"each image needs an {IMAGE_MARKER} marker where it goes in the message"
            )
        new = [self.processors.image(self.processors.load_image(im)) for im in images]
        turns = [*self.turns, ("user", text)]
        prompt = prepare_prompt(self.processors, turns, self.pixels + new, max_new_tokens or self.max_new_tokens, where="conversation")
        return self._answer(turns, self.pixels + new, prompt,
                            self.temperature if temperature is None else temperature, self.top_p if top_p is None else top_p)

    def _answer(self, turns: list[Turn], pixels: list[Tensor], prompt: ChatPrompt, temperature: float, top_p: float) -> Iterator[str]:
        kept = len(turns) - 2 * prompt.dropped_rounds
        gone_images = count_markers(turns[: 2 * prompt.dropped_rounds])
        self.dropped_rounds = prompt.dropped_rounds
        reply: list[str] = []
        try:
            for delta in stream_reply(self.model, self.processors, prompt, temperature, top_p, self.generator):
                reply.append(delta)
                yield delta
        finally:  # the trimmed conversation is what the model saw; later questions build on it
            self.turns = [*turns[len(turns) - kept:], ("assistant", "".join(reply))]
            self.pixels = pixels[gone_images:]
