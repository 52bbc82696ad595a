from __future__ import annotations

from pathlib import Path

import pytest

from polymodal.data.tokenizers import load_tokenizer, train_tokenizer
from polymodal.errors import DataError

CORPUS = ["a large red cube left of a small blue sphere.", "how many cylinders are there?", "two green cones and a gray cube."] * 20


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_train_encode_decode_round_trip(kind: str) -> None:
    tok = train_tokenizer(CORPUS, kind=kind, vocab_size=200)
    batch = tok.encode(["a red cube.", "how many cones are there?"], max_length=16)
    assert batch.input_ids.shape == batch.attention_mask.shape and batch.input_ids.shape[0] == 2
    assert batch.input_ids[0, 0] == tok.cls_id
    assert batch.attention_mask[0].sum() < batch.attention_mask[1].sum()  # padded to the longer one
    assert (batch.input_ids[0][batch.attention_mask[0] == 0] == tok.pad_id).all()
    assert tok.decode(batch.input_ids[1]).replace(" ", "") == "howmanyconesarethere?"
    assert tok.mask_id is not None and tok.pad_id == 0


def test_truncation_keeps_end_marker() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=200)
    batch = tok.encode(["a large red cube left of a small blue sphere."], max_length=5)
    assert batch.input_ids.shape == (1, 5) and batch.input_ids[0, -1] == tok.sep_id


def test_pad_to_max_length_gives_every_batch_one_width_with_the_same_tokens() -> None:
    tok = train_tokenizer(CORPUS, vocab_size=200)
    texts = ["a red cube.", "how many cones are there?"]
    longest = tok.encode(texts, max_length=16)
    tok.pad_to_max_length = True
    fixed = tok.encode(texts, max_length=16)
    assert longest.input_ids.shape[1] < 16 and fixed.input_ids.shape == (2, 16)
    width = longest.input_ids.shape[1]
    assert fixed.input_ids[:, :width].tolist() == longest.input_ids.tolist()
    assert fixed.attention_mask.sum(1).tolist() == longest.attention_mask.sum(1).tolist()
    assert (fixed.input_ids[:, width:] == tok.pad_id).all()
    assert tok.encode(["a large red cube left of a small blue sphere."], max_length=5).input_ids.shape == (1, 5)  # still truncates


def test_save_and_load(tmp_path: Path) -> None:
    tok = train_tokenizer(CORPUS, vocab_size=200)
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.encode(["a blue sphere"], 8).input_ids.tolist() == tok.encode(["a blue sphere"], 8).input_ids.tolist()


def test_load_bert_vocab_txt(tmp_path: Path) -> None:
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "cube", "##s"]))
    tok = load_tokenizer(tmp_path)
    ids = tok.encode(["A red cubes"], 10).input_ids[0].tolist()
    assert ids == [2, 5, 6, 7, 8, 3]


def test_missing_or_broken_tokenizer_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=str(tmp_path / "nope")):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_wordpiece_training_is_reproducible_and_never_unknown() -> None:
    corpus = [f"a {c} {s} is left of a {s}" for c in ("red", "blue", "green") for s in ("cube", "sphere", "cone")] * 3
    vocabs = {tuple(sorted(train_tokenizer(corpus, vocab_size=40).tokenizer.get_vocab().items())) for _ in range(5)}
    assert len(vocabs) == 1  # the HF trainer gave a different vocabulary on most runs
    tok = train_tokenizer(corpus, vocab_size=40)
    ids = tok.encode(["a purple cube"], 16).input_ids[0].tolist()
    assert tok.unk_id not in ids  # unseen words fall back to character pieces
    assert tok.decode(ids) == "a purple cube"
