"""Decoding strategies on toy "models" whose next-token logits are a lookup table.

A second-order table ``T[prev, last] -> logits`` makes the logits depend on the history, so beam
reordering of the state is exercised; a first-order one ``T[last]`` makes hand-built cases easy.
"""

from __future__ import annotations

import math

import pytest
import torch

from polymodal.models.generation import (
    GENERATION_METHODS,
    beam_search,
    generate,
    greedy_search,
    left_pad,
    nucleus_sampling,
    process_logits,
    top_p_filter,
)

PAD, EOS, START = 0, 1, 2


class SecondOrder:
    """Logits ``table[prev, last]``; state = the previous token of each row."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.calls = 0

    def start(self, batch_starts: torch.Tensor):
        prev = torch.full_like(batch_starts, START)
        return self.table[prev, batch_starts], batch_starts

    def step(self, tokens: torch.Tensor, state: torch.Tensor):
        self.calls += 1
        return self.table[state, tokens], tokens

    @staticmethod
    def reorder(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)


def random_model(seed: int, vocab: int = 12, scale: float = 2.0, eos_bias: float = 0.0) -> SecondOrder:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, vocab, vocab, generator=g) * scale
    table[..., EOS] += eos_bias
    table[..., PAD] = -1e4  # the toy model never proposes the pad id
    return SecondOrder(table)


def run(model: SecondOrder, method: str, starts: torch.Tensor, **kw):
    logits, state = model.start(starts)
    kw.setdefault("max_length", 8)
    return generate(
        model.step, logits, state, method=method, reorder_fn=model.reorder, eos_id=EOS, pad_id=PAD, **kw
    )


def seq_log_prob(model: SecondOrder, start: int, seq: list[int]) -> float:
    """Raw log-probability of ``seq`` under the toy model (no processing)."""
    prev, last, total = START, start, 0.0
    for tok in seq:
        total += torch.log_softmax(model.table[prev, last], -1)[tok].item()
        prev, last = last, tok
    return total


def trimmed(out, i: int) -> list[int]:
    return out.sequences[i, : int(out.lengths[i])].tolist()


def first_order(vocab: int, edges: dict[int, dict[int, float]]) -> SecondOrder:
    """A toy model from hand-written next-token probabilities per last token (others ~0)."""
    table = torch.full((vocab, vocab), -30.0)
    for src, nxt in edges.items():
        for tok, p in nxt.items():
            table[src, tok] = math.log(p)
    return SecondOrder(table.unsqueeze(0).expand(vocab, vocab, vocab).clone())


# --------------------------------------------------------------------------------------------------


def test_greedy_follows_the_argmax_stops_at_eos_and_pads():
    model = first_order(8, {3: {4: 0.6, 5: 0.4}, 4: {6: 0.7, EOS: 0.3}, 6: {EOS: 0.9, 7: 0.1}, 7: {EOS: 1.0}})
    out = run(model, "greedy", torch.tensor([3, 7]))
    assert out.sequences.tolist() == [[4, 6, EOS], [EOS, PAD, PAD]]
    assert out.lengths.tolist() == [3, 1]
    want = math.log(0.6) + math.log(0.7) + math.log(0.9)
    assert out.scores[0].item() == pytest.approx(want, abs=1e-4)
    assert out.scores[1].item() == pytest.approx(0.0, abs=1e-4)
    assert model.calls == 2  # stops as soon as every row has ended


def test_beam_escapes_the_greedy_trap():
    # Greedy takes 4 (0.5) and then faces a flat distribution; beam keeps 5 (0.4) which ends surely.
    flat = {t: 0.1 for t in range(6, 16)}
    model = first_order(
        16, {3: {4: 0.5, 5: 0.4, 6: 0.1}, 4: flat, 5: {EOS: 1.0}, **{t: {EOS: 1.0} for t in range(6, 16)}}
    )
    greedy = run(model, "greedy", torch.tensor([3]))
    beam = run(model, "beam", torch.tensor([3]), beam_size=2, length_penalty=0.0)
    assert trimmed(greedy, 0)[0] == 4 and greedy.lengths.item() == 3
    assert trimmed(beam, 0) == [5, EOS]
    assert beam.scores.item() == pytest.approx(math.log(0.4), abs=1e-4)
    assert beam.scores.item() > greedy.scores.item()


@pytest.mark.parametrize("seed", range(4))
def test_beam_size_one_is_greedy(seed):
    starts = torch.tensor([3, 4, 5, 6, 7])
    greedy = run(random_model(seed, eos_bias=1.0), "greedy", starts, max_length=10)
    beam = run(
        random_model(seed, eos_bias=1.0), "beam", starts, max_length=10, beam_size=1, length_penalty=0.0
    )
    assert torch.equal(beam.sequences, greedy.sequences)
    assert torch.equal(beam.lengths, greedy.lengths)
    torch.testing.assert_close(beam.scores, greedy.scores)


def reference_beam(model: SecondOrder, start: int, k: int, max_length: int, alpha: float, early: bool):
    """Plain-Python beam search for one example (Hugging Face's rules), to check the vectorised one."""
    beams = [(0.0, [], (START, start))]
    finished: list[tuple[float, list[int]]] = []
    for t in range(max_length):
        cands = []
        for score, toks, (prev, last) in beams:
            lp = torch.log_softmax(model.table[prev, last], -1).tolist()
            cands += [(score + lp[v], toks + [v], (last, v)) for v in range(len(lp))]
        cands.sort(key=lambda c: -c[0])
        beams = []
        for rank, (score, toks, st) in enumerate(cands[: 2 * k]):
            if toks[-1] == EOS:
                if rank < k:
                    finished.append((score / len(toks) ** alpha, toks))
            elif len(beams) < k:
                beams.append((score, toks, st))
        if t == max_length - 1:
            finished += [(score / len(toks) ** alpha, toks) for score, toks, _ in beams]
        finished = sorted(finished, key=lambda f: -f[0])[:k]
        if len(finished) == k:
            bound = max(b[0] for b in beams) / (max_length if alpha > 0 else t + 1) ** alpha
            if early or finished[-1][0] >= bound:
                break
    return finished[0]


@pytest.mark.parametrize("alpha,early", [(0.0, False), (1.0, True), (1.0, False), (-0.5, False)])
def test_beam_matches_a_plain_python_reference(alpha, early):
    starts = torch.arange(3, 11)
    for seed in range(10):
        model = random_model(seed, eos_bias=0.5)
        out = run(
            model, "beam", starts, max_length=7, beam_size=3, length_penalty=alpha, early_stopping=early
        )
        for i, s in enumerate(starts.tolist()):
            score, seq = reference_beam(model, s, 3, 7, alpha, early)
            assert trimmed(out, i) == seq, (seed, i)
            assert out.scores[i].item() == pytest.approx(score, abs=1e-4)


# Beam search is not guaranteed to beat greedy (greedy's prefix can be pruned, then every surviving
# beam ends worse): on these toy tables it happens for about 1 row in 500, never on the seeds below.
@pytest.mark.parametrize("seed", range(6))
def test_beam_never_worse_than_greedy_and_scores_are_log_probs(seed):
    starts = torch.arange(3, 11)
    model = random_model(seed, eos_bias=0.5)
    greedy = run(model, "greedy", starts, max_length=8)
    beam = run(model, "beam", starts, max_length=8, beam_size=4, length_penalty=0.0, early_stopping=False)
    assert bool((beam.scores >= greedy.scores - 1e-5).all())
    for i, s in enumerate(starts.tolist()):  # reported scores are the sequences' own log-probs
        assert beam.scores[i].item() == pytest.approx(seq_log_prob(model, s, trimmed(beam, i)), abs=1e-4)
        assert greedy.scores[i].item() == pytest.approx(seq_log_prob(model, s, trimmed(greedy, i)), abs=1e-4)


def test_beam_length_penalty_normalises_the_reported_score():
    model = random_model(3, eos_bias=0.5)
    starts = torch.arange(3, 9)
    out = run(model, "beam", starts, max_length=8, beam_size=3, length_penalty=1.0)
    for i, s in enumerate(starts.tolist()):
        seq = trimmed(out, i)
        assert out.scores[i].item() == pytest.approx(seq_log_prob(model, s, seq) / len(seq), abs=1e-4)


@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_batched_equals_one_row_at_a_time(method):
    starts = torch.arange(3, 9)
    kw = {"max_length": 9, "beam_size": 3, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3}
    batched = run(random_model(5, eos_bias=0.8), method, starts, **kw)
    for i, s in enumerate(starts.tolist()):
        alone = run(random_model(5, eos_bias=0.8), method, torch.tensor([s]), **kw)
        assert trimmed(alone, 0) == trimmed(batched, i)
        assert alone.scores.item() == pytest.approx(batched.scores[i].item(), abs=1e-5)


def test_finished_rows_are_padded_after_eos():
    out = run(random_model(1, eos_bias=2.0), "beam", torch.arange(3, 11), max_length=10, beam_size=3)
    assert out.sequences.shape[1] == int(out.lengths.max())
    for i in range(out.sequences.shape[0]):
        n = int(out.lengths[i])
        row = out.sequences[i].tolist()
        assert EOS not in row[: n - 1] and PAD not in row[:n]
        assert all(t == PAD for t in row[n:])
        assert row[n - 1] == EOS or n == 10


@pytest.mark.parametrize("method", ["greedy", "beam", "nucleus"])
def test_no_repeat_ngram_guard(method):
    # A model that loves the loop 3 -> 4 -> 3 -> 4 ...
    model = first_order(10, {t: {3 if t != 3 else 4: 0.8, 5: 0.1, 6: 0.05, 7: 0.05} for t in range(2, 10)})
    plain = run(model, "greedy", torch.tensor([3]), max_length=8)
    assert trimmed(plain, 0)[:4] == [4, 3, 4, 3]
    for n in (1, 2, 3):
        out = run(
            model,
            method,
            torch.tensor([3, 4]),
            max_length=8,
            no_repeat_ngram_size=n,
            generator=torch.Generator().manual_seed(0),
            top_p=1.0,
        )
        for i in range(2):
            seq = trimmed(out, i)
            grams = [tuple(seq[j : j + n]) for j in range(len(seq) - n + 1)]
            assert len(grams) == len(set(grams)), (n, seq)


def test_process_logits_repetition_penalty_has_hf_semantics():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]])
    history = torch.tensor([[0, 1, 1]])
    out = process_logits(logits, history, eos_id=4, repetition_penalty=2.0)
    assert out.tolist() == [[1.0, -4.0, 1.0, -1.0, 0.5]]  # positive divided, negative multiplied, once
    assert logits.tolist() == [[2.0, -2.0, 1.0, -1.0, 0.5]]  # the input is left alone
    out = process_logits(logits, history, eos_id=4, min_length=4, suppress_ids=(2,))
    assert out[0, 4] == float("-inf") and out[0, 2] == float("-inf")
    assert process_logits(logits, history, eos_id=4, min_length=3)[0, 4] == 0.5


