"""Decoding strategies for autoregressive text generation, independent of any particular model.

Every strategy drives the model through two callables, so one implementation serves a captioner, a
generative VQA head, or a plain language model, with or without a KV cache:

* ``step_fn(tokens, state) -> (logits, state)``: feed one new token per row (``tokens`` ``[N]``
  long) and return the logits ``[N, vocab]`` of the position that follows, plus the updated state.
  The state is opaque here (a KV cache, the whole prefix, ...).
* ``reorder_fn(state, index) -> state``: row ``i`` of the new state is row ``index[i]`` of the old
  one. Beam search uses it to expand a batch to ``B * beam_size`` rows and to follow surviving beams.

The caller runs the prompt (e.g. ``[BOS]`` or ``[CLS] question: ... answer:``) itself and passes the
logits of its last position as ``logits`` ``[B, vocab]``; strategies return only the new tokens.

Conventions shared by all strategies:

* ``max_length`` is the maximum number of *generated* tokens (the end token included);
  ``min_length`` the minimum number of tokens generated before the end token may appear (the end
  token is suppressed until then).
* Sequences include the end token and are padded with ``pad_id`` after it; ``lengths`` counts the
  generated tokens including the end token.
* ``repetition_penalty`` (CTRL / Hugging Face semantics) rescales the logit of every token already
  generated: divided by the penalty when positive, multiplied when negative. ``no_repeat_ngram_size``
  = n forbids any n-gram from occurring twice. Both look at the generated tokens only, not at the
  prompt, so a VQA answer may repeat words of its question.
* ``suppress_ids`` are never generated (a captioner passes its pad and BOS ids: never targets in
  training, and a pad in the middle of a caption would read as its end).
* Processing order: repetition penalty -> n-gram ban -> min-length ban -> suppression on the raw
  logits, then ``log_softmax``. ``scores`` are sums of these processed log-probabilities (for
  sampling after the temperature, before top-p truncation); beam search reports the
  length-normalised score it ranks by.
* Everything is vectorised over ``batch x beams``; there is no Python loop over batch items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GENERATION_METHODS",
    "GenerationOutput",
    "ReorderFn",
    "StepFn",
    "beam_search",
    "check_method",
    "generate",
    "greedy_search",
    "left_pad",
    "nucleus_sampling",
    "process_logits",
    "top_p_filter",
]

StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]
ReorderFn = Callable[[Any, Tensor], Any]
Method = Literal["greedy", "beam", "nucleus"]
GENERATION_METHODS: tuple[str, ...] = ("greedy", "beam", "nucleus")


@dataclass
class GenerationOutput:
    """The result of a decoding strategy.

    * ``sequences`` ``[B, L]`` long: generated tokens (end token included, no BOS / prompt), padded
      with ``pad_id``; ``L`` is the longest generated length in the batch.
    * ``scores`` ``[B]`` float: sum of log-probabilities of the generated tokens; for beam search
      divided by ``lengths ** length_penalty`` (the score hypotheses were ranked by).
    * ``lengths`` ``[B]`` long: number of generated tokens per row (end token included).
    """

    sequences: Tensor
    scores: Tensor
    lengths: Tensor


# --------------------------------------------------------------------------------------------------
# Logit processing
# --------------------------------------------------------------------------------------------------


def _ban_repeated_ngrams(logits: Tensor, history: Tensor, n: int) -> Tensor:
    """Set to -inf every token that would complete an n-gram already present in ``history`` ``[N, t]``."""
    t = history.shape[1]
    if t < n:
        return logits
    windows = history.unfold(1, n, 1)  # [N, t - n + 1, n]
    last = history[:, t - n + 1 :]  # the n - 1 most recent tokens (empty for n = 1)
    match = (windows[:, :, :-1] == last[:, None, :]).all(dim=-1)  # [N, W]
    hits = torch.zeros(logits.shape, dtype=torch.int32, device=logits.device)
    hits.scatter_add_(1, windows[:, :, -1], match.to(torch.int32))
    return logits.masked_fill(hits > 0, float("-inf"))


def process_logits(
    logits: Tensor,
    history: Tensor,
    *,
    eos_id: int,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    suppress_ids: Sequence[int] = (),
) -> Tensor:
    """Apply the repetition penalty, the n-gram ban, the min-length ban and ``suppress_ids`` (never
    generated, e.g. the pad id) to next-token logits.

    ``logits`` ``[N, vocab]``; ``history`` ``[N, t]`` the tokens generated so far (``t`` of them).
    Returns a new float32 tensor (the input is not modified).
    """
    logits = logits.float().clone()
    t = history.shape[1]
    if repetition_penalty != 1.0 and t > 0:
        seen = logits.gather(1, history)
        seen = torch.where(seen < 0, seen * repetition_penalty, seen / repetition_penalty)
        logits.scatter_(1, history, seen)
    if no_repeat_ngram_size > 0:
        logits = _ban_repeated_ngrams(logits, history, no_repeat_ngram_size)
    if t < min_length:
        logits[:, eos_id] = float("-inf")
    if len(suppress_ids):
        logits[:, list(suppress_ids)] = float("-inf")
    return logits


def _check_common(
    max_length: int, min_length: int, no_repeat_ngram_size: int, repetition_penalty: float
) -> None:
    if max_length < 1:
        raise ValueError(f"generation: max_length must be >= 1, got {max_length}")
    if min_length < 0:
        raise ValueError(f"generation: min_length must be >= 0, got {min_length}")
    if no_repeat_ngram_size < 0:
        raise ValueError(f"generation: no_repeat_ngram_size must be >= 0, got {no_repeat_ngram_size}")
    if repetition_penalty <= 0:
        raise ValueError(f"generation: repetition_penalty must be > 0, got {repetition_penalty}")


# --------------------------------------------------------------------------------------------------
# Greedy and nucleus sampling (one hypothesis per row)
# --------------------------------------------------------------------------------------------------


def _decode_one_per_row(
    choose: Callable[[Tensor], Tensor],
    step_fn: StepFn,
    logits: Tensor,
    state: Any,
    *,
    max_length: int,
    eos_id: int,
    pad_id: int,
    min_length: int,
    no_repeat_ngram_size: int,
    repetition_penalty: float,
    suppress_ids: Sequence[int],
    temperature: float = 1.0,
) -> GenerationOutput:
    """Shared loop of greedy search and sampling: ``choose(log_probs [N, V]) -> tokens [N]``."""
    n = logits.shape[0]
    device = logits.device
    sequences = torch.full((n, max_length), pad_id, dtype=torch.long, device=device)
    scores = torch.zeros(n, dtype=torch.float32, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    for t in range(max_length):
        processed = process_logits(
            logits,
            sequences[:, :t],
            eos_id=eos_id,
            min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size,
            repetition_penalty=repetition_penalty,
            suppress_ids=suppress_ids,
        )
        log_probs = F.log_softmax(processed / temperature, dim=-1)
        tokens = choose(log_probs)
        token_scores = log_probs.gather(1, tokens[:, None]).squeeze(1)
        tokens = tokens.masked_fill(finished, pad_id)
        scores = scores + token_scores.masked_fill(finished, 0.0)
        lengths = lengths + (~finished).long()
        sequences[:, t] = tokens
        finished = finished | (tokens == eos_id)
        if t == max_length - 1 or bool(finished.all()):
            break
        logits, state = step_fn(tokens, state)
    width = max(int(lengths.max()), 1) if n else 1
    return GenerationOutput(sequences=sequences[:, :width], scores=scores, lengths=lengths)


def greedy_search(
    step_fn: StepFn,
    logits: Tensor,
    state: Any,
    *,
    max_length: int,
    eos_id: int,
    pad_id: int,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    suppress_ids: Sequence[int] = (),
) -> GenerationOutput:
    """Pick the most likely next token at every step; rows stop at ``eos_id`` (then ``pad_id``)."""
    _check_common(max_length, min_length, no_repeat_ngram_size, repetition_penalty)
    return _decode_one_per_row(
        lambda log_probs: log_probs.argmax(dim=-1),
        step_fn,
        logits,
        state,
        max_length=max_length,
        eos_id=eos_id,
        pad_id=pad_id,
        min_length=min_length,
        no_repeat_ngram_size=no_repeat_ngram_size,
        repetition_penalty=repetition_penalty,
        suppress_ids=suppress_ids,
    )


def top_p_filter(log_probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``top_p`` (others -inf).

    The most likely token is always kept, so ``top_p`` -> 0 is greedy decoding; ``top_p=1`` keeps all.
    """
    if top_p >= 1.0:
        return log_probs
    sorted_lp, order = log_probs.sort(dim=-1, descending=True)
    probs = sorted_lp.exp()
    before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = before >= top_p
    drop_sorted[:, 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(1, order, drop_sorted)
    return log_probs.masked_fill(drop, float("-inf"))


def nucleus_sampling(
    step_fn: StepFn,
    logits: Tensor,
    state: Any,
    *,
    max_length: int,
    eos_id: int,
    pad_id: int,
    top_p: float = 0.9,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    suppress_ids: Sequence[int] = (),
) -> GenerationOutput:
    """Top-p sampling (Holtzman et al. 2020) at ``temperature``; reproducible with a ``generator``.

    The generator must live on the logits' device. ``scores`` are log-probabilities under the
    temperature-scaled distribution before truncation.
    """
    _check_common(max_length, min_length, no_repeat_ngram_size, repetition_penalty)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"generation: top_p must be in (0, 1], got {top_p}")
    if temperature <= 0:
        raise ValueError(f"generation: temperature must be > 0, got {temperature}")

    def choose(log_probs: Tensor) -> Tensor:
        probs = top_p_filter(log_probs, top_p).exp()
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _decode_one_per_row(
        choose,
        step_fn,
        logits,
        state,
        max_length=max_length,
        eos_id=eos_id,
        pad_id=pad_id,
        min_length=min_length,
        no_repeat_ngram_size=no_repeat_ngram_size,
        repetition_penalty=repetition_penalty,
        suppress_ids=suppress_ids,
        temperature=temperature,
    )


