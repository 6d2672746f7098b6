"""Datasets saved by hand as one .npz file: ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test``
and ``class_names``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from jresnet.data.dataset import Dataset, describe_array

__all__ = ["npz"]

_SPLIT_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}
_CHANNEL_COUNTS = (1, 3, 4)


def _as_nchw(images: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Check uint8 and give (N, C, H, W); (N, H, W) gets a channel axis. NHWC is refused with the fix."""
    if images.dtype != np.uint8:
        raise TypeError(
            f"{path}: {key!r} must be uint8 images (0..255), found {describe_array(images)}; "
            "scale and cast with .astype(np.uint8) before saving"
        )
    if images.ndim == 3:
        return images[:, np.newaxis]
    if images.ndim != 4:
        raise ValueError(f"{path}: {key!r} must be (N, C, H, W) or (N, H, W), found shape {images.shape}")
    if images.shape[-1] in _CHANNEL_COUNTS and images.shape[1] not in _CHANNEL_COUNTS:
        raise ValueError(
            f"{path}: {key!r} has shape {images.shape}, which looks like (N, H, W, C); jresnet expects "
            "(N, C, H, W): save images.transpose(0, 3, 1, 2)"
        )
    return images


def _as_labels(labels: np.ndarray, key: str, path: Path, count: int) -> np.ndarray:
    """Check integer labels, one per image, (N,) or (N, 1), and give int32 (N,)."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{path}: {key!r} must hold integer labels, found {describe_array(labels)}")
    if labels.ndim == 2 and labels.shape[1] == 1:  # Keras saves labels as (N, 1)
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != count:
        raise ValueError(
            f"{path}: {key!r} must have shape ({count},), one label per image, found {labels.shape}"
        )
    if count and (labels.min() < 0 or labels.max() > np.iinfo(np.int32).max):
        raise ValueError(
            f"{path}: {key!r} labels must lie in 0..2**31-1, found {labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int32)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable .npz file: {error}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path}: holds a single array (.npy); expected an .npz archive with x_train and y_train"
        )
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except ValueError as error:  # object arrays need pickle, which stays off
            raise ValueError(f"{path}: {error}; save plain numeric and string arrays") from None


def _class_names(arrays: dict[str, np.ndarray], labels: list[np.ndarray], path: Path) -> tuple[str, ...]:
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise ValueError(
                f"{path}: 'class_names' must be a 1-D array of strings, found {describe_array(names)}"
            )
        return tuple(str(name) for name in names.tolist())
    highest = max((int(split_labels.max()) for split_labels in labels if split_labels.size), default=0)
    return tuple(str(index) for index in range(highest + 1))


def npz(path: str | Path, *, name: str | None = None) -> dict[str, Dataset]:
    """Load ``{"train": ...}`` (and ``"test"`` when ``x_test``/``y_test`` are present) from an .npz file.

    Images must be uint8, (N, C, H, W) or (N, H, W) (given one channel); labels integers, (N,) or
    (N, 1). ``class_names`` (1-D strings) is optional; without it classes are "0" .. str(max label).
    The datasets' name defaults to the file's stem.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        TypeError: images not uint8, or labels not integers.
        ValueError: missing arrays, wrong shapes (NHWC is named as such), or an unreadable file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz file {path} does not exist")
    arrays = _read_arrays(path)
    missing = [key for key in _SPLIT_KEYS["train"] if key not in arrays]
    test_keys = [key for key in _SPLIT_KEYS["test"] if key in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing {', '.join(missing)}; found arrays {', '.join(sorted(arrays)) or 'none'}"
        )
    if len(test_keys) == 1:
        raise ValueError(
            f"{path}: found {test_keys[0]} without its partner; the test split needs x_test and y_test"
        )
    splits_present = [split for split, (x_key, _) in _SPLIT_KEYS.items() if x_key in arrays]
    images, labels = {}, {}
    for split in splits_present:
        x_key, y_key = _SPLIT_KEYS[split]
        images[split] = _as_nchw(arrays[x_key], x_key, path)
        labels[split] = _as_labels(arrays[y_key], y_key, path, len(images[split]))
    class_names = _class_names(arrays, list(labels.values()), path)
    dataset_name = name or path.stem
    splits = {}
    for split in splits_present:
        try:
            splits[split] = Dataset(images[split], labels[split], class_names, dataset_name)
        except ValueError as error:  # e.g. a label beyond class_names
            raise ValueError(f"{path} ({split} split): {error}") from None
    return splits
