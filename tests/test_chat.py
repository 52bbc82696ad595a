"""ChatSession and `polymodal chat`: streamed text equals greedy generation, deltas rebuild the reply (also
across multi-byte characters), markers and images must agree, and long conversations lose their oldest
rounds (logged) while a question that cannot fit is an error."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from polymodal.chat import ChatSession, _prompt_ids, prepare_prompt, stream_reply
from polymodal.errors import DataError
from polymodal.predict import WrongModelType
from tests.cli_runner import run_cli
from tests.mllm_fixtures import Assistant, assistant_fixture  # noqa: F401 - registers the 'assistant' fixture

QUESTION = "<image>\nWhat is in the picture?"


def _greedy(a: Assistant, turns: list[tuple[str, str]], images: list[Any], n: int) -> str:
    """The reference: the encoder's prompt and model.generate, without ChatSession."""
    ids, k = a.processors.chat.prompt(turns)
    assert k == len(images)
    pixels = a.processors.images(images) if images else None
    out = a.model.generate([ids], pixels, max_new_tokens=n, temperature=0.0)
    return str(a.processors.chat.decode(out.sequences[0]))


def test_session_streams_what_greedy_generate_gives(assistant: Assistant) -> None:
    img = assistant.images[0]
    session = ChatSession(assistant.model, assistant.processors, max_new_tokens=12)
    deltas = list(session.ask(QUESTION, images=[img]))
    want = _greedy(assistant, [("user", QUESTION)], [img], 12)
    assert want and len(deltas) > 1
    assert "".join(deltas) == want
    assert session.turns == [("user", QUESTION), ("assistant", want)]
    # the second question sees the first round and its image
    follow = "And what else?"
    got = "".join(session.ask(follow))
    assert got == _greedy(assistant, [("user", QUESTION), ("assistant", want), ("user", follow)], [img], 12)
    assert len(session.pixels) == 1 and session.dropped_rounds == 0
    session.reset()
    assert session.turns == [] and session.pixels == []


class _Scripted(torch.nn.Module):
    """A stand-in model whose stream yields a fixed token sequence, one id per step."""

    def __init__(self, ids: Sequence[int]) -> None:
        super().__init__()
        self.ids = list(ids)
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def stream(self, prompts: Any, images: Any = None, **_: Any) -> Iterator[list[int | None]]:
        for t in self.ids:
            yield [t]
        yield [None]


def test_deltas_rebuild_multibyte_text_without_replacement_chars(assistant: Assistant) -> None:
    chat = assistant.processors.chat
    text = "héllo wörld → ünïcode 🙂 done"
    ids = list(chat.tokenizer.encode(text, add_special_tokens=False))
    pieces = [chat.tokenizer.decode([i]) for i in ids]
    assert any("\ufffd" in p for p in pieces), "the tokenizer should split some character over several tokens"
    prompt = prepare_prompt(assistant.processors, [("user", "hi")], [], len(ids) + 1)
    deltas = list(stream_reply(_Scripted(ids), assistant.processors, prompt))
    assert "".join(deltas) == chat.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)


def test_markers_and_images_must_agree(assistant: Assistant) -> None:
    img = assistant.images[0]
    session = ChatSession(assistant.model, assistant.processors)
    with pytest.raises(DataError, match=r"0 <image> marker\(s\) but 1 image"):
        session.ask("What is this?", images=[img])
    with pytest.raises(DataError, match=r"2 <image> marker\(s\) but 1 image"):
        session.ask("<image> and <image>?", images=[img])
    with pytest.raises(DataError, match=r"1 <image> marker\(s\) but 0 image"):
        session.ask(QUESTION)
    assert session.turns == [] and session.pixels == []  # nothing recorded
    with pytest.raises(DataError, match=r"messages\[1\]: expected role 'assistant'"):
        prepare_prompt(assistant.processors, [("user", "a"), ("user", "b")], [], 4)


