"""The training loader is built once per run: its workers persist across epochs, and every item is
still drawn with its epoch's seed, in the sampler's order, from the sampler's position."""

from __future__ import annotations

import os
from typing import Any

import pytest
from torch.utils.data import Dataset

from polymodal.train.data import EpochSeededDataset, ResumableSampler, epoch_seed, make_train_loader


class Draws(Dataset):
    """Reports the seed it was asked to draw with, the index, and which process drew it."""

    seed = 0

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        return self.seed, index, os.getpid()


class DrawsTask:
    def train_dataset(self, items: Any, processor: Any, flip_prob: float, seed: int) -> tuple[Dataset, Any]:
        return Draws(), list


def test_workers_persist_across_epochs_and_each_epoch_draws_with_its_seed() -> None:
    sampler = ResumableSampler(8, seed=5)
    loader = make_train_loader(list(range(8)), None, None, 8, 4, 2, sampler, seed=5, task=DrawsTask())  # type: ignore[arg-type]
    workers = {}
    for epoch in (0, 1):
        sampler.set_position(epoch, 0)
        items = [x for batch in loader for x in batch]
        assert [s for s, _, _ in items] == [epoch_seed(5, epoch)] * 8
        assert [i for _, i, _ in items] == sampler.order()
        workers[epoch] = {pid for *_, pid in items}
    assert sampler.order() != ResumableSampler(8, seed=5).order()  # epoch 1 has its own permutation
    assert workers[0] == workers[1] and os.getpid() not in workers[0]
    # a resumed run starts part-way through an epoch
    sampler.set_position(1, 4)
    assert [i for batch in loader for _, i, _ in batch] == sampler.order()[4:]


def test_a_dataset_without_a_seed_is_named() -> None:
    class Unseeded(Dataset):
        def __len__(self) -> int:
            return 1

    with pytest.raises(TypeError, match="Unseeded: a training dataset must draw its items with a 'seed'"):
        EpochSeededDataset(Unseeded())


def test_the_decoded_image_cache_is_dropped_with_workers(caplog: pytest.LogCaptureFixture) -> None:
    """With workers each would keep a cache of its own (slow to fill, workers x the memory): the loader
    says so and turns it off; loading in the main process keeps it."""
    from polymodal.config import ImageSettings
    from polymodal.train.data import image_processor

    for workers, kept in ((0, True), (2, False)):
        processor = image_processor(ImageSettings(size=16, cache_mb=8), train=True)
        caplog.clear()
        make_train_loader(list(range(8)), processor, None, 8, 4, workers, ResumableSampler(8, seed=0), seed=0, task=DrawsTask())  # type: ignore[arg-type]
        assert (processor.decoded is not None) is kept
        assert any("image.cache_mb is used only" in r.message for r in caplog.records) is not kept
