"""Caption metrics from raw strings: what ``pycocoevalcap.eval.COCOEvalCap`` reports.

:func:`caption_scores` tokenises references and candidates like pycocoevalcap's PTBTokenizer
(references and candidates in two separate calls, as ``COCOEvalCap.evaluate`` does), then
computes BLEU-1..4, METEOR, ROUGE-L and CIDEr-D on the tokens. BLEU and CIDEr-D share one n-gram
table. The numbers equal pycocoevalcap's up to floating point summation order (checked to 1e-6
in the tests; in practice they agree to ~1e-15).

SPICE is not provided (it needs a 2 GB Stanford CoreNLP model download and is not asked for).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal, overload

from polymodal.metrics._corpus import TokenisedCorpus, check_corpus
from polymodal.metrics.bleu import bleu_from_corpus
from polymodal.metrics.cider import cider_from_corpus
from polymodal.metrics.errors import MetricInputError
from polymodal.metrics.meteor import MeteorScorer, session_scorer
from polymodal.metrics.ptb_tokenizer import ptb_tokenize
from polymodal.metrics.rouge import rouge_l_lists

ALL_METRICS: tuple[str, ...] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
_ALIASES = {
    "bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    "meteor": ("METEOR",),
    "rouge": ("ROUGE_L",),
    "rouge_l": ("ROUGE_L",),
    "cider": ("CIDEr",),
    "cider_d": ("CIDEr",),
    "cider-d": ("CIDEr",),
}


def resolve_metrics(metrics: Iterable[str] | None) -> tuple[str, ...]:
    """Canonical metric names, in report order. ``None`` means all seven.

    Accepts the report keys (``"Bleu_4"``, ``"CIDEr"``...) and, case-insensitively, the families
    ``"bleu"``, ``"meteor"``, ``"rouge_l"``, ``"cider"``.
    """
    if metrics is None:
        return ALL_METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    wanted: set[str] = set()
    for m in metrics:
        if m in ALL_METRICS:
            wanted.add(m)
            continue
        key = m.lower()
        exact = [x for x in ALL_METRICS if x.lower() == key]
        if exact:
            wanted.update(exact)
        elif key in _ALIASES:
            wanted.update(_ALIASES[key])
        else:
            raise MetricInputError(f"unknown caption metric {m!r}; choose from {', '.join(ALL_METRICS)} (or bleu, meteor, rouge_l, cider)")
    return tuple(m for m in ALL_METRICS if m in wanted)


def tokenize_corpus(
    refs: Mapping[Hashable, Sequence[str]], cands: Mapping[Hashable, Any], tokenizer: str = "python"
) -> tuple[dict[Hashable, list[str]], dict[Hashable, str]]:
    """PTB-tokenise references and candidates as ``COCOEvalCap.evaluate`` does.

    References (all images, in order) form one tokenizer call and candidates another, so the
    tokenizer's look-ahead across captions matches the reference.

    Returns:
        ``(gts, res)``: ``{id: [tokenised refs]}`` and ``{id: tokenised candidate}``.
    """
    ids, ref_lists, cand_list = check_corpus(refs, cands)
    flat = [r for rs in ref_lists for r in rs]
    tok_refs = ptb_tokenize(flat, backend=tokenizer)
    tok_cands = ptb_tokenize(cand_list, backend=tokenizer)
    gts: dict[Hashable, list[str]] = {}
    k = 0
    for i, rs in zip(ids, ref_lists):
        gts[i] = tok_refs[k : k + len(rs)]
        k += len(rs)
    res = dict(zip(ids, tok_cands))
    return gts, res


def _normalise_tokenizer(tokenizer: str) -> str:
    t = tokenizer.lower()
    if t in ("ptb", "python"):
        return "python"
    if t == "java":
        return "java"
    if t in ("none", "pretokenized", "pre-tokenized"):
        return "none"
    raise MetricInputError(f"tokenizer must be 'ptb' (pure Python), 'java' or 'none', got {tokenizer!r}")


@overload
def caption_scores(
    refs: Mapping[Hashable, Sequence[str]],
    cands: Mapping[Hashable, Any],
    metrics: Iterable[str] | None = ...,
    *,
    tokenizer: str = ...,
    return_per_image: Literal[False] = ...,
    meteor_scorer: MeteorScorer | None = ...,
) -> dict[str, float]: ...


@overload
def caption_scores(
    refs: Mapping[Hashable, Sequence[str]],
    cands: Mapping[Hashable, Any],
    metrics: Iterable[str] | None = ...,
    *,
    tokenizer: str = ...,
    return_per_image: Literal[True],
    meteor_scorer: MeteorScorer | None = ...,
) -> tuple[dict[str, float], dict[Hashable, dict[str, float]]]: ...


def caption_scores(
    refs: Mapping[Hashable, Sequence[str]],
    cands: Mapping[Hashable, Any],
    metrics: Iterable[str] | None = None,
    *,
    tokenizer: str = "ptb",
    return_per_image: bool = False,
    meteor_scorer: MeteorScorer | None = None,
) -> dict[str, float] | tuple[dict[str, float], dict[Hashable, dict[str, float]]]:
    """COCO caption metrics of candidate captions against reference captions.

    Args:
        refs: ``{image_id: [reference caption, ...]}``, raw text.
        cands: ``{image_id: candidate caption}`` (or a one-element list), raw text; same ids.
        metrics: which of ``Bleu_1..4, METEOR, ROUGE_L, CIDEr`` to compute (``None``: all).
            METEOR needs Java; without it a :class:`MetricUnavailableError` says so unless
            METEOR is left out here.
        tokenizer: ``"ptb"`` (pure-Python PTB tokenisation, default), ``"java"`` (the CoreNLP
            jar, like pycocoevalcap) or ``"none"`` (inputs are already tokenised).
        return_per_image: also return ``{image_id: {metric: score}}``.
        meteor_scorer: a running :class:`MeteorScorer` to reuse (saves the jar's start-up); by
            default the jar of an open :func:`~polymodal.metrics.meteor.meteor_session`, else a new one.

    Returns:
        ``{"Bleu_1": ..., "METEOR": ..., "ROUGE_L": ..., "CIDEr": ...}`` (corpus scores, as
        ``COCOEvalCap.eval``), and with ``return_per_image`` the per-image scores (as
        ``COCOEvalCap.imgToEval``).

    Raises:
        MetricInputError: ids of refs and cands differ, or an image has no reference.
        MetricUnavailableError: METEOR asked for but Java or pycocoevalcap is missing.
    """
    wanted = resolve_metrics(metrics)
    if not wanted:
        raise MetricInputError("no metric to compute")
    tok = _normalise_tokenizer(tokenizer)
    if "METEOR" in wanted and meteor_scorer is None:
        meteor_scorer = session_scorer()
    if "METEOR" in wanted and meteor_scorer is None:
        from polymodal.metrics.meteor import _require

        _require()  # fail before the tokenisation work, with the install hint
    if tok == "none":
        ids, ref_lists, cand_list = check_corpus(refs, cands)
        gts = dict(zip(ids, ref_lists))
        res = dict(zip(ids, cand_list))
    else:
        gts, res = tokenize_corpus(refs, cands, tok)
    corpus = TokenisedCorpus.from_dicts(gts, res)
    if corpus.num_images == 0:
        raise MetricInputError("no image to score")
    scores: dict[str, float] = {}
    per: dict[str, Sequence[float]] = {}
    bleu_names = [m for m in wanted if m.startswith("Bleu_")]
    if bleu_names:
        b, bp = bleu_from_corpus(corpus, n=4)
        for k in range(4):
            name = f"Bleu_{k + 1}"
            if name in wanted:
                scores[name] = float(b[k])
                per[name] = bp[:, k].tolist()
    if "METEOR" in wanted:
        if meteor_scorer is not None:
            m, mp = meteor_scorer.score_lists(corpus.refs, corpus.cands)
        else:
            with MeteorScorer() as scorer:
                m, mp = scorer.score_lists(corpus.refs, corpus.cands)
        scores["METEOR"] = m
        per["METEOR"] = mp
    if "ROUGE_L" in wanted:
        r, rp = rouge_l_lists(corpus.refs, corpus.cands)
        scores["ROUGE_L"] = r
        per["ROUGE_L"] = rp.tolist()
    if "CIDEr" in wanted:
        c, cp = cider_from_corpus(corpus)
        scores["CIDEr"] = c
        per["CIDEr"] = cp.tolist()
    scores = {k: scores[k] for k in wanted}
    if not return_per_image:
        return scores
    per_image = {i: {k: float(per[k][j]) for k in wanted} for j, i in enumerate(corpus.ids)}
    return scores, per_image