def test_long_conversation_drops_oldest_rounds_and_logs(assistant: Assistant, caplog: pytest.LogCaptureFixture) -> None:
    proc = assistant.processors
    window = proc.chat.max_length
    img = proc.image(proc.load_image(assistant.images[0]))
    long = " ".join(["the red cube is left of the blue sphere"] * 3)
    turns = [("user", f"<image>\n{long}"), ("assistant", long), ("user", long), ("assistant", long), ("user", "what color is the cube?")]
    assert len(_prompt_ids(proc.chat, turns, check=False) or []) > window, "the test needs a conversation past the window"
    with caplog.at_level(logging.WARNING, logger="polymodal.chat"):
        got = prepare_prompt(proc, turns, [img], 16)
    assert got.dropped_rounds >= 1
    kept = turns[2 * got.dropped_rounds:]
    assert got.ids == proc.chat.prompt(kept)[0]
    assert got.pixels is None  # the first round's image left with it
    assert len(got.ids) + 16 <= window
    assert f"dropped {got.dropped_rounds} earlier round" in caplog.text and f"{window}-token window" in caplog.text
    # a short conversation keeps everything, image included
    caplog.clear()
    short = prepare_prompt(proc, [("user", QUESTION)], [img], 16)
    assert short.dropped_rounds == 0 and short.pixels is not None and short.pixels.shape[0] == 1 and not caplog.text


def test_session_trims_its_history_to_the_window(assistant: Assistant) -> None:
    long = " ".join(["two blue spheres and a green cylinder"] * 5)
    session = ChatSession(assistant.model, assistant.processors, max_new_tokens=8)
    list(session.ask(QUESTION, images=[assistant.images[0]]))
    for _ in range(3):
        list(session.ask(long))
    assert session.dropped_rounds >= 1
    assert session.pixels == []  # the image-bearing first round was dropped, and its image
    assert session.turns[0] == ("user", long) and len(session.turns) < 8  # whole rounds went, oldest first
    assert len(assistant.processors.chat.prompt(session.turns[:-1])[0]) + 8 <= session.window  # what the model read fit


def test_question_that_cannot_fit_is_an_error(assistant: Assistant) -> None:
    session = ChatSession(assistant.model, assistant.processors)
    huge = " ".join(["the cube"] * 300)
    with pytest.raises(DataError, match=rf"newest question takes \d+ tokens .* context window is {session.window}"):
        session.ask(huge)


def test_a_model_that_is_not_an_assistant_is_refused(assistant: Assistant) -> None:
    proc = dataclasses.replace(assistant.processors, chat=None, model_type="vqa", source="runs/vqa")
    with pytest.raises(WrongModelType, match=r"needs an assistant .* runs/vqa holds a 'vqa' model"):
        ChatSession(assistant.model, proc)


def test_cli_chat_answers_once_and_exits(assistant: Assistant, capsys: pytest.CaptureFixture[str]) -> None:
    img = assistant.images[1]
    code, out, err = run_cli(capsys, "chat", "--model", str(assistant.run), "--image", str(img), "--prompt", "What is in the picture?",
                             "--max-new-tokens", "10")
    assert code == 0, err
    assert out.strip() == _greedy(assistant, [("user", QUESTION)], [img], 10)
    assert "no <image> marker" in err  # the CLI put the marker in, and said so


def test_cli_chat_errors_and_repl(assistant: Assistant, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(capsys, "chat", "--model", str(assistant.run), "--image", "missing.png", "--prompt", "hi")
    assert code == 2 and "missing.png is not a file" in err
    img = assistant.images[2]
    monkeypatch.setattr("sys.stdin", io.StringIO(f"/image {img}\nWhat is in the picture?\n/bogus\n/reset\nhello\n"))
    code, out, err = run_cli(capsys, "chat", "--model", str(assistant.run), "--max-new-tokens", "6")
    assert code == 0, err  # EOF quits
    want = _greedy(assistant, [("user", QUESTION)], [img], 6)
    assert f"assistant> {want}\n" in out
    assert "unknown command /bogus" in err and "(new conversation)" in err
    assert out.count("assistant> ") == 2
