"""Corpus-wide n-gram statistics shared by BLEU and CIDEr-D.

pycocoevalcap builds a ``dict`` of n-gram tuples for every sentence twice (once per metric) and
then walks those dicts in Python. Here every distinct n-gram of the corpus gets one integer id,
computed for all sentences at once with numpy, and each sentence becomes a few rows of a sorted
``(sentence, n-gram id, count)`` table. BLEU's clipping and CIDEr-D's document frequency, tf-idf
vectors and cosine similarities are then array operations over that table.

The statistics are exact integer counts, so they equal pycocoevalcap's to the last bit; only the
order of floating point summation differs later on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NgramTable:
    """Distinct n-grams of every sentence, with their counts.

    Rows are sorted by ``(sentence, gram)``; a sentence's rows are contiguous.

    Attributes:
        sentence: sentence index of each row.
        gram: corpus-wide n-gram id of each row (ids of different orders never collide).
        order: n-gram order minus one (0 for unigrams) of each row.
        count: how often the n-gram occurs in the sentence.
        lengths: number of whitespace tokens of each sentence.
        num_grams: one more than the largest n-gram id.
    """

    sentence: np.ndarray
    gram: np.ndarray
    order: np.ndarray
    count: np.ndarray
    lengths: np.ndarray
    num_grams: int


def split_tokens(sentences: Sequence[str]) -> list[list[str]]:
    """Split like pycocoevalcap's ``precook``: ``str.split()`` on any whitespace.

    Note that this splits on U+00A0 too, which the PTB tokenizer puts inside tokens such as
    ``5\\xa01/2``; ROUGE-L, unlike BLEU and CIDEr, splits on ``" "`` only and keeps them whole.
    """
    return [s.split() for s in sentences]


def build_ngram_table(sentences: Sequence[Sequence[str]], n: int = 4) -> NgramTable:
    """Count the 1..n-grams of every (already split) sentence.

    Args:
        sentences: token lists.
        n: highest n-gram order.
    """
    lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
    total = int(lengths.sum())
    vocab: dict[str, int] = {}
    setdefault = vocab.setdefault
    # Interning words is the one per-token Python loop; everything after it is vectorised.
    words = np.fromiter(
        (setdefault(w, len(vocab)) for s in sentences for w in s), dtype=np.int64, count=total
    )
    sent_of_token = np.repeat(np.arange(len(sentences), dtype=np.int64), lengths)
    starts = np.zeros(len(sentences) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    # Position of each token inside its sentence, to know where an n-gram would run off the end.
    pos = np.arange(total, dtype=np.int64) - starts[:-1][sent_of_token]
    remaining = lengths[sent_of_token] - pos  # tokens from here to the end of the sentence

    gram_parts = []
    sent_parts = []
    order_parts = []
    offset = 0
    prev_ids = words  # ids of the (k-1)-gram starting at each token (compact per order)
    for k in range(1, n + 1):
        if k == 1:
            ids = words
            card = len(vocab)
        else:
            valid = remaining[: total - k + 1] >= k if total >= k else np.zeros(0, dtype=bool)
            # (k-1)-gram at i followed by the word at i+k-1, packed into one int64 key.
            key = np.full(total, -1, dtype=np.int64)
            if valid.size:
                idx = np.nonzero(valid)[0]
                key[idx] = prev_ids[idx] * (len(vocab) + 1) + words[idx + k - 1]
            mask = key >= 0
            uniq, inv = np.unique(key[mask], return_inverse=True)
            ids = np.full(total, -1, dtype=np.int64)
            ids[mask] = inv
            card = len(uniq)
        mask = ids >= 0
        gram_parts.append(ids[mask] + offset)
        sent_parts.append(sent_of_token[mask])
        order_parts.append(np.full(int(mask.sum()), k - 1, dtype=np.int8))
        offset += card
        prev_ids = np.where(ids >= 0, ids, 0)
    gram = np.concatenate(gram_parts) if gram_parts else np.zeros(0, dtype=np.int64)
    sent = np.concatenate(sent_parts) if sent_parts else np.zeros(0, dtype=np.int64)
    order_all = np.concatenate(order_parts) if order_parts else np.zeros(0, dtype=np.int8)
    num_grams = max(offset, 1)
    key = sent * num_grams + gram
    uniq, first, counts = np.unique(key, return_index=True, return_counts=True)
    return NgramTable(
        sentence=uniq // num_grams,
        gram=uniq % num_grams,
        order=order_all[first],
        count=counts.astype(np.int64),
        lengths=lengths,
        num_grams=num_grams,
    )
