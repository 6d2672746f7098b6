"""CIFAR-10 and CIFAR-100 from the official "python version" batches, read without running pickle code.

Each batch file is a Python 2 pickle of a dict: ``b"data"`` is a uint8 array (N, 3072) whose rows hold
1024 red, then 1024 green, then 1024 blue values of a 32×32 image in row-major order — exactly
(3, 32, 32) in C order, so a reshape gives the library's (N, C, H, W) layout with no copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jresnet.data.dataset import Dataset, describe_array
from jresnet.data.download import CIFAR10_SOURCE, CIFAR100_SOURCE, OfficialSource, locate_or_fetch
from jresnet.data.safe_pickle import safe_load_pickle

__all__ = ["CIFAR_IMAGE_SHAPE", "cifar10", "cifar100", "read_cifar_batch", "read_cifar_class_names"]

CIFAR_IMAGE_SHAPE = (3, 32, 32)


def _read_pickled_dict(path: Path) -> dict[str, Any]:
    """Load a CIFAR pickle and give its keys as str (the originals' keys are Python 2 str, read as bytes)."""
    entries = safe_load_pickle(path)
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected a pickled dict, found a {type(entries).__name__}")
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in entries.items()}


def _require_keys(path: Path, entries: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in entries]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {', '.join(missing)}; found {', '.join(sorted(map(str, entries)))}"
        )


def read_cifar_batch(path: str | Path, *, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR batch file into (images uint8 (N, 3, 32, 32), labels int32 (N,)).

    ``label_key`` is ``"labels"`` for CIFAR-10 and ``"fine_labels"`` or ``"coarse_labels"`` for CIFAR-100.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafePickleError: the file's pickle asks for anything beyond numpy arrays (nothing was run).
        ValueError: keys, shapes or dtypes are not CIFAR's; the message names the file.
    """
    path = Path(path)
    entries = _read_pickled_dict(path)
    _require_keys(path, entries, ("data", label_key))
    data, labels = entries["data"], np.asarray(entries[label_key])
    row_length = int(np.prod(CIFAR_IMAGE_SHAPE))
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != row_length
    ):
        raise ValueError(
            f"{path}: 'data' must be a uint8 array (N, {row_length}), found {describe_array(data)}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: {label_key!r} must be a list of integers, found {describe_array(labels)}")
    if len(labels) != len(data):
        raise ValueError(
            f"{path}: {len(data)} images but {len(labels)} {label_key!r}; expected the same count"
        )
    return data.reshape(-1, *CIFAR_IMAGE_SHAPE), labels.astype(np.int32)


def read_cifar_class_names(path: str | Path, *, names_key: str) -> tuple[str, ...]:
    """Read the class names stored under ``names_key`` in a CIFAR meta file (``batches.meta`` or ``meta``)."""
    path = Path(path)
    entries = _read_pickled_dict(path)
    _require_keys(path, entries, (names_key,))
    names = entries[names_key]
    if not isinstance(names, list) or not all(isinstance(name, bytes | str) for name in names):
        raise ValueError(f"{path}: {names_key!r} must be a list of strings, found {names!r:.80}")
    return tuple(name.decode("utf-8") if isinstance(name, bytes) else name for name in names)


@dataclass(frozen=True)
class _CifarLayout:
    """Where one CIFAR variant keeps its files and which keys hold its labels."""

    source: OfficialSource
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str

    def find(self, folder: Path) -> Path | None:
        """The batches folder: ``folder/<variant folder>`` as the tarball unpacks, or ``folder`` itself."""
        for candidate in (folder / self.folder, folder):
            if any((candidate / name).is_file() for name in (*self.train_files, self.meta_file)):
                return candidate
        return None

    def load(self, folder: Path) -> dict[str, Dataset]:
        """Read the train split (required), the test split (when present) and the class names."""
        missing = [name for name in (*self.train_files, self.meta_file) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: missing {', '.join(missing)}; {self.source.title} needs {self.source.expected}"
            )
        class_names = read_cifar_class_names(folder / self.meta_file, names_key=self.names_key)
        batches = [read_cifar_batch(folder / name, label_key=self.label_key) for name in self.train_files]
        splits = {"train": self._dataset(folder, batches, class_names)}
        if (folder / self.test_file).is_file():
            test_batch = read_cifar_batch(folder / self.test_file, label_key=self.label_key)
            splits["test"] = self._dataset(folder, [test_batch], class_names)
        return splits

    def _dataset(
        self, folder: Path, batches: list[tuple[np.ndarray, np.ndarray]], class_names: tuple[str, ...]
    ) -> Dataset:
        images = batches[0][0] if len(batches) == 1 else np.concatenate([images for images, _ in batches])
        labels = batches[0][1] if len(batches) == 1 else np.concatenate([labels for _, labels in batches])
        try:
            return Dataset(images, labels, class_names, self.name)
        except ValueError as error:  # e.g. a label beyond the meta file's class list
            raise ValueError(f"{folder}: {error}") from None


_CIFAR10 = _CifarLayout(
    source=CIFAR10_SOURCE,
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{index}" for index in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
)
_CIFAR100 = _CifarLayout(
    source=CIFAR100_SOURCE,
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
)


def _load(layout: _CifarLayout, root: str | Path | None, download: bool) -> dict[str, Dataset]:
    return layout.load(locate_or_fetch(layout.source, root, download=download, find=layout.find))


def cifar10(root: str | Path | None = None, *, download: bool = False) -> dict[str, Dataset]:
    """Load CIFAR-10 from the official python batches: ``{"train": 50,000, "test": 10,000}``.

    ``root`` holds ``cifar-10-batches-py/`` (as the official tarball unpacks) or is that folder; None
    means ``default_data_root()/cifar10``. Images are uint8 (N, 3, 32, 32). ``test`` is returned when
    ``test_batch`` is present.

    Raises:
        DatasetNotFoundError: no batches, and ``download`` is False or the download failed.
        FileNotFoundError: some of the train batches or ``batches.meta`` are missing.
        UnsafePickleError: a file's pickle asks for anything beyond numpy arrays.
    """
    return _load(_CIFAR10, root, download)


def cifar100(root: str | Path | None = None, *, download: bool = False) -> dict[str, Dataset]:
    """Load CIFAR-100 with its 100 fine labels: ``{"train": 50,000, "test": 10,000}``.

    ``root`` holds ``cifar-100-python/`` or is that folder; None means ``default_data_root()/cifar100``.
    Class names come from ``meta``'s ``fine_label_names``.

    Raises:
        DatasetNotFoundError: no files, and ``download`` is False or the download failed.
        FileNotFoundError: ``train`` or ``meta`` is missing.
        UnsafePickleError: a file's pickle asks for anything beyond numpy arrays.
    """
    return _load(_CIFAR100, root, download)
