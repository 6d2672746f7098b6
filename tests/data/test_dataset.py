"""Dataset: validation on construction, derived properties, and subset."""

from __future__ import annotations

import numpy as np
import pytest

from jresnet.data import Dataset


def numbered_dataset(count: int = 6, num_classes: int = 3) -> Dataset:
    """Image i is filled with the value i, so any subset reveals which examples it holds."""
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 2, 3, 4)).copy()
    labels = (np.arange(count) % num_classes).astype(np.int32)
    return Dataset(images, labels, tuple(f"class{i}" for i in range(num_classes)), "numbered")


def test_properties_describe_the_arrays() -> None:
    dataset = numbered_dataset(count=6, num_classes=3)
    assert len(dataset) == 6
    assert dataset.num_classes == 3
    assert dataset.image_shape == (2, 3, 4)


def test_class_names_given_as_list_are_stored_as_tuple() -> None:
    images = np.zeros((2, 1, 2, 2), np.uint8)
    dataset = Dataset(images, np.zeros(2, np.int32), ["a", "b"], "listed")
    assert dataset.class_names == ("a", "b")


def test_repr_is_a_summary_not_the_pixels() -> None:
    text = repr(numbered_dataset())
    assert "numbered" in text and "(2, 3, 4)" in text
    assert len(text) < 200


@pytest.mark.parametrize(
    ("images", "labels", "error", "words"),
    [
        (
            np.zeros((2, 1, 4, 4), np.float32),
            np.zeros(2, np.int32),
            TypeError,
            ["images", "uint8", "float32"],
        ),
        (np.zeros((2, 4, 4), np.uint8), np.zeros(2, np.int32), ValueError, ["images", "4 axes", "(2, 4, 4)"]),
        (np.zeros((2, 1, 4, 4), np.uint8), np.zeros(2, np.int64), TypeError, ["labels", "int32", "int64"]),
        (np.zeros((2, 1, 4, 4), np.uint8), np.zeros((2, 1), np.int32), ValueError, ["labels", "(2, 1)"]),
        (np.zeros((2, 1, 4, 4), np.uint8), np.zeros(3, np.int32), ValueError, ["2 images", "3 labels"]),
        (np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 5], np.int32), ValueError, ["labels[1] = 5", "0..1"]),
        (np.zeros((2, 1, 4, 4), np.uint8), np.array([-1, 0], np.int32), ValueError, ["labels[0] = -1"]),
    ],
)
def test_bad_arrays_are_refused_with_a_message_naming_the_problem(
    images: object, labels: object, error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as raised:
        Dataset(images, labels, ("zero", "one"), "bad")  # type: ignore[arg-type]
    for word in words:
        assert word in str(raised.value)
    assert "\n" not in str(raised.value)


def test_images_that_are_not_an_array_are_a_type_error_naming_images() -> None:
    with pytest.raises(TypeError, match="images"):
        Dataset([[0]], np.zeros(1, np.int32), ("zero",), "bad")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("class_names", "error"), [((), ValueError), ("ab", TypeError), (("a", 1), TypeError)]
)
def test_bad_class_names_are_refused(class_names: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="class_names"):
        Dataset(np.zeros((1, 1, 2, 2), np.uint8), np.zeros(1, np.int32), class_names, "bad")  # type: ignore[arg-type]


def test_subset_takes_the_given_examples_in_the_given_order() -> None:
    dataset = numbered_dataset(count=6, num_classes=3)
    picked = dataset.subset([4, 1, 1])
    assert [int(image[0, 0, 0]) for image in picked.images] == [4, 1, 1]
    assert picked.labels.tolist() == [1, 1, 1]
    assert picked.class_names == dataset.class_names and picked.name == dataset.name


def test_subset_of_nothing_is_an_empty_dataset() -> None:
    empty = numbered_dataset().subset([])
    assert len(empty) == 0 and empty.image_shape == (2, 3, 4)


def test_subset_refuses_out_of_range_and_non_integer_indices() -> None:
    dataset = numbered_dataset(count=6)
    with pytest.raises(IndexError, match=r"indices\[1\] = 6 is outside 0..5"):
        dataset.subset([0, 6])
    with pytest.raises(TypeError, match="integers"):
        dataset.subset(np.array([0.0, 1.0]))


def test_datasets_compare_by_identity_not_elementwise() -> None:
    dataset = numbered_dataset()
    assert dataset == dataset
    assert dataset != numbered_dataset()
