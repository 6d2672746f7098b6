"""Writers for the real on-disk formats the data loaders read: idx, CIFAR pickles (Python 2 style).

They are written from the formats' specifications, independently of the readers under test, so a
reader bug cannot hide behind a matching writer bug.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Big-endian dtypes and the idx type codes the format assigns them.
_IDX_CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as an idx file: 0x0000, type code, rank, big-endian uint32 dims, big-endian data."""
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    code = _IDX_CODES[big_endian.str.lstrip("|")]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(big_endian).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gzipped: bool) -> Path:
    """Write an idx file (gzipped when asked, then ``.gz`` is appended to ``path``)."""
    data = idx_bytes(array)
    if gzipped:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_idx_split(
    folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, *, gzipped: bool
) -> None:
    """Write ``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` as MNIST does."""
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gzipped=gzipped)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gzipped=gzipped)


def random_idx_split(rng: np.random.Generator, count: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images (count, size, size) and uint8 labels 0..9, as MNIST stores them."""
    images = rng.integers(0, 256, size=(count, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


class Py2StylePickler(pickle._Pickler):
    """Writes pickles the way Python 2's cPickle wrote the CIFAR files.

    Python 2 ``str`` (both text and bytes) was stored with the STRING opcodes, and numpy named its array
    reconstructor ``numpy.core.multiarray``. Python 3 at protocol 2 instead spells bytes as
    ``_codecs.encode(...)`` calls, so this pure-Python pickler is needed to reproduce the originals.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        if module in ("numpy", "numpy._core.multiarray"):
            module = "numpy" if module == "numpy" else "numpy.core.multiarray"
            self.write(pickle.GLOBAL + f"{module}\n{name or obj.__name__}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)

    dispatch[type] = save_global


def write_py2_pickle(path: Path, obj: Any) -> Path:
    """Pickle ``obj`` at protocol 2 the way Python 2 did (see `Py2StylePickler`)."""
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


def write_py3_pickle(path: Path, obj: Any) -> Path:
    """Pickle ``obj`` with Python 3's own pickler at protocol 2 (bytes become ``_codecs.encode`` calls)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return path


def cifar_rows(first_id: int, count: int) -> np.ndarray:
    """CIFAR ``data`` rows whose image k has red = id, green = id + 1, blue = id + 2 (mod 256) everywhere.

    A row is 1024 red, 1024 green, 1024 blue values; a reader that gets the layout wrong mixes them.
    """
    ids = (first_id + np.arange(count)) % 256
    planes = [np.repeat(((ids + offset) % 256)[:, None], 1024, axis=1) for offset in range(3)]
    return np.concatenate(planes, axis=1).astype(np.uint8)


CIFAR10_NAMES = [
    b"airplane",
    b"automobile",
    b"bird",
    b"cat",
    b"deer",
    b"dog",
    b"frog",
    b"horse",
    b"ship",
    b"truck",
]


def write_cifar10_batches(
    folder: Path,
    *,
    per_batch: int,
    with_test: bool = True,
    writer: Callable[[Path, Any], Path] = write_py2_pickle,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write a CIFAR-10 ``cifar-10-batches-py`` folder; return the written (rows, labels) per split."""
    rng = np.random.default_rng(10)
    written = {}
    train_rows, train_labels = [], []
    for index in range(1, 6):
        rows = cifar_rows(first_id=(index - 1) * per_batch, count=per_batch)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        writer(
            folder / f"data_batch_{index}",
            {b"batch_label": f"training batch {index} of 5".encode(), b"labels": labels, b"data": rows},
        )
        train_rows.append(rows)
        train_labels.extend(labels)
    written["train"] = (np.concatenate(train_rows), np.asarray(train_labels))
    if with_test:
        rows = cifar_rows(first_id=200, count=per_batch)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        writer(
            folder / "test_batch", {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": rows}
        )
        written["test"] = (rows, np.asarray(labels))
    writer(folder / "batches.meta", {b"label_names": CIFAR10_NAMES, b"num_cases_per_batch": per_batch})
    return written
