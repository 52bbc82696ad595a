"""Validate and lay out a tokenised corpus (``gts``/``res`` dicts) once for every scorer.

pycocoevalcap's scorers take ``gts = {image_id: [ref, ...]}`` and ``res = {image_id: [cand]}``
(tokenised strings) and assert that both have the same keys. The scorers here accept the same
``gts`` and either ``{id: cand}`` or ``{id: [cand]}``, check them once, and keep the image order of
``gts`` (the order in which pycocoevalcap reports per-image scores).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polymodal.metrics._ngrams import NgramTable, build_ngram_table, split_tokens
from polymodal.metrics.errors import MetricInputError


def _describe_ids(ids: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:limit])
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return shown + more


def check_corpus(
    gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Any]
) -> tuple[list[Hashable], list[list[str]], list[str]]:
    """Return ``(ids, refs, cands)`` in ``gts`` order after checking they fit together.

    Raises:
        MetricInputError: nothing to score, ids differ, an image has no reference, or a value is
            not text.
    """
    ids = list(gts.keys())
    if not ids:
        raise MetricInputError("no image to score: the references are empty")
    missing = [i for i in ids if i not in res]
    extra = [i for i in res if i not in gts]
    if missing:
        raise MetricInputError(
            f"no candidate caption for {len(missing)} image id(s) that have references: "
            f"{_describe_ids(missing)}"
        )
    if extra:
        raise MetricInputError(
            f"candidate captions for {len(extra)} image id(s) without references: {_describe_ids(extra)}"
        )
    refs: list[list[str]] = []
    cands: list[str] = []
    for i in ids:
        r = gts[i]
        if isinstance(r, str) or not isinstance(r, Sequence):
            raise MetricInputError(f"references of image {i!r} must be a list of strings, got {type(r).__name__}")
        if len(r) == 0:
            raise MetricInputError(f"image {i!r} has no reference caption (every image needs at least one)")
        for x in r:
            if not isinstance(x, str):
                raise MetricInputError(f"a reference of image {i!r} is {type(x).__name__}, not a string")
        c = res[i]
        if not isinstance(c, str):
            # pycocoevalcap's own form: a one-element list.
            if isinstance(c, Sequence) and len(c) == 1 and isinstance(c[0], str):
                c = c[0]
            else:
                raise MetricInputError(
                    f"the candidate of image {i!r} must be one string (or a one-element list), got {c!r:.80}"
                )
        refs.append(list(r))
        cands.append(c)
    return ids, refs, cands


@dataclass
class TokenisedCorpus:
    """A checked corpus with its n-gram table, built lazily and shared by BLEU and CIDEr-D.

    Sentences are laid out as all references (image by image, in order) followed by the candidates
    (one per image, in order), so row ``num_refs + i`` of the table is image ``i``'s candidate.
    """

    ids: list[Hashable]
    refs: list[list[str]]
    cands: list[str]
    n: int = 4
    _table: NgramTable | None = field(default=None, repr=False)
    _ref_gram_max: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    refs_per_image: np.ndarray = field(init=False, repr=False)
    ref_image: np.ndarray = field(init=False, repr=False)
    num_refs: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.refs_per_image = np.fromiter((len(r) for r in self.refs), dtype=np.int64, count=len(self.refs))
        # Image index of every reference sentence.
        self.ref_image = np.repeat(np.arange(len(self.ids), dtype=np.int64), self.refs_per_image)
        self.num_refs = int(self.refs_per_image.sum())

    @classmethod
    def from_dicts(cls, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Any], n: int = 4) -> TokenisedCorpus:
        ids, refs, cands = check_corpus(gts, res)
        return cls(ids=ids, refs=refs, cands=cands, n=n)

    @property
    def num_images(self) -> int:
        return len(self.ids)

    @property
    def ref_gram_max(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct ``(image, n-gram)`` pairs of the references and the largest count of each.

        Keys are ``image * num_grams + gram``, sorted. BLEU clips with the counts (``maxcounts``
        of ``cook_refs``); CIDEr-D's document frequency is the number of keys per n-gram.
        """
        if self._ref_gram_max is None:
            t = self.table
            is_ref = t.sentence < self.num_refs
            key = self.ref_image[t.sentence[is_ref]] * t.num_grams + t.gram[is_ref]
            cnt = t.count[is_ref]
            srt = np.argsort(key, kind="stable")
            key, cnt = key[srt], cnt[srt]
            if len(key):
                starts = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1))
                self._ref_gram_max = (key[starts], np.maximum.reduceat(cnt, starts))
            else:
                self._ref_gram_max = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        return self._ref_gram_max

    @property
    def table(self) -> NgramTable:
        if self._table is None:
            sentences = [r for rs in self.refs for r in rs] + list(self.cands)
            self._table = build_ngram_table(split_tokens(sentences), self.n)
        return self._table
