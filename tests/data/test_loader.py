"""Loader: fixed-shape batches, exactly-once evaluation, (seed, epoch)-pure order, mid-epoch resume."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jresnet.data import Batch, Dataset, Loader


def identified(count: int, num_classes: int = 3) -> Dataset:
    """Image i stores i in its first two pixels and has label i % num_classes."""
    ids = np.arange(count)
    images = np.zeros((count, 1, 2, 2), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
    return Dataset(images, (ids % num_classes).astype(np.int32), tuple("abc"[:num_classes]), "ids")


def ids_of(batch: Batch) -> list[int]:
    """The example ids of the real (unmasked) rows of a batch."""
    real = batch.images[batch.mask]
    return (real[:, 0, 0, 0].astype(int) * 256 + real[:, 0, 0, 1]).tolist()


def all_ids(loader: Loader, epoch: int, start_step: int = 0) -> list[int]:
    return [i for batch in loader.epoch(epoch, start_step) for i in ids_of(batch)]


def test_evaluation_batches_are_padded_and_masked() -> None:
    loader = Loader(identified(10), batch_size=4, shuffle=False, drop_last=False)
    batches = list(loader.epoch(0))
    assert loader.steps_per_epoch == len(loader) == len(batches) == 3
    for batch in batches:
        assert batch.images.shape == (4, 1, 2, 2) and batch.images.dtype == np.uint8
        assert batch.labels.shape == (4,) and batch.labels.dtype == np.int32
        assert batch.mask.shape == (4,) and batch.mask.dtype == np.bool_
    assert batches[-1].mask.tolist() == [True, True, False, False]
    assert not batches[-1].images[2:].any() and not batches[-1].labels[2:].any()  # zero padding
    assert all_ids(loader, 0) == list(range(10))  # every example once, in order
    assert batches[0].labels.tolist() == [0, 1, 2, 0]


def test_shuffled_evaluation_still_sees_every_example_once() -> None:
    loader = Loader(identified(103), batch_size=16, shuffle=True, seed=5, drop_last=False)
    seen = all_ids(loader, 2)
    assert sorted(seen) == list(range(103)) and seen != list(range(103))


def test_training_drops_the_partial_batch() -> None:
    loader = Loader(identified(10), batch_size=4, shuffle=True, seed=0, drop_last=True)
    batches = list(loader.epoch(0))
    assert loader.steps_per_epoch == 2 and len(batches) == 2
    assert all(batch.mask.all() for batch in batches)
    assert len(set(all_ids(loader, 0))) == 8


def test_order_is_a_pure_function_of_seed_and_epoch() -> None:
    dataset = identified(64)
    first = Loader(dataset, batch_size=8, shuffle=True, seed=11, drop_last=True)
    resumed = Loader(dataset, batch_size=8, shuffle=True, seed=11, drop_last=True)  # a new process, say
    assert all_ids(resumed, 3) == all_ids(first, 3)  # epoch 3 read first, before 0..2
    assert all_ids(first, 0) == all_ids(resumed, 0)
    assert all_ids(first, 0) != all_ids(first, 1)  # epochs differ
    other_seed = Loader(dataset, batch_size=8, shuffle=True, seed=12, drop_last=True)
    assert all_ids(first, 0) != all_ids(other_seed, 0)
    swapped = Loader(dataset, batch_size=8, shuffle=True, seed=1, drop_last=True)
    assert all_ids(Loader(dataset, 8, shuffle=True, seed=0, drop_last=True), 1) != all_ids(swapped, 0)


def test_resuming_mid_epoch_gives_the_remaining_batches_of_the_uninterrupted_run() -> None:
    loader = Loader(identified(50), batch_size=6, shuffle=True, seed=2, drop_last=False)
    full = list(loader.epoch(4))
    resumed = list(loader.epoch(4, start_step=5))
    assert len(resumed) == len(full) - 5
    for expected, got in zip(full[5:], resumed, strict=True):
        for field in Batch._fields:
            assert np.array_equal(getattr(expected, field), getattr(got, field))
    assert list(loader.epoch(4, start_step=loader.steps_per_epoch)) == []


def test_skipped_batches_are_never_gathered(monkeypatch: pytest.MonkeyPatch) -> None:
    loader = Loader(identified(50), batch_size=5, shuffle=True, seed=0, drop_last=True)
    gathered: list[int] = []
    real_gather = Loader._gather

    def counting_gather(self: Loader, indices: np.ndarray) -> Batch:
        gathered.append(len(indices))
        return real_gather(self, indices)

    monkeypatch.setattr(Loader, "_gather", counting_gather)
    list(loader.epoch(0, start_step=7))
    assert len(gathered) == 3


@settings(max_examples=80, deadline=None)
@given(
    count=st.integers(1, 60),
    batch_size=st.integers(1, 17),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 1000),
)
def test_eval_mode_covers_every_example_exactly_once(
    count: int, batch_size: int, shuffle: bool, seed: int, epoch: int
) -> None:
    loader = Loader(identified(count), batch_size, shuffle=shuffle, seed=seed, drop_last=False)
    batches = list(loader.epoch(epoch))
    assert len(batches) == -(-count // batch_size)
    assert all(batch.images.shape[0] == batch_size for batch in batches)
    assert sorted(all_ids(loader, epoch)) == list(range(count))


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (
            lambda: Loader(identified(4), 0, shuffle=False, drop_last=False),
            ValueError,
            "batch_size must be >= 1",
        ),
        (
            lambda: Loader(identified(4), 2.0, shuffle=False, drop_last=False),
            TypeError,
            "batch_size",
        ),
        (
            lambda: Loader(identified(4), 2, shuffle=True, seed=-3, drop_last=False),
            ValueError,
            "seed must be >= 0",
        ),
        (
            lambda: Loader(identified(3), 4, shuffle=True, drop_last=True),
            ValueError,
            "fewer than batch_size 4",
        ),
        (lambda: Loader(np.zeros(3), 4, shuffle=True, drop_last=True), TypeError, "Dataset"),
        (
            lambda: Loader(identified(8), 4, shuffle=False, drop_last=True).epoch(0, 3),
            ValueError,
            "past the end",
        ),
        (
            lambda: Loader(identified(8), 4, shuffle=False, drop_last=True).epoch(-1),
            ValueError,
            "epoch must be >= 0",
        ),
    ],
)
def test_bad_arguments_fail_at_the_call_with_the_argument_named(
    make: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        make()  # type: ignore[operator]
