"""The idx format and the MNIST / Fashion-MNIST loaders, on idx files written here and on real ones."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pytest

from jresnet.data import (
    DEBIAN_FASHION_MNIST_DIR,
    DatasetNotFoundError,
    fashion_mnist,
    mnist,
    parse_idx,
    read_idx,
)
from jresnet.data import idx as idx_module

from .format_writers import idx_bytes, random_idx_split, write_idx, write_idx_split


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty default data root, so root=None never finds files on this machine by accident."""
    root = tmp_path / "data-root"
    monkeypatch.setenv("JRESNET_DATA_DIR", str(root))
    return root


@pytest.mark.parametrize("gzipped", [False, True], ids=["raw", "gzip"])
def test_mnist_reads_train_and_test_splits_exactly(tmp_path: Path, gzipped: bool) -> None:
    rng = np.random.default_rng(0)
    train_images, train_labels = random_idx_split(rng, 30)
    test_images, test_labels = random_idx_split(rng, 7)
    write_idx_split(tmp_path, "train", train_images, train_labels, gzipped=gzipped)
    write_idx_split(tmp_path, "t10k", test_images, test_labels, gzipped=gzipped)

    splits = mnist(tmp_path)

    assert sorted(splits) == ["test", "train"]
    assert splits["train"].images.shape == (30, 1, 28, 28) and splits["train"].images.dtype == np.uint8
    assert np.array_equal(splits["train"].images[:, 0], train_images)
    assert np.array_equal(splits["train"].labels, train_labels) and splits["train"].labels.dtype == np.int32
    assert np.array_equal(splits["test"].images[:, 0], test_images)
    assert np.array_equal(splits["test"].labels, test_labels)
    assert splits["train"].class_names == tuple("0123456789") and splits["train"].name == "mnist"


def test_without_t10k_files_only_train_is_returned(tmp_path: Path) -> None:
    write_idx_split(tmp_path, "train", *random_idx_split(np.random.default_rng(1), 5), gzipped=True)
    assert list(mnist(tmp_path)) == ["train"]


def test_gzip_is_detected_by_content_not_file_name(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    misnamed = tmp_path / "images-idx3-ubyte"  # gzipped bytes without a .gz suffix
    misnamed.write_bytes(gzip.compress(idx_bytes(images)))
    assert np.array_equal(read_idx(misnamed), images)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_every_idx_dtype_round_trips_in_native_byte_order(dtype: type) -> None:
    values = (np.arange(24) - 12).reshape(2, 3, 4)
    array = values.astype(np.uint8) if dtype is np.uint8 else values.astype(dtype)
    decoded = parse_idx(idx_bytes(array))
    assert decoded.dtype == np.dtype(dtype)  # native order, whatever the file's big-endian layout
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x00\x00", ["too short"]),
        (b"\x01\x02\x08\x01" + b"\x00\x00\x00\x01" + b"\x05", ["magic", "0x0102"]),
        (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x05", ["dtype code 0x07"]),
        (b"\x00\x00\x08\x00", ["0 axes"]),
        (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02", ["truncated idx header", "16 bytes"]),
        (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x05" + b"\x01\x02", ["(5,)", "5 bytes", "holds 2"]),
    ],
    ids=["short", "magic", "dtype", "rank0", "header", "payload"],
)
def test_malformed_idx_bytes_are_refused_with_the_reason(data: bytes, words: list[str]) -> None:
    with pytest.raises(ValueError) as raised:
        parse_idx(data, source="example.idx")
    message = str(raised.value)
    assert message.startswith("example.idx: ")
    for word in words:
        assert word in message


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))[:-20])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz: corrupt gzip data"):
        read_idx(path)


def test_missing_idx_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_idx(tmp_path / "nothing-here")


def test_a_split_with_images_but_no_labels_names_the_missing_file(tmp_path: Path) -> None:
    images, _ = random_idx_split(np.random.default_rng(2), 4)
    write_idx(tmp_path / "train-images-idx3-ubyte", images, gzipped=True)
    with pytest.raises(FileNotFoundError, match=r"not train-labels-idx1-ubyte\[\.gz\]"):
        mnist(tmp_path)


