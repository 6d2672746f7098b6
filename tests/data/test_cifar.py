"""CIFAR-10 / CIFAR-100 loaders on batch files written here in the originals' Python 2 pickle format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from jresnet.data import DatasetNotFoundError, UnsafePickleError, cifar10, cifar100, read_cifar_batch

from .format_writers import (
    CIFAR10_NAMES,
    cifar_rows,
    write_cifar10_batches,
    write_py2_pickle,
    write_py3_pickle,
)


class RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_cifar10_reads_five_train_batches_and_the_test_batch(tmp_path: Path) -> None:
    written = write_cifar10_batches(tmp_path / "cifar-10-batches-py", per_batch=8)

    splits = cifar10(tmp_path)

    train, test = splits["train"], splits["test"]
    assert train.images.shape == (40, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (8, 3, 32, 32)
    assert np.array_equal(train.labels, written["train"][1]) and train.labels.dtype == np.int32
    assert np.array_equal(test.labels, written["test"][1])
    assert train.class_names == tuple(name.decode() for name in CIFAR10_NAMES)
    assert train.name == "cifar10"


def test_rows_become_red_green_blue_planes(tmp_path: Path) -> None:
    """Each written row is 1024 red, 1024 green, 1024 blue values; image k has red k, green k+1, blue k+2."""
    write_cifar10_batches(tmp_path, per_batch=4)
    images = cifar10(tmp_path)["train"].images.astype(int)
    for k in (0, 5, 19):
        assert np.all(images[k, 0] == k) and np.all(images[k, 1] == k + 1) and np.all(images[k, 2] == k + 2)


def test_root_may_be_the_batches_folder_itself(tmp_path: Path) -> None:
    write_cifar10_batches(tmp_path / "cifar-10-batches-py", per_batch=2)
    assert len(cifar10(tmp_path / "cifar-10-batches-py")["train"]) == 10


def test_pickles_written_by_python3_load_too(tmp_path: Path) -> None:
    written = write_cifar10_batches(tmp_path, per_batch=3, writer=write_py3_pickle)
    train = cifar10(tmp_path)["train"]
    assert np.array_equal(train.images.reshape(15, -1), written["train"][0])


def test_without_test_batch_only_train_is_returned(tmp_path: Path) -> None:
    write_cifar10_batches(tmp_path, per_batch=2, with_test=False)
    assert list(cifar10(tmp_path)) == ["train"]


def test_cifar100_uses_fine_labels_and_fine_label_names(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    fine_names = [f"fine{i}".encode() for i in range(100)]
    fine, coarse = [99, 0, 42], [19, 0, 7]
    write_py2_pickle(folder / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": [b"c"] * 20})
    write_py2_pickle(
        folder / "train", {b"data": cifar_rows(0, 3), b"fine_labels": fine, b"coarse_labels": coarse}
    )
    train = cifar100(tmp_path)["train"]
    assert train.labels.tolist() == fine and train.num_classes == 100 and train.class_names[42] == "fine42"
    assert list(cifar100(tmp_path)) == ["train"]


def test_a_missing_train_batch_is_named(tmp_path: Path) -> None:
    write_cifar10_batches(tmp_path, per_batch=2)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing data_batch_3; CIFAR-10 needs"):
        cifar10(tmp_path)


def test_a_malicious_batch_file_is_refused_before_running(tmp_path: Path) -> None:
    write_cifar10_batches(tmp_path, per_batch=2)
    marker = tmp_path / "pwned"
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(RunsShellCommand(f"touch {marker}"), protocol=2))
    with pytest.raises(UnsafePickleError, match=r"data_batch_2: refused to load global \w+\.system"):
        cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("batch", "words"),
    [
        ({b"labels": [1]}, ["missing key(s) data", "found labels"]),
        ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [1, 2]}, ["(N, 3072)", "(2, 1024)"]),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, ["uint8", "float32"]),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, ["2 images but 1"]),
        ({b"data": np.zeros((1, 3072), np.uint8), b"labels": ["cat"]}, ["list of integers"]),
        ([1, 2, 3], ["expected a pickled dict", "list"]),
    ],
)
def test_malformed_batches_are_refused_naming_the_file(
    tmp_path: Path, batch: object, words: list[str]
) -> None:
    path = write_py2_pickle(tmp_path / "data_batch_1", batch)
    with pytest.raises(ValueError) as raised:
        read_cifar_batch(path, label_key="labels")
    assert str(raised.value).startswith(f"{path}: ")
    for word in words:
        assert word in str(raised.value)


def test_a_label_beyond_the_meta_classes_is_refused(tmp_path: Path) -> None:
    write_cifar10_batches(tmp_path, per_batch=2)
    write_py2_pickle(tmp_path / "data_batch_1", {b"data": cifar_rows(0, 2), b"labels": [0, 10]})
    with pytest.raises(ValueError, match=r"labels\[1\] = 10 is outside 0..9"):
        cifar10(tmp_path)


def test_missing_cifar_says_which_tarball_to_unpack_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as raised:
        cifar100(tmp_path / "nowhere")
    message = str(raised.value)
    assert "\n" not in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert f"unpack it into {tmp_path / 'nowhere'}" in message
