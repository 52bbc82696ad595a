"""Text tokenisation through Hugging Face ``tokenizers``: train one on a corpus, or load a pretrained one.

A trained tokenizer is saved as a standard ``tokenizer.json``, so it loads with ``transformers`` too,
and pretrained ``tokenizer.json`` / BERT ``vocab.txt`` files load here without ``transformers``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from polymodal.errors import DataError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)


@dataclass
class TextBatch:
    input_ids: torch.Tensor  # [B, T] long
    attention_mask: torch.Tensor  # [B, T] long, 1 for real tokens


def _normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(lowercase=True, clean_text=True, strip_accents=True)


def _wordpiece_vocab(texts: Iterable[str], vocab_size: int, min_frequency: int) -> dict[str, int]:
    """Specials, every character (word-initial and '##' continuation), then words by frequency.

    The tie-break (frequency, then the word itself) makes the vocabulary a pure function of the
    corpus. Words that do not fit fall back to character pieces, so nothing becomes [UNK].
    """
    norm, pre = _normalizer(), pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for text, times in Counter(texts).items():  # captions and questions repeat: split each distinct text once
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            counts[w] += times
    chars = sorted({c for w in counts for c in w})
    pieces = list(SPECIAL_TOKENS) + chars + [f"##{c}" for c in chars]
    budget = max(0, vocab_size - len(pieces))
    words = [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_frequency and len(w) > 1]
    taken = set(pieces)
    pieces += [w for w in words if w not in taken][:budget]
    return {tok: i for i, tok in enumerate(pieces)}


def train_tokenizer(
    texts: Iterable[str],
    kind: str = "wordpiece",
    vocab_size: int = 2000,
    min_frequency: int = 1,
) -> "TextTokenizer":
    """Train a lower-casing WordPiece or BPE tokenizer with '[CLS] text [SEP]' framing like BERT.

    ``wordpiece`` is built here deterministically (same corpus, same ids: runs reproduce). ``bpe``
    uses the ``tokenizers`` trainer, which breaks frequency ties nondeterministically, so two runs
    on the same corpus may number some merges differently; save the tokenizer with the run.
    """
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(vocab=_wordpiece_vocab(texts, vocab_size, min_frequency), unk_token=UNK))
        tok.decoder = decoders.WordPiece()
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS), end_of_word_suffix="</w>")
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        raise ValueError(f"tokenizer kind must be 'wordpiece' or 'bpe', got {kind!r}")
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if kind == "bpe":
        tok.train_from_iterator(texts, trainer=trainer)
    else:
        tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocab: marks them special for decode
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B {SEP}", special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return TextTokenizer(tok)


def load_tokenizer(path: str | Path) -> "TextTokenizer":
    """Load ``tokenizer.json`` (a file or a folder holding one) or a BERT-style ``vocab.txt``."""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "tokenizer.json", path / "vocab.txt"]
    for p in candidates:
        if not p.is_file():
            continue
        if p.name.endswith(".txt"):
            from tokenizers.implementations import BertWordPieceTokenizer

            return TextTokenizer(BertWordPieceTokenizer(str(p), lowercase=True)._tokenizer)
        try:
            return TextTokenizer(Tokenizer.from_file(str(p)))
        except Exception as e:  # the tokenizers library raises plain Exceptions for malformed files
            raise DataError(f"{p}: not a valid tokenizer.json ({e})") from None
    raise DataError(f"no tokenizer found at {path}: expected a tokenizer.json file, or a folder with tokenizer.json or vocab.txt")


class TextTokenizer:
    """Batched encoding to padded tensors, with the special-token ids models need (pad, mask, cls, sep)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        # Padding and truncation are done here, to the batch and max_length asked for: a pretrained
        # tokenizer.json often carries its own (sentence-transformers pad every text to 128 tokens),
        # which would hide the padding from the attention mask.
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.pad_id = self._require(PAD, fallback=("<pad>",))
        self.unk_id = self._id(UNK, ("<unk>",))
        self.cls_id = self._id(CLS, ("<s>", "<|startoftext|>", "<bos>"))
        self.sep_id = self._id(SEP, ("</s>", "<|endoftext|>", "<eos>"))
        self.mask_id = self._id(MASK, ("<mask>",))
        self.pad_to_max_length = False  # tokenizer.padding: max_length (fixed shapes for compiled training)

    def _id(self, token: str, fallback: Sequence[str] = ()) -> int | None:
        for t in (token, *fallback):
            i = self.tokenizer.token_to_id(t)
            if i is not None:
                return i
        return None

    def _require(self, token: str, fallback: Sequence[str] = ()) -> int:
        i = self._id(token, fallback)
        return 0 if i is None else i

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str], max_length: int, add_special_tokens: bool = True) -> TextBatch:
        """Pad to the longest text in the batch (at most ``max_length``; always ``max_length`` with
        ``pad_to_max_length``), truncating longer ones."""
        encoded = [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=add_special_tokens)]
        longest = max_length if self.pad_to_max_length else max((len(e) for e in encoded), default=1)
        length = min(max_length, longest) or 1
        rows, masks = [], []
        for full in encoded:
            seq = full[:length]
            if len(full) > length and add_special_tokens and self.sep_id is not None:
                seq[-1] = self.sep_id  # keep the end marker after truncation: decoders learn to stop
            pad = length - len(seq)
            rows.append(seq + [self.pad_id] * pad)
            masks.append([1] * len(seq) + [0] * pad)
        # one tensor from lists: a tensor write per row cost more than the tokenizer itself
        shape = (len(rows), length)
        return TextBatch(torch.tensor(rows, dtype=torch.long).reshape(shape), torch.tensor(masks, dtype=torch.long).reshape(shape))

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / "tokenizer.json"
        tmp = out.with_suffix(".json.tmp")
        self.tokenizer.save(str(tmp))
        tmp.replace(out)
        return out