def test_image_and_label_counts_must_agree(tmp_path: Path) -> None:
    images, labels = random_idx_split(np.random.default_rng(3), 6)
    write_idx_split(tmp_path, "train", images, labels[:5], gzipped=False)
    with pytest.raises(ValueError, match="6 images but train-labels-idx1-ubyte holds 5 labels"):
        mnist(tmp_path)


def test_images_of_the_wrong_rank_are_refused(tmp_path: Path) -> None:
    write_idx_split(tmp_path, "train", np.zeros((3, 784), np.uint8), np.zeros(3, np.uint8), gzipped=False)
    with pytest.raises(
        ValueError, match=r"expected uint8 images \(N, H, W\), found a uint8 array of shape \(3, 784\)"
    ):
        mnist(tmp_path)


def test_a_label_outside_the_classes_names_the_labels_file(tmp_path: Path) -> None:
    images, labels = random_idx_split(np.random.default_rng(4), 4)
    labels[2] = 12
    write_idx_split(tmp_path, "train", images, labels, gzipped=True)
    with pytest.raises(ValueError, match=r"train-labels-idx1-ubyte\.gz: .*labels\[2\] = 12"):
        mnist(tmp_path)


def test_missing_dataset_says_what_to_put_where_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as raised:
        mnist(empty)
    message = str(raised.value)
    assert "\n" not in message
    assert isinstance(raised.value, FileNotFoundError)
    for expected in (
        str(empty),
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "https://",
        "download=True",
    ):
        assert expected in message


def test_root_none_reads_the_default_data_root(data_root: Path) -> None:
    images, labels = random_idx_split(np.random.default_rng(5), 3)
    write_idx_split(data_root / "mnist", "train", images, labels, gzipped=True)
    assert np.array_equal(mnist()["train"].images[:, 0], images)


def test_fashion_mnist_prefers_the_default_data_root_over_debians_folder(data_root: Path) -> None:
    images, labels = random_idx_split(np.random.default_rng(6), 3)
    write_idx_split(data_root / "fashion_mnist", "train", images, labels, gzipped=False)
    train = fashion_mnist()["train"]
    assert len(train) == 3 and train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"


def test_fashion_mnist_not_found_lists_both_folders_and_the_debian_package(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Point the system folder somewhere empty, so the test means the same with or without the package.
    absent_system = tmp_path / "usr-share-datasets-fashion-mnist"
    source = dataclasses.replace(idx_module.FASHION_MNIST_SOURCE, system_folders=(absent_system,))
    monkeypatch.setattr(idx_module, "FASHION_MNIST_SOURCE", source)
    with pytest.raises(DatasetNotFoundError) as raised:
        fashion_mnist()
    message = str(raised.value)
    assert "\n" not in message
    assert f"{data_root / 'fashion_mnist'} or {absent_system}" in message
    assert "apt-get install dataset-fashion-mnist" in message


@pytest.mark.realdata
def test_real_mnist_8k_from_the_shared_folder(shared_data: Path) -> None:
    splits = mnist(shared_data / "mnist-8k")
    train = splits["train"]
    assert list(splits) == ["train"] and train.images.shape == (8000, 1, 28, 28)
    assert set(np.unique(train.labels)) == set(range(10))
    # Real handwriting: mostly black background, a stroke that reaches full white.
    assert 0.10 < train.images.mean() / 255 < 0.16 and train.images.max() == 255


@pytest.mark.realdata
def test_real_fashion_mnist_from_the_debian_package(data_root: Path) -> None:
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(
            f"Debian's dataset-fashion-mnist is not installed (no files in {DEBIAN_FASHION_MNIST_DIR})"
        )
    splits = fashion_mnist()  # root=None: the data root is empty, so this reads Debian's folder
    assert len(splits["train"]) == 60_000 and len(splits["test"]) == 10_000
    assert splits["train"].image_shape == (1, 28, 28)
    assert np.array_equal(
        np.bincount(splits["test"].labels), np.full(10, 1000)
    )  # balanced official test split
