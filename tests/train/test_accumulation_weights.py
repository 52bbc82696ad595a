"""The shares that make K accumulated micro-batches one batch of all their items."""

from __future__ import annotations

import pytest

from polymodal.train.accumulation import MicroBatchWeights


def _step(weights: MicroBatchWeights, items: list[float]) -> list[float]:
    """Each micro-batch's effective weight: its provisional share times the step's correction."""
    shares = [weights.share(n) for n in items]
    factor = weights.correction()
    return [share * factor for share in shares]


def test_equal_micro_batches_need_no_correction() -> None:
    weights = MicroBatchWeights(4)
    assert [weights.share(n) for n in (64, 64, 64, 64)] == [0.25] * 4
    assert weights.correction() == 1.0  # exactly: the optimizer step skips rescaling


@pytest.mark.parametrize("items", [[11, 11, 8], [8], [300, 120, 45], [0, 5, 7], [5, 0]])
def test_each_micro_batch_weighs_its_share_of_the_steps_items(items: list[float]) -> None:
    """The mean over every item of the step: a short last micro-batch, captions of other lengths, a
    micro-batch whose samples were all unreadable (0 items) counted as nothing."""
    got = _step(MicroBatchWeights(3), items)
    assert got == pytest.approx([n / sum(items) for n in items])


def test_steps_do_not_leak_into_each_other() -> None:
    weights = MicroBatchWeights(2)
    _step(weights, [10, 30])
    assert _step(weights, [20, 20]) == [0.5, 0.5]


def test_an_all_empty_step_and_no_accumulation_leave_the_gradient_alone() -> None:
    weights = MicroBatchWeights(2)
    assert _step(weights, [0, 0]) == [0.0, 0.0]
    single = MicroBatchWeights(1)
    assert single.share(17) == 1.0 and single.correction() == 1.0  # the loss as it is


def test_a_negative_weight_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="weight must be >= 0"):
        MicroBatchWeights(2).share(-1)
