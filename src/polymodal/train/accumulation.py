"""How the micro-batches of one optimizer step are weighed, so that K of them make the step one batch
of all their items would make.

A micro-batch's loss is a mean over its items: samples, or scored tokens for a captioning or language
model loss. The step's gradient must be the mean over every item of the step, ``sum_i n_i grad(loss_i) / N``,
not the mean of the K micro-batch means, which over-weighs the items of a short micro-batch (the epoch's
last, one thinned by unreadable samples) and, for token losses, the tokens of short captions. ``N`` is
known only after the last micro-batch, and its gradient must already be in ``.grad`` by then, so each
backward pass takes a provisional share ``n_i / (n_1 K)`` (exact whenever every micro-batch holds as
many items as the first) and the summed gradient is rescaled once, before clipping, by the ratio of
that guess to the true total. Steps of equal micro-batches need no rescaling at all.
"""

from __future__ import annotations


class MicroBatchWeights:
    """Shares for one optimizer step's micro-batches; :meth:`correction` closes the step."""

    def __init__(self, accumulation: int) -> None:
        self.accumulation = accumulation
        self._first = 0.0  # items in the step's first non-empty micro-batch: the unit of the provisional shares
        self._total = 0.0  # items in the step so far

    def share(self, items: float) -> float:
        """The factor for this micro-batch's loss, which is a mean over ``items`` (summed over ranks)."""
        if self.accumulation == 1:
            return 1.0  # the loss as it is: one micro-batch is the whole step
        if items < 0:
            raise ValueError(f"a micro-batch's loss weight must be >= 0 (the items its loss averages over), got {items}")
        self._total += items
        if not self._first:
            self._first = items
        return items / (self._first * self.accumulation) if self._first else 0.0

    def correction(self) -> float:
        """The factor for the step's summed gradient, ``n_1 K / N``; resets for the next step."""
        guessed, total = self._first * self.accumulation, self._total
        self._first = self._total = 0.0
        if self.accumulation == 1 or not total:
            return 1.0
        return guessed / total
