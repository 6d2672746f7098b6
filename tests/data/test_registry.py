"""load_dataset by name, the well-known normalisation constants, and dataset_stats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jresnet.data import (
    DATASET_NAMES,
    DATASET_STATS,
    DEBIAN_FASHION_MNIST_DIR,
    Dataset,
    channel_stats,
    dataset_stats,
    load_dataset,
    mnist,
)

from .format_writers import random_idx_split, write_cifar10_batches, write_idx_split


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError) as raised:
        load_dataset("imagenet")
    message = str(raised.value)
    assert "'imagenet'" in message
    for name in ("digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "npz"):
        assert name in message and name in DATASET_NAMES


def test_each_name_dispatches_to_its_format(tmp_path: Path) -> None:
    write_idx_split(tmp_path / "idx", "train", *random_idx_split(np.random.default_rng(0), 3), gzipped=True)
    write_cifar10_batches(tmp_path / "cifar", per_batch=1)
    np.savez(tmp_path / "set.npz", x_train=np.zeros((2, 1, 3, 3), np.uint8), y_train=np.array([0, 1]))
    (tmp_path / "folder" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "folder" / "only" / "x.png")

    assert load_dataset("digits")["train"].name == "digits"
    assert load_dataset("mnist", tmp_path / "idx")["train"].name == "mnist"
    assert load_dataset("fashion_mnist", tmp_path / "idx")["train"].name == "fashion_mnist"
    assert load_dataset("cifar10", tmp_path / "cifar")["train"].images.shape == (5, 3, 32, 32)
    assert load_dataset("npz", tmp_path / "set.npz")["train"].name == "set"
    folder = load_dataset("imagefolder", tmp_path / "folder", tmp_path / "cache")["train"]
    assert folder.class_names == ("only",) and len(list((tmp_path / "cache").glob("*.npz"))) == 1


@pytest.mark.parametrize("name", ["imagefolder", "npz"])
def test_file_based_sources_need_a_root(name: str) -> None:
    with pytest.raises(ValueError, match=f"load_dataset\\('{name}'\\) needs root"):
        load_dataset(name)


def test_well_known_stats_have_one_value_per_channel_in_unit_range() -> None:
    assert set(DATASET_STATS) == {"mnist", "fashion_mnist", "cifar10", "cifar100"}
    expected_channels = {"mnist": 1, "fashion_mnist": 1, "cifar10": 3, "cifar100": 3}
    for name, (mean, std) in DATASET_STATS.items():
        assert len(mean) == len(std) == expected_channels[name]
        assert all(0 < value < 1 for value in (*mean, *std))


def test_channel_stats_by_hand() -> None:
    # Channel 0: half the pixels 0, half 255 -> mean 0.5, std 0.5. Channel 1: all 51 -> mean 0.2, std 0.
    images = np.zeros((2, 2, 1, 2), np.uint8)
    images[0, 0] = 255
    images[:, 1] = 51
    mean, std = channel_stats(Dataset(images, np.zeros(2, np.int32), ("x",), "hand"))
    assert mean == pytest.approx((0.5, 0.2)) and std == pytest.approx((0.5, 0.0), abs=1e-12)


def test_channel_stats_agrees_with_a_float_computation() -> None:
    images = np.random.default_rng(0).integers(0, 256, (50, 3, 6, 7), dtype=np.uint8)
    mean, std = channel_stats(Dataset(images, np.zeros(50, np.int32), ("x",), "random"))
    as_float = images.astype(np.float64) / 255
    assert mean == pytest.approx(tuple(as_float.mean(axis=(0, 2, 3))))
    assert std == pytest.approx(tuple(as_float.std(axis=(0, 2, 3))))


def test_channel_stats_of_nothing_is_an_error() -> None:
    empty = Dataset(np.zeros((0, 1, 2, 2), np.uint8), np.zeros(0, np.int32), ("x",), "empty")
    with pytest.raises(ValueError, match="'empty' is empty"):
        channel_stats(empty)


def test_dataset_stats_uses_constants_when_known_and_computes_otherwise() -> None:
    digits = load_dataset("digits")["train"]
    assert dataset_stats("digits", digits) == channel_stats(digits)
    one_channel = Dataset(np.zeros((1, 1, 2, 2), np.uint8), np.zeros(1, np.int32), ("x",), "mnist")
    assert dataset_stats("mnist", one_channel) == DATASET_STATS["mnist"]
    with pytest.raises(ValueError, match="'cifar10' has 3-channel statistics but its train images have 1"):
        dataset_stats("cifar10", one_channel)


@pytest.mark.realdata
def test_mnist_constants_match_real_mnist(shared_data: Path) -> None:
    mean, std = channel_stats(mnist(shared_data / "mnist-8k")["train"])
    known_mean, known_std = DATASET_STATS["mnist"]
    # 8,000 of the 60,000 train digits: close to, not exactly, the full-set values.
    assert mean[0] == pytest.approx(known_mean[0], abs=0.003) and std[0] == pytest.approx(
        known_std[0], abs=0.003
    )


@pytest.mark.realdata
def test_fashion_mnist_constants_match_the_full_train_split() -> None:
    if not DEBIAN_FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST_DIR} is absent)")
    mean, std = channel_stats(load_dataset("fashion_mnist", DEBIAN_FASHION_MNIST_DIR)["train"])
    known_mean, known_std = DATASET_STATS["fashion_mnist"]
    assert mean[0] == pytest.approx(known_mean[0], abs=5e-5) and std[0] == pytest.approx(
        known_std[0], abs=5e-5
    )