# --------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------


def beam_search(
    step_fn: StepFn,
    logits: Tensor,
    state: Any,
    *,
    reorder_fn: ReorderFn,
    max_length: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 3,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    suppress_ids: Sequence[int] = (),
) -> GenerationOutput:
    """Beam search over ``B x beam_size`` rows with a pool of finished hypotheses per example.

    A finished hypothesis (ended by ``eos_id``, or cut at ``max_length``) is ranked by
    ``sum_log_prob / length ** length_penalty`` (GNMT / Hugging Face; ``length_penalty=0`` ranks
    by raw log-probability, > 0 favours longer sequences). As in Hugging Face, only an end token
    among the ``beam_size`` best candidates of a step closes a hypothesis (so ``beam_size=1`` is
    greedy search with ``length_penalty=0`` or ``early_stopping=True``). By default (``early_stopping=False``) an example is
    done once it holds ``beam_size`` finished hypotheses and no running beam can still beat the worst
    of them: log-probs only fall as a beam grows, so the bound is exact and the search returns what
    it would return at ``max_length`` (for ``length_penalty > 0`` the bound uses ``max_length``, so
    the search often runs to the end). ``early_stopping=True`` stops as soon as ``beam_size``
    hypotheses have finished (Hugging Face's ``early_stopping=True``): faster, but a low-ranked
    early end can then crowd out the best beam still running. ``logits`` ``[B, vocab]`` and ``state``
    are for ``B`` rows; they are expanded to ``B * beam_size`` with ``reorder_fn``.
    """
    _check_common(max_length, min_length, no_repeat_ngram_size, repetition_penalty)
    b, vocab = logits.shape
    k = beam_size
    if k < 1:
        raise ValueError(f"generation: beam_size must be >= 1, got {k}")
    if 2 * k > vocab:
        raise ValueError(
            f"generation: beam_size {k} needs a vocabulary of at least {2 * k} tokens, got {vocab}"
        )
    device = logits.device
    neg_inf = float("-inf")

    expand = torch.arange(b, device=device).repeat_interleave(k)
    state = reorder_fn(state, expand)
    logits = logits.index_select(0, expand)
    rows = torch.arange(b, device=device)[:, None]  # [B, 1] for advanced indexing
    base = rows * k

    run_seq = torch.empty((b, k, 0), dtype=torch.long, device=device)
    run_score = torch.full((b, k), neg_inf, device=device)
    run_score[:, 0] = 0.0  # identical beams at the start: only the first one may expand
    fin_seq = torch.full((b, k, max_length), pad_id, dtype=torch.long, device=device)
    fin_score = torch.full((b, k), neg_inf, device=device)
    fin_len = torch.zeros((b, k), dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    rank = torch.arange(2 * k, device=device)[None, :]

    for t in range(max_length):
        cur_len = t + 1
        last = cur_len == max_length
        processed = process_logits(
            logits,
            run_seq.reshape(b * k, t),
            eos_id=eos_id,
            min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size,
            repetition_penalty=repetition_penalty,
            suppress_ids=suppress_ids,
        )
        log_probs = F.log_softmax(processed, dim=-1)
        candidates = (run_score.reshape(b * k, 1) + log_probs).reshape(b, k * vocab)
        top_score, top_index = candidates.topk(2 * k, dim=1)  # sorted, best first
        top_beam = torch.div(top_index, vocab, rounding_mode="floor")
        top_token = top_index % vocab
        is_eos = top_token == eos_id

        # ---- finished pool: best k of (old finished, candidates closing now)
        closing = (is_eos & (rank < k)) | (last & ~is_eos)
        closing = closing & ~done[:, None] & torch.isfinite(top_score)
        normalised = top_score / float(cur_len) ** length_penalty
        new_seq = torch.cat([run_seq[rows, top_beam], top_token[..., None]], dim=-1)  # [B, 2k, t + 1]
        new_seq = F.pad(new_seq, (0, max_length - cur_len), value=pad_id)
        pool_score = torch.cat([fin_score, normalised.masked_fill(~closing, neg_inf)], dim=1)
        pool_seq = torch.cat([fin_seq, new_seq], dim=1)
        pool_len = torch.cat([fin_len, torch.full_like(top_token, cur_len)], dim=1)
        fin_score, keep = pool_score.topk(k, dim=1)
        fin_seq = pool_seq[rows, keep]
        fin_len = pool_len.gather(1, keep)

        # ---- running beams: the k best candidates that did not end (stable: keeps score order)
        alive = torch.sort(is_eos.to(torch.uint8), dim=1, stable=True).indices[:, :k]
        run_score = top_score.gather(1, alive)
        beam = top_beam.gather(1, alive)
        token = top_token.gather(1, alive)
        run_seq = torch.cat([run_seq[rows, beam], token[..., None]], dim=-1)

        full = torch.isfinite(fin_score).all(dim=1)
        if early_stopping:
            done = done | full
        else:
            # Log-probs only decrease as a beam grows; the best a running beam can still reach is
            # its score now divided by the largest (alpha > 0) or current (alpha <= 0) length factor.
            bound_len = max_length if length_penalty > 0 else cur_len
            best_possible = run_score.max(dim=1).values / float(bound_len) ** length_penalty
            done = done | (full & (fin_score[:, -1] >= best_possible))
        done = done | ~torch.isfinite(run_score).any(dim=1)
        if last or bool(done.all()):
            break
        state = reorder_fn(state, (base + beam).reshape(-1))
        logits, state = step_fn(token.reshape(-1), state)

    width = max(int(fin_len[:, 0].max()), 1) if b else 1
    return GenerationOutput(sequences=fin_seq[:, 0, :width], scores=fin_score[:, 0], lengths=fin_len[:, 0])


# --------------------------------------------------------------------------------------------------
# Dispatch and helpers
# --------------------------------------------------------------------------------------------------


def check_method(method: str) -> None:
    """Raise a ValueError naming the valid methods unless ``method`` is one of them."""
    if method not in GENERATION_METHODS:
        valid = ", ".join(repr(m) for m in GENERATION_METHODS)
        raise ValueError(f"generation: method must be one of {valid}, got {method!r}")


def generate(
    step_fn: StepFn,
    logits: Tensor,
    state: Any,
    *,
    method: str = "greedy",
    reorder_fn: ReorderFn | None = None,
    max_length: int,
    eos_id: int,
    pad_id: int,
    beam_size: int = 3,
    length_penalty: float = 1.0,
    early_stopping: bool = False,
    top_p: float = 0.9,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    min_length: int = 0,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    suppress_ids: Sequence[int] = (),
) -> GenerationOutput:
    """Run one of :data:`GENERATION_METHODS`; options that don't apply to it are ignored."""
    check_method(method)
    common = {
        "max_length": max_length,
        "eos_id": eos_id,
        "pad_id": pad_id,
        "min_length": min_length,
        "no_repeat_ngram_size": no_repeat_ngram_size,
        "repetition_penalty": repetition_penalty,
        "suppress_ids": suppress_ids,
    }
    if method == "greedy":
        return greedy_search(step_fn, logits, state, **common)
    if method == "nucleus":
        return nucleus_sampling(
            step_fn, logits, state, top_p=top_p, temperature=temperature, generator=generator, **common
        )
    if reorder_fn is None:
        raise ValueError("generation: beam search needs a reorder_fn to expand and reorder the state")
    return beam_search(
        step_fn,
        logits,
        state,
        reorder_fn=reorder_fn,
        beam_size=beam_size,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        **common,
    )


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Token lists of different lengths -> left-padded ``ids`` ``[B, T]`` long and ``mask`` ``[B, T]`` bool.

    The layout prompts for generation take: every prompt ends in the last column, so the next token
    of every row is generated at the same step.
    """
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad: expected a non-empty list of non-empty token sequences")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, width - len(s) :] = True
    return ids.to(device), mask.to(device)
