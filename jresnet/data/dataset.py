"""`Dataset`: a labelled set of uint8 images in the library's (N, C, H, W) layout, held in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "describe_array"]


def describe_array(array: object) -> str:
    """Describe what a caller passed in the words an error message needs: dtype and shape, or the type."""
    if isinstance(array, np.ndarray):
        return f"a {array.dtype} array of shape {array.shape}"
    return f"a {type(array).__name__}"


# eq=False: the default __eq__ would compare arrays elementwise and then fail on `bool(array)`.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and integer labels for one split of one dataset.

    Attributes:
        images: uint8 array (N, C, H, W), pixel values 0..255.
        labels: int32 array (N,), each in ``0 .. num_classes - 1``.
        class_names: one name per class; ``labels`` index into it. Any sequence of str is accepted
            and stored as a tuple.
        name: the dataset's name, such as ``"mnist"``; splits and subsets keep it.

    Construction validates dtypes, ranks, lengths and the label range, and raises `TypeError` or
    `ValueError` naming the field, what was expected and what was seen.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: Sequence[str]
    name: str

    def __post_init__(self) -> None:
        if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
            raise TypeError(
                f"Dataset {self.name!r}: class_names must be a sequence of str, "
                f"got {type(self.class_names).__name__}"
            )
        # Accept any sequence (a list from a loader) but store a tuple, so the frozen dataclass stays frozen.
        object.__setattr__(self, "class_names", tuple(self.class_names))
        self._check_images()
        self._check_labels()
        self._check_class_names()
        self._check_label_range()

    def _check_images(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise TypeError(
                f"Dataset {self.name!r}: images must be a uint8 numpy array (N, C, H, W), "
                f"got {describe_array(images)}"
            )
        if images.ndim != 4:
            raise ValueError(
                f"Dataset {self.name!r}: images must have 4 axes (N, C, H, W), got shape {images.shape}"
            )

    def _check_labels(self) -> None:
        labels = self.labels
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int32:
            raise TypeError(
                f"Dataset {self.name!r}: labels must be an int32 numpy array (N,), "
                f"got {describe_array(labels)}"
            )
        if labels.ndim != 1:
            raise ValueError(f"Dataset {self.name!r}: labels must have 1 axis (N,), got shape {labels.shape}")
        if len(labels) != len(self.images):
            raise ValueError(
                f"Dataset {self.name!r}: {len(self.images)} images but {len(labels)} labels; "
                "expected one label per image"
            )

    def _check_class_names(self) -> None:
        if not self.class_names:
            raise ValueError(f"Dataset {self.name!r}: class_names is empty; expected at least one class")
        bad = [name for name in self.class_names if not isinstance(name, str)]
        if bad:
            raise TypeError(
                f"Dataset {self.name!r}: class_names must all be str, got {type(bad[0]).__name__} {bad[0]!r}"
            )

    def _check_label_range(self) -> None:
        out_of_range = np.flatnonzero((self.labels < 0) | (self.labels >= len(self.class_names)))
        if out_of_range.size:
            index = int(out_of_range[0])
            raise ValueError(
                f"Dataset {self.name!r}: labels[{index}] = {int(self.labels[index])} is outside "
                f"0..{len(self.class_names) - 1} for {len(self.class_names)} classes"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(class_names)``, whether or not every class occurs in this split."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one image, (C, H, W)."""
        channels, height, width = self.images.shape[1:]
        return (channels, height, width)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        # The default repr would print every pixel.
        return (
            f"Dataset(name={self.name!r}, examples={len(self)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )

    def subset(self, indices: Sequence[int] | np.ndarray) -> Dataset:
        """Return the examples at ``indices`` (integers, in that order, repeats allowed) as a new Dataset.

        Raises:
            TypeError: ``indices`` is not a 1-D sequence of integers.
            IndexError: an index is outside ``-len(self) .. len(self) - 1``.
        """
        index_array = np.asarray(indices)
        if index_array.size == 0:
            index_array = index_array.astype(np.int64)  # np.asarray([]) is float64
        if index_array.ndim != 1 or not np.issubdtype(index_array.dtype, np.integer):
            raise TypeError(
                "Dataset.subset: indices must be a 1-D sequence of integers, "
                f"got {describe_array(index_array)}"
            )
        out_of_range = np.flatnonzero((index_array < -len(self)) | (index_array >= len(self)))
        if out_of_range.size:
            position = int(out_of_range[0])
            raise IndexError(
                f"Dataset.subset: indices[{position}] = {int(index_array[position])} is outside "
                f"0..{len(self) - 1} for dataset {self.name!r} of {len(self)} examples"
            )
        return Dataset(
            images=self.images[index_array],
            labels=self.labels[index_array],
            class_names=self.class_names,
            name=self.name,
        )
