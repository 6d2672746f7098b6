"""npz(): x_train/y_train (+ optional test split and class names) saved with numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jresnet.data import npz


def save(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_nchw_arrays_with_test_split_and_class_names(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (6, 3, 4, 5), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    path = save(
        tmp_path / "toy.npz",
        x_train=x_train,
        y_train=np.array([0, 1, 2, 0, 1, 2], np.int64),
        x_test=x_test,
        y_test=np.array([2, 0], np.uint8),
        class_names=np.array(["red", "green", "blue"]),
    )
    splits = npz(path)
    assert sorted(splits) == ["test", "train"]
    assert np.array_equal(splits["train"].images, x_train) and np.array_equal(splits["test"].images, x_test)
    assert splits["train"].labels.dtype == np.int32 and splits["test"].labels.tolist() == [2, 0]
    assert splits["train"].class_names == ("red", "green", "blue") and splits["train"].name == "toy"


def test_nhw_images_get_a_channel_axis_and_n1_labels_are_flattened(tmp_path: Path) -> None:
    x_train = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    path = save(tmp_path / "gray.npz", x_train=x_train, y_train=np.array([[1], [0]]))
    train = npz(path)["train"]
    assert train.images.shape == (2, 1, 3, 3) and np.array_equal(train.images[:, 0], x_train)
    assert train.labels.tolist() == [1, 0]


def test_without_class_names_classes_run_to_the_highest_label(tmp_path: Path) -> None:
    path = save(
        tmp_path / "d.npz",
        x_train=np.zeros((2, 1, 2, 2), np.uint8),
        y_train=np.array([0, 2]),
        x_test=np.zeros((1, 1, 2, 2), np.uint8),
        y_test=np.array([4]),
    )
    assert npz(path)["train"].class_names == ("0", "1", "2", "3", "4")


@pytest.mark.parametrize(
    ("arrays", "error", "words"),
    [
        (
            {"x_train": np.zeros((2, 8, 8, 3), np.uint8), "y_train": np.zeros(2, int)},
            ValueError,
            ["(N, H, W, C)"],
        ),
        ({"x_train": np.zeros((2, 1, 4, 4), np.float32), "y_train": np.zeros(2, int)}, TypeError, ["uint8"]),
        (
            {"x_train": np.zeros((2, 1, 4, 4), np.uint8), "y_train": np.zeros(2)},
            TypeError,
            ["integer labels"],
        ),
        ({"x_train": np.zeros((2, 1, 4, 4), np.uint8), "y_train": np.zeros(3, int)}, ValueError, ["(2,)"]),
        ({"x_train": np.zeros((2, 1, 4, 4), np.uint8), "y_train": np.array([0, -1])}, ValueError, ["-1"]),
        ({"x_train": np.zeros((2, 4), np.uint8), "y_train": np.zeros(2, int)}, ValueError, ["(N, C, H, W)"]),
        (
            {"x_train": np.zeros((2, 1, 4, 4), np.uint8)},
            ValueError,
            ["missing y_train", "found arrays x_train"],
        ),
        (
            {
                "x_train": np.zeros((1, 1, 2, 2), np.uint8),
                "y_train": [0],
                "x_test": np.zeros((1, 1, 2, 2), np.uint8),
            },
            ValueError,
            ["x_test without its partner"],
        ),
        (
            {
                "x_train": np.zeros((1, 1, 2, 2), np.uint8),
                "y_train": [3],
                "class_names": np.array(["a", "b"]),
            },
            ValueError,
            ["train split", "labels[0] = 3"],
        ),
    ],
    ids=[
        "nhwc",
        "float-images",
        "float-labels",
        "count",
        "negative",
        "rank2",
        "no-y",
        "half-test",
        "class-range",
    ],
)
def test_bad_contents_get_errors_naming_the_file_and_array(
    tmp_path: Path, arrays: dict[str, object], error: type[Exception], words: list[str]
) -> None:
    path = save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(error) as raised:
        npz(path)
    assert str(path) in str(raised.value)
    for word in words:
        assert word in str(raised.value)


def test_object_arrays_are_refused_without_unpickling(tmp_path: Path) -> None:
    path = save(tmp_path / "obj.npz", x_train=np.zeros((1, 1, 2, 2), np.uint8), y_train=np.array([0], object))
    with pytest.raises(ValueError, match="allow_pickle"):
        npz(path)


def test_not_an_npz_archive(tmp_path: Path) -> None:
    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        npz(single)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 this is no zip")
    with pytest.raises(ValueError, match="not a readable .npz file"):
        npz(garbage)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        npz(tmp_path / "absent.npz")
