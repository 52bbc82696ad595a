"""``POST /v1/chat`` plumbing: a JSON conversation to a checked prompt, and the model's tokens to SSE events.

Why apart from :mod:`polymodal.serve.app`: an answer is produced token by token on the server's single
model thread (the one the micro-batchers share, so a chat never runs beside another forward pass),
while the event loop sends each delta as it comes. The bridge below carries deltas from that thread
to the response through a queue, and tells the thread to stop between tokens when the client goes away
or the request times out, so an abandoned answer does not hold the model.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

from torch import Tensor

from polymodal.api import Processors
from polymodal.chat import ChatPrompt, prepare_prompt
from polymodal.serve import guards
from polymodal.serve.errors import ApiError
from polymodal.serve.schemas import ChatRequest
from polymodal.serve.settings import ServeSettings

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "chat_prompt", "deltas", "sse"]

DEFAULT_MAX_NEW_TOKENS = 64  # an answer's length when the request does not say


def chat_prompt(req: ChatRequest, processors: Processors, settings: ServeSettings) -> ChatPrompt:
    """Check every field (422 naming it), decode the images, and lay out / trim the prompt."""
    if not req.messages:
        raise ApiError(422, "invalid_input", "messages: the conversation is empty; give at least one user message")
    if len(req.messages) > settings.max_texts:
        raise ApiError(422, "invalid_input", f"messages: at most {settings.max_texts} messages per request, got {len(req.messages)}")
    if len(req.images) > settings.max_chat_images:
        raise ApiError(422, "invalid_input", f"images: at most {settings.max_chat_images} images per conversation, got {len(req.images)}")
    if req.max_new_tokens is not None and req.max_new_tokens > settings.max_new_tokens:
        raise ApiError(422, "invalid_input", f"max_new_tokens: at most {settings.max_new_tokens}, got {req.max_new_tokens}")
    max_new_tokens = req.max_new_tokens or min(DEFAULT_MAX_NEW_TOKENS, settings.max_new_tokens)
    turns = [(m.role, _content(m.role, m.content, f"messages[{i}].content", settings)) for i, m in enumerate(req.messages)]
    pixels: list[Tensor] = [processors.image(guards.decode_base64_image(v, f"images[{i}]", settings)) for i, v in enumerate(req.images)]
    return prepare_prompt(processors, turns, pixels, max_new_tokens, where="messages")


def _content(role: str, text: str, field: str, settings: ServeSettings) -> str:
    """A user message must say something; an earlier answer may be empty (the model said nothing)."""
    if role == "assistant" and not text.strip():
        return ""
    return guards.check_text(text, field, settings)


async def deltas(executor: Executor, produce: Callable[[Callable[[], bool]], Iterator[str]]) -> AsyncIterator[str]:
    """The deltas ``produce(stop)`` yields on ``executor``'s thread, as they come; closing this iterator
    (client gone, timeout) sets ``stop``, which the producer polls between tokens."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(kind: str, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is gone (server shutting down): nobody is listening
            stop.set()

    def work() -> None:
        try:
            for delta in produce(stop.is_set):
                put("delta", delta)
                if stop.is_set():
                    break
            put("end", None)
        except BaseException as e:  # noqa: BLE001 - handed to the request, which maps or logs it
            put("error", e)

    loop.run_in_executor(executor, work)
    try:
        while True:
            kind, value = await queue.get()
            if kind == "delta":
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
