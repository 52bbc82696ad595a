"""Conversations as ids: layout, image-token expansion, assistant-only labels and round-level truncation."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("transformers")

from polymodal.data.chat import (
    ChatEncoder,
    ChatFormat,
    as_conversation,
    majority_answer,
    question_turns,
)
from polymodal.data.sample import Sample
from polymodal.errors import DataError
from polymodal.losses.mlm import IGNORE_INDEX
from polymodal.models.tiny_lm import train_lm_tokenizer

IMG = 999


@pytest.fixture(scope="module")
def tok():
    return train_lm_tokenizer(["what color is the cube? red", "how many spheres are there? 2", "USER: ASSISTANT:"] * 20, vocab_size=300)


def _enc(tok, max_length: int = 200, **kw) -> ChatEncoder:
    return ChatEncoder(tok, IMG, tokens_per_image=4, max_length=max_length, **kw)


def test_layout_and_labels(tok) -> None:
    enc = _enc(tok, fmt=ChatFormat(system="be brief."))
    out = enc.encode([("user", "<image>\nwhat color is the cube?"), ("assistant", "red"), ("user", "how many?"), ("assistant", "2")])
    assert out.input_ids[0] == tok.bos_token_id and out.num_images == 1 and out.dropped_rounds == 0
    assert out.input_ids.count(IMG) == 4
    text = tok.decode([i for i in out.input_ids if i != IMG])
    assert text.startswith("<s>be brief. USER: \nwhat color is the cube? ASSISTANT: red</s>USER: how many? ASSISTANT: 2</s>")
    learned = [i for i in out.labels if i != IGNORE_INDEX]
    assert tok.decode(learned) == " red</s> 2</s>"
    assert len(out.labels) == len(out.input_ids)
    # the generation prompt is the training sequence up to the assistant cue
    prompt, n = enc.prompt([("user", "<image>\nwhat color is the cube?")])
    assert n == 1 and out.input_ids[: len(prompt)] == prompt


def test_truncation_drops_whole_rounds_and_counts_them(tok) -> None:
    turns = [("user", "<image>\nwhat color is the cube?"), ("assistant", "red")] + [("user", "how many spheres are there?"), ("assistant", "2")] * 5
    full = _enc(tok).encode(turns)
    short = _enc(tok, max_length=len(full.input_ids) - 5).encode(turns)
    assert short.dropped_rounds == 1
    assert full.input_ids[: len(short.input_ids)] == short.input_ids
    with pytest.raises(DataError, match="context window") as err:
        _enc(tok, max_length=len(full.input_ids) - 5, truncation="error").encode(turns, "chat.json:record 3")
    assert f"the conversation needs {len(full.input_ids)} tokens" in str(err.value)  # the whole length, each round once
    with pytest.raises(DataError, match=r"record 3: the first round needs \d+ tokens \(each image takes 4\)"):
        _enc(tok, max_length=6).encode(turns, "chat.json:record 3")


def test_bad_turn_orders_are_refused(tok) -> None:
    with pytest.raises(DataError, match="alternates"):
        _enc(tok).encode([("user", "hi")])
    with pytest.raises(DataError, match="alternates"):
        _enc(tok).encode([("assistant", "hi"), ("user", "x")])
    with pytest.raises(DataError, match="ending with a user turn"):
        _enc(tok).prompt([("user", "hi"), ("assistant", "x")])
    with pytest.raises(DataError, match=r"got roles \['system', 'user'\]"):
        _enc(tok).prompt([("system", "be brief"), ("user", "x")])
    with pytest.raises(DataError, match="no room"):
        _enc(tok, max_length=8).prompt([("user", "<image>\nwhat color is the cube?")])


def test_samples_become_turns(tmp_path: Path) -> None:
    img = tmp_path / "a.png"
    q = Sample("1", image_path=img, text="what color?", answers=("red", "red", "blue"))
    assert as_conversation(q) == question_turns("what color?", "red")
    cap = as_conversation(Sample("2", image_path=img, text="a red cube."))
    assert cap is not None and cap[1] == ("assistant", "a red cube.") and cap[0][1].startswith("<image>\n")
    assert as_conversation(Sample("3", image_path=img, text="x", label=1)) is None  # a statement is not chat data
    assert as_conversation(Sample("4", text="no image")) is None
    assert majority_answer(["2", "two", "2", "two"]) == "2"