def test_process_logits_bans_completing_ngrams():
    history = torch.tensor([[5, 6, 7, 5, 6], [1, 2, 3, 4, 5]])
    out = process_logits(torch.zeros(2, 8), history, eos_id=0, no_repeat_ngram_size=3)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [7]  # "5 6 7" exists, "5 6" is last
    assert not torch.isinf(out[1]).any()
    out = process_logits(torch.zeros(2, 8), history, eos_id=0, no_repeat_ngram_size=2)
    assert torch.isinf(out[0]).nonzero().flatten().tolist() == [7]  # "6 7" exists, "6" is last


@pytest.mark.parametrize("method", ["greedy", "beam", "nucleus"])
def test_min_length_suppresses_eos(method):
    model = random_model(2, scale=1.0, eos_bias=10.0)  # EOS is by far the most likely token everywhere
    starts = torch.arange(3, 9)
    kw = {"generator": torch.Generator().manual_seed(0)}
    free = run(model, method, starts, max_length=10, **kw)
    assert int(free.lengths.min()) == 1
    out = run(model, method, starts, max_length=10, min_length=4, **kw)
    assert out.lengths.tolist() == [5] * 6  # 4 tokens, then EOS at the first chance
    assert (out.sequences[:, :4] != EOS).all() and (out.sequences[:, 4] == EOS).all()


