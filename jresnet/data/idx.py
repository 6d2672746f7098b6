"""The idx format of MNIST and Fashion-MNIST, and loaders for those two datasets.

An idx file is a 4-byte magic (two zero bytes, a dtype code, the number of axes), one big-endian uint32
per axis, then the values in C order, big-endian. The files may be gzipped; the gzip magic decides,
not the file name.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from jresnet.data.dataset import Dataset, describe_array
from jresnet.data.download import FASHION_MNIST_SOURCE, MNIST_SOURCE, OfficialSource, locate_or_fetch

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "fashion_mnist",
    "load_idx_folder",
    "mnist",
    "parse_idx",
    "read_idx",
]

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# (split name, file-name prefix) in the order the official files come.
_SPLIT_PREFIXES = (("train", "train"), ("test", "t10k"))


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one (uncompressed) idx file into a native-endian array of the header's shape.

    ``source`` names the data in error messages. The result may be a read-only view of ``data``.

    Raises:
        ValueError: bad magic, unknown dtype code, or a payload whose size disagrees with the header.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: {len(data)} bytes is too short for an idx file (4-byte magic expected)")
    zero_a, zero_b, dtype_code, ndim = data[:4]
    if zero_a or zero_b:
        raise ValueError(f"{source}: not an idx file: magic starts with 0x{data[:2].hex()}, expected 0x0000")
    if dtype_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_DTYPES)
        raise ValueError(f"{source}: unknown idx dtype code 0x{dtype_code:02X}; expected one of {known}")
    if ndim == 0:
        raise ValueError(f"{source}: idx header declares 0 axes; expected at least 1")
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise ValueError(
            f"{source}: truncated idx header: {ndim} axes need {header_bytes} bytes, file has {len(data)}"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_bytes])
    dtype = _IDX_DTYPES[dtype_code]
    expected_bytes = math.prod(shape) * dtype.itemsize
    payload_bytes = len(data) - header_bytes
    if payload_bytes != expected_bytes:
        raise ValueError(
            f"{source}: idx header declares shape {shape} of {dtype.name} = {expected_bytes} bytes of data, "
            f"but the file holds {payload_bytes}"
        )
    values = np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file, gzipped or raw, into a native-endian numpy array.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: corrupt gzip data or a malformed idx file; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"idx file {path} does not exist")
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{path}: corrupt gzip data: {error}") from None
    return parse_idx(data, source=str(path))


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    """The raw file if present (no decompression needed), else the gzipped one, else None."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_split(folder: Path, prefix: str, *, name: str, class_names: tuple[str, ...]) -> Dataset | None:
    images_stem, labels_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    images_path, labels_path = _find_idx_file(folder, images_stem), _find_idx_file(folder, labels_stem)
    if images_path is None and labels_path is None:
        return None
    if images_path is None or labels_path is None:
        present, missing = (labels_path, images_stem) if images_path is None else (images_path, labels_stem)
        raise FileNotFoundError(
            f"{folder}: found {present.name} but not {missing}[.gz]; a split needs both files"
        )
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"{images_path}: expected uint8 images (N, H, W), found {describe_array(images)}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{labels_path}: expected integer labels (N,), found {describe_array(labels)}")
    if len(images) != len(labels):
        raise ValueError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds "
            f"{len(labels)} labels (in {folder}); expected the same count"
        )
    try:
        return Dataset(images[:, np.newaxis], labels.astype(np.int32), class_names, name)
    except ValueError as error:  # e.g. a label beyond the class list: say which file holds it
        raise ValueError(f"{labels_path}: {error}") from None


def load_idx_folder(folder: str | Path, *, name: str, class_names: tuple[str, ...]) -> dict[str, Dataset]:
    """Load the idx splits in ``folder``: ``{"train": ...}`` plus ``"test"`` when the t10k files are there.

    Images come back as uint8 (N, 1, H, W); labels as int32.

    Raises:
        FileNotFoundError: the train files are missing, or a split has only one of its two files.
        ValueError: a malformed file, or images and labels that disagree.
    """
    folder = Path(folder)
    splits = {}
    for split, prefix in _SPLIT_PREFIXES:
        dataset = _read_split(folder, prefix, name=name, class_names=class_names)
        if dataset is not None:
            splits[split] = dataset
    if "train" not in splits:
        raise FileNotFoundError(
            f"{folder}: no train-images-idx3-ubyte[.gz] / train-labels-idx1-ubyte[.gz]; "
            "the train split is required"
        )
    return splits


def _folder_with_train_files(folder: Path) -> Path | None:
    has_train = _find_idx_file(folder, "train-images-idx3-ubyte") or _find_idx_file(
        folder, "train-labels-idx1-ubyte"
    )
    return folder if has_train else None


def _load_idx_source(
    source: OfficialSource,
    root: str | Path | None,
    download: bool,
    *,
    name: str,
    class_names: tuple[str, ...],
) -> dict[str, Dataset]:
    folder = locate_or_fetch(source, root, download=download, find=_folder_with_train_files)
    return load_idx_folder(folder, name=name, class_names=class_names)


def mnist(root: str | Path | None = None, *, download: bool = False) -> dict[str, Dataset]:
    """Load MNIST from its idx files (gzipped or raw) in ``root``: ``{"train": ..., "test": ...}``.

    ``root`` is the folder holding the files; None means ``default_data_root()/mnist``. The test
    split is returned only when the t10k files are present. Images are uint8 (N, 1, 28, 28).

    Raises:
        DatasetNotFoundError: no train files, and ``download`` is False or the download failed.
    """
    return _load_idx_source(MNIST_SOURCE, root, download, name="mnist", class_names=MNIST_CLASSES)


def fashion_mnist(root: str | Path | None = None, *, download: bool = False) -> dict[str, Dataset]:
    """Load Fashion-MNIST from its idx files in ``root``: ``{"train": ..., "test": ...}``.

    ``root`` is the folder holding the files. None searches ``default_data_root()/fashion_mnist`` and
    then `DEBIAN_FASHION_MNIST_DIR` (``/usr/share/datasets/fashion-mnist``, from Debian's
    ``dataset-fashion-mnist`` package).

    Raises:
        DatasetNotFoundError: no train files, and ``download`` is False or the download failed.
    """
    return _load_idx_source(
        FASHION_MNIST_SOURCE, root, download, name="fashion_mnist", class_names=FASHION_MNIST_CLASSES
    )
