"""train_val_split: disjoint, complete, deterministic, stratified."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jresnet.data import Dataset, train_val_split


def identified(labels: list[int] | np.ndarray, num_classes: int | None = None) -> Dataset:
    """A dataset whose image i stores i in its first two pixels (i // 256, i % 256)."""
    labels = np.asarray(labels, dtype=np.int32)
    ids = np.arange(len(labels))
    images = np.zeros((len(labels), 1, 1, 2), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
    classes = num_classes or int(labels.max()) + 1
    return Dataset(images, labels, tuple(str(c) for c in range(classes)), "ids")


def ids_of(dataset: Dataset) -> np.ndarray:
    return dataset.images[:, 0, 0, 0].astype(int) * 256 + dataset.images[:, 0, 0, 1]


def test_parts_are_disjoint_and_together_hold_every_example() -> None:
    dataset = identified(np.arange(1000) % 7)
    train, val = train_val_split(dataset, val_fraction=0.1, seed=3)
    assert len(val) == 100 and len(train) == 900
    assert set(ids_of(train)).isdisjoint(ids_of(val))
    assert sorted([*ids_of(train), *ids_of(val)]) == list(range(1000))
    assert np.array_equal(train.labels, dataset.labels[ids_of(train)])  # labels travel with their images


def test_same_seed_same_split_and_other_seed_other_split() -> None:
    dataset = identified(np.arange(500) % 5)
    first = train_val_split(dataset, val_size=50, seed=7)
    again = train_val_split(dataset, val_size=50, seed=7)
    other = train_val_split(dataset, val_size=50, seed=8)
    assert np.array_equal(ids_of(first[1]), ids_of(again[1]))
    assert not np.array_equal(ids_of(first[1]), ids_of(other[1]))


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    _, val = train_val_split(identified(labels), val_size=100, seed=0)
    assert np.bincount(val.labels).tolist() == [60, 30, 10]


def test_largest_remainder_rounding_hits_the_exact_size() -> None:
    labels = np.repeat([0, 1, 2], [1, 1, 1])  # 2 of 3 classes must give one each
    train, val = train_val_split(identified(labels), val_size=2, seed=0)
    assert len(val) == 2 and len(train) == 1 and len(set(val.labels.tolist())) == 2


def test_unstratified_split_is_a_plain_random_sample() -> None:
    dataset = identified(np.zeros(200, int))
    train, val = train_val_split(dataset, val_size=20, seed=1, stratify=False)
    assert len(val) == 20 and set(ids_of(train)).isdisjoint(ids_of(val))


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({}, ValueError, "exactly one"),
        ({"val_fraction": 0.1, "val_size": 5}, ValueError, "exactly one"),
        ({"val_fraction": 1.0}, ValueError, "strictly between 0 and 1"),
        ({"val_fraction": 0.001}, ValueError, "got 0 (from val_fraction=0.001)"),
        ({"val_size": 10}, ValueError, "must be 1..9"),
        ({"val_size": 2.5}, TypeError, "val_size"),
        ({"val_size": 2, "seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, object], error: type[Exception], words: str) -> None:
    with pytest.raises(error) as raised:
        train_val_split(identified(np.arange(10) % 2), **kwargs)  # type: ignore[arg-type]
    assert words in str(raised.value)


@settings(max_examples=60, deadline=None)
@given(
    class_sizes=st.lists(st.integers(0, 30), min_size=1, max_size=6).filter(lambda sizes: sum(sizes) >= 2),
    val_share=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    stratify=st.booleans(),
)
def test_any_split_is_exact_disjoint_and_complete(
    class_sizes: list[int], val_share: float, seed: int, stratify: bool
) -> None:
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    total = len(labels)
    val_size = 1 + round(val_share * (total - 2))
    train, val = train_val_split(
        identified(labels, len(class_sizes)), val_size=val_size, seed=seed, stratify=stratify
    )
    assert len(val) == val_size and len(train) == total - val_size
    assert sorted([*ids_of(train), *ids_of(val)]) == list(range(total))
    if stratify:  # each class within one of its proportional share
        share = np.asarray(class_sizes) * val_size / total
        assert np.all(np.abs(np.bincount(val.labels, minlength=len(class_sizes)) - share) < 1)