def test_nucleus_is_reproducible_and_tiny_top_p_is_greedy():
    starts = torch.arange(3, 11)
    model = random_model(4, scale=1.0, eos_bias=0.5)

    def sample(seed, **kw):
        return run(
            model, "nucleus", starts, max_length=8, generator=torch.Generator().manual_seed(seed), **kw
        )

    a, b, c = sample(0), sample(0), sample(1)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.scores, b.scores)
    assert not torch.equal(a.sequences, c.sequences)
    greedy = run(model, "greedy", starts, max_length=8)
    tiny = sample(3, top_p=1e-6)
    assert torch.equal(tiny.sequences, greedy.sequences)
    torch.testing.assert_close(tiny.scores, greedy.scores)


def test_nucleus_only_samples_inside_the_nucleus():
    probs = {3: 0.5, 4: 0.3, 5: 0.15, 6: 0.05}
    model = first_order(8, {t: probs for t in range(2, 8)})
    starts = torch.full((200,), 3)
    out = run(model, "nucleus", starts, max_length=3, top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(out.sequences.flatten().tolist()) == {3, 4}
    out = run(model, "nucleus", starts, max_length=3, top_p=0.9, generator=torch.Generator().manual_seed(0))
    assert set(out.sequences.flatten().tolist()) == {3, 4, 5}
    # Temperature sharpens: at a tiny temperature sampling is greedy.
    out = run(
        model,
        "nucleus",
        starts,
        max_length=3,
        top_p=1.0,
        temperature=1e-3,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(out.sequences.flatten().tolist()) == {3}


def test_top_p_filter_keeps_the_top_token_and_the_crossing_one():
    lp = torch.tensor([[0.1, 0.6, 0.3]]).log()
    assert torch.isinf(top_p_filter(lp, 0.5)).tolist() == [[True, False, True]]
    assert torch.isinf(top_p_filter(lp, 0.7)).tolist() == [[True, False, False]]
    assert not torch.isinf(top_p_filter(lp, 1.0)).any()


def test_early_stopping_false_searches_at_least_as_well():
    starts = torch.arange(3, 11)
    model = random_model(7, eos_bias=0.5)
    early = run(model, "beam", starts, max_length=8, beam_size=3, length_penalty=1.0)
    exact = run(model, "beam", starts, max_length=8, beam_size=3, length_penalty=1.0, early_stopping=False)
    assert bool((exact.scores >= early.scores - 1e-5).all())


def test_errors_name_the_options():
    model = random_model(0)
    logits, state = model.start(torch.tensor([3]))
    with pytest.raises(ValueError, match="'greedy', 'beam', 'nucleus'"):
        generate(model.step, logits, state, method="topk", max_length=5, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="reorder_fn"):
        generate(model.step, logits, state, method="beam", max_length=5, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="top_p"):
        nucleus_sampling(model.step, logits, state, max_length=5, eos_id=EOS, pad_id=PAD, top_p=0.0)
    with pytest.raises(ValueError, match="max_length"):
        greedy_search(model.step, logits, state, max_length=0, eos_id=EOS, pad_id=PAD)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(
            model.step,
            logits,
            state,
            reorder_fn=model.reorder,
            max_length=5,
            eos_id=EOS,
            pad_id=PAD,
            beam_size=0,
        )
    assert GENERATION_METHODS == ("greedy", "beam", "nucleus")


def test_left_pad():
    ids, mask = left_pad([[2, 5, 6], [2, 7]], pad_id=0)
    assert ids.tolist() == [[2, 5, 6], [0, 2, 7]]
    assert mask.tolist() == [[True, True, True], [False, True, True]]
    with pytest.raises(ValueError):
        left_pad([[2], []], pad_id=0)
