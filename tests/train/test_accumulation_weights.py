"""The shares that make K accumulated micro-batches one batch of all their items."""

from __future__ import annotations

import pytest

from polymodal.train.accumulation import MicroBatchWeights


def _step(weights: MicroBatchWeights, items: list[float]) -> list[float]:
    """Each micro-batch's effective weight on one process: its provisional share times the step's correction."""
    shares = [weights.share(n, n) for n in items]
    factor = weights.correction()
    return [share * factor for share in shares]


def test_equal_micro_batches_need_no_correction() -> None:
    weights = MicroBatchWeights(4)
    for _ in range(2):
        assert [weights.share(64, 64) for _ in range(4)] == [0.25] * 4
        assert weights.correction() == 1.0  # exactly: the optimizer step skips rescaling


@pytest.mark.parametrize("items", [[11, 11, 8], [8], [300, 120, 45], [0, 5, 7], [5, 0]])
def test_each_micro_batch_weighs_its_share_of_the_steps_items(items: list[float]) -> None:
    """The mean over every item of the step: a short last micro-batch, captions of other lengths, a
    micro-batch whose samples were all unreadable (0 items) counted as nothing."""
    weights = MicroBatchWeights(3)
    for _ in range(2):  # the second step's provisional unit comes from the first
        assert _step(weights, items) == pytest.approx([n / sum(items) for n in items])


def test_an_epochs_short_last_step_does_not_shrink_the_next_unit() -> None:
    """The last step of an epoch may hold one micro-batch of 1 row: the next epoch's shares must stay
    near 1/K, not 16 times that (fp16 loss scaling would overflow)."""
    weights = MicroBatchWeights(4)
    _step(weights, [16] * 4)
    _step(weights, [1])
    assert [weights.share(16, 16) for _ in range(4)] == [0.25] * 4


def test_steps_do_not_leak_into_each_other() -> None:
    weights = MicroBatchWeights(2)
    _step(weights, [10, 30])
    assert _step(weights, [20, 20]) == pytest.approx([0.5, 0.5])


def test_provisional_shares_stay_near_one_over_k_after_the_first_step() -> None:
    """fp16 loss scaling overflows on a share far above 1: a step whose first micro-batch is tiny must
    not make the next one's share hundreds, once a step has shown what a micro-batch holds."""
    weights = MicroBatchWeights(2)
    _step(weights, [6, 1800])  # the first step has only its first micro-batch as the unit
    shares = [weights.share(n, n) for n in (6, 1800)]
    assert max(shares) <= 1.0
    assert [s * weights.correction() for s in shares] == pytest.approx([6 / 1806, 1800 / 1806])


@pytest.mark.parametrize("mean_over_ranks", [False, True])
def test_under_ddp_every_item_of_every_rank_weighs_alike(mean_over_ranks: bool) -> None:
    """2 ranks x 2 micro-batches, rank 1 lost two samples of its first: after DDP averages the ranks'
    gradients, each item weighs 1/N. A loss that is a mean over its rank's items (most) and one that
    divides by the items of every rank (polymodal's token losses) need different shares for that."""
    counts = [[4, 2], [4, 4]]  # [micro-batch][rank]
    world, total = 2, sum(map(sum, counts))
    ranks = [MicroBatchWeights(2, world) for _ in range(world)]
    shares = [[ranks[r].share(mb[r], sum(mb), mean_over_ranks=mean_over_ranks) for r in range(world)] for mb in counts]
    factors = [w.correction() for w in ranks]
    assert factors[0] == factors[1]  # every rank rescales alike: the counts were summed over ranks
    for mb, row in zip(counts, shares):
        for r in range(world):
            # what one item of rank r weighs in the averaged gradient: share x factor / W, times
            # d(loss)/d(item): 1/n_rank for a per-rank mean, W/n_all for a mean over ranks
            per_item = (row[r] * factors[r] / world) * (world / sum(mb) if mean_over_ranks else 1 / mb[r])
            assert per_item == pytest.approx(1 / total)


def test_a_loss_of_both_kinds_weighs_each_item_alike_without_accumulation() -> None:
    """A multi-task loss adds a token mean over every rank (LM) to a mean over this rank's samples (VQA).
    Ranks hold 3 and 1 samples with 5 and 2 tokens: after DDP averages the gradients, every sample
    weighs 1/N and every token 1/T, as in one process. One share for the whole loss cannot do both."""
    import torch

    samples, tokens, world = [3, 1], [5, 2], 2
    n_all, t_all = sum(samples), sum(tokens)
    averaged_sample_grads, averaged_token_grads = [], []
    for n, t in zip(samples, tokens):
        per_sample = torch.ones(n, requires_grad=True)  # this rank's per-sample losses
        per_token = torch.ones(t, requires_grad=True)
        token_mean = per_token.sum() * world / t_all  # as losses/_token_mean.py divides under DDP
        loss = per_sample.mean() + token_mean
        MicroBatchWeights(1, world).weigh(loss, n, n_all, token_mean).backward()
        averaged_sample_grads += (per_sample.grad / world).tolist()  # DDP averages the ranks' gradients
        averaged_token_grads += (per_token.grad / world).tolist()
    assert averaged_sample_grads == pytest.approx([1 / n_all] * n_all)
    assert averaged_token_grads == pytest.approx([1 / t_all] * t_all)


def test_a_loss_of_both_kinds_logs_what_one_process_would() -> None:
    """2 ranks with 1 and 3 samples, 2 and 6 tokens, per-sample losses 1 (rank 0) and 3 (rank 1), token
    losses summing to 4 and 12. One process would log the sample mean 2.5 plus the token mean 2.0. Each
    rank's shared part is its token sum x W / T (as losses/_token_mean.py gives it), so it must be
    averaged over ranks alike, not by the rank's samples, which would log 2.5 + 2.5."""
    import torch

    from polymodal.train.accumulation import LossWindow

    world, samples, token_sums, tokens_all = 2, [1, 3], [4.0, 12.0], 8
    ranks = [LossWindow(world) for _ in range(world)]
    for window, n, sample_loss, token_sum in zip(ranks, samples, [1.0, 3.0], token_sums):
        shared = token_sum * world / tokens_all
        window.add(sample_loss + shared, n, over_ranks=shared, items_all_ranks=tokens_all)
    merged = LossWindow(1)  # what the all-reduce does: the ranks' sums added
    merged._sums = [sum(parts) for parts in zip(*(w._sums for w in ranks))]
    assert merged.mean(torch.device("cpu")) == pytest.approx(2.5 + 2.0)


def test_without_accumulation_ranks_with_fewer_items_weigh_less() -> None:
    """K = 1 under DDP: a per-rank mean over 10 of the step's 30 items weighs 2 x 10 / 30 (DDP halves
    it again); a loss already divided by every rank's items, or equal ranks, is left as it is."""
    weights = MicroBatchWeights(1, world=2)
    assert weights.share(10, 30) == pytest.approx(2 / 3) and weights.correction() == 1.0
    assert weights.share(15, 30) == 1.0
    assert weights.share(10, 30, mean_over_ranks=True) == 1.0


def test_an_all_empty_step_and_no_accumulation_leave_the_gradient_alone() -> None:
    weights = MicroBatchWeights(2)
    assert _step(weights, [0, 0]) == [0.0, 0.0]
    assert _step(weights, [3, 5]) == pytest.approx([3 / 8, 5 / 8])  # and the next step starts cleanly
    single = MicroBatchWeights(1)
    assert single.share(17, 17) == 1.0 and single.correction() == 1.0  # the loss as it is


def test_a_negative_weight_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="weight must be >= 0"):
        MicroBatchWeights(2).share(-1, -1)


def test_the_logged_loss_is_a_mean_over_items() -> None:
    import math

    import torch

    from polymodal.train.accumulation import LossWindow

    window = LossWindow()
    window.add(2.0, 30)  # a micro-batch of 30 tokens at loss 2
    window.add(4.0, 10)
    assert window.mean(torch.device("cpu")) == pytest.approx(2.5)
    window.add(1.0, 0)  # nothing scored anywhere: the plain mean, not a division by zero
    window.add(3.0, 0)
    assert window.mean(torch.device("cpu")) == 2.0
    assert math.isnan(window.mean(torch.device("cpu")))  # each mean starts a fresh window
