"""Image folders, ``root/<class>/*.png|jpg|jpeg``, decoded once with Pillow and cached as .npz.

Layouts:

- ``root/<class>/<image>`` gives ``{"train": ...}``.
- ``root/train/<class>/<image>`` (and optionally ``root/test/<class>/<image>``) gives one entry per
  split folder. This is the layout of ``cifar10-train-jpeg.tar.gz``.

Classes are the sub-folders' names sorted, and label i is the i-th. Hidden entries (".name") and files
with other suffixes are ignored.

Colour: every image is converted to ``mode``, "RGB" by default, so a folder that mixes grayscale and
colour files still gives one consistent (N, 3, H, W) array; pass ``mode="L"`` for (N, 1, H, W).

Caching: decoding is slow (the 50,000 CIFAR-10 JPEGs take about 13 s on 2 cores), so with a
``cache_dir`` the decoded arrays are saved there as one .npz per split. The cache file's name is a
fingerprint of the file list (relative paths, sizes, modification times) and the mode; any added,
removed, or touched file changes it, and a matching cache is read without opening a single image file.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from jresnet.data.dataset import Dataset

__all__ = ["IMAGE_SUFFIXES", "SPLIT_FOLDERS", "ImageFolderListing", "imagefolder", "list_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_FOLDERS = ("train", "test")
ColorMode = Literal["RGB", "L"]

_CACHE_FORMAT = "jresnet-imagefolder-cache-v1"
# Threads overlap Pillow's C decoding and file reads, which release the GIL. For tiny 32×32 JPEGs the
# Python-level header parsing dominates (~250 µs a file), so there they gain little (0-10% on 2 cores).
_DECODE_THREADS = min(4, os.cpu_count() or 1)
_DECODE_CHUNK = 256


@dataclass(frozen=True, eq=False)  # eq would compare the label arrays elementwise
class ImageFolderListing:
    """The image files of one split folder, sorted by class then file name, with their labels.

    Attributes:
        folder: the split folder.
        relative_paths: ``"<class>/<file>"`` for each image, in label-then-name order.
        labels: int32 label of each image.
        class_names: the classes, in label order.
    """

    folder: Path
    relative_paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def paths(self) -> list[str]:
        """Each image's full path (as str: 50,000 Path objects cost more than the listing itself)."""
        return [os.path.join(self.folder, relative) for relative in self.relative_paths]

    def fingerprint(self, mode: ColorMode) -> str:
        """SHA-256 over the cache format, the mode, and each file's relative path, size and mtime."""
        digest = hashlib.sha256(f"{_CACHE_FORMAT}\nmode={mode}\n".encode())
        for relative, path in zip(self.relative_paths, self.paths, strict=True):
            stat = os.stat(path)
            digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _visible_subfolders(folder: Path, ignore: Collection[Path] = ()) -> list[str]:
    """Names of the sub-folders, sorted, without hidden ones and without any in ``ignore`` (resolved)."""
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    return sorted(name for name in names if (folder / name).resolve() not in ignore)


def _image_names(class_folder: Path) -> list[str]:
    with os.scandir(class_folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.is_file()
            and not entry.name.startswith(".")
            and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
        )


def list_image_folder(
    folder: str | Path, class_names: Sequence[str] | None = None, *, ignore: Collection[Path] = ()
) -> ImageFolderListing:
    """List ``folder/<class>/<image>``; classes are the sorted sub-folders unless ``class_names`` is given.

    With ``class_names`` (a test split reusing the train split's classes), each sub-folder must be one of
    them; a class may be absent. Sub-folders in ``ignore`` (resolved paths, e.g. a cache folder placed
    inside) are skipped.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no class folders, a class folder without images, or an unknown class folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist or is not a directory")
    found_classes = _visible_subfolders(folder, ignore)
    if not found_classes:
        raise ValueError(
            f"{folder}: no class folders; expected {folder}/<class>/<image>{'|'.join(IMAGE_SUFFIXES)}"
        )
    class_names = tuple(found_classes if class_names is None else class_names)
    unknown = sorted(set(found_classes) - set(class_names))
    if unknown:
        raise ValueError(
            f"{folder}: class folder(s) {', '.join(unknown)} are not among the classes {list(class_names)}"
        )
    relative_paths: list[str] = []
    labels: list[int] = []
    for class_name in found_classes:
        image_names = _image_names(folder / class_name)
        if not image_names:
            raise ValueError(f"{folder / class_name}: class folder holds no {'/'.join(IMAGE_SUFFIXES)} files")
        relative_paths.extend(f"{class_name}/{name}" for name in image_names)
        labels.extend([class_names.index(class_name)] * len(image_names))
    return ImageFolderListing(folder, tuple(relative_paths), np.asarray(labels, dtype=np.int32), class_names)


def _decode(path: str, mode: ColorMode) -> np.ndarray:
    """Decode one file to uint8 (C, H, W) in ``mode``."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image if image.mode == mode else image.convert(mode))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path}: cannot decode image: {error}") from None
    return pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _decode_all(files: Sequence[str], mode: ColorMode) -> np.ndarray:
    """Decode every file into one (N, C, H, W) array; all must have the first file's size."""
    first = _decode(files[0], mode)
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first

    def decode_range(indices: range) -> tuple[int, tuple[int, ...]] | None:
        # Returns the first index in the range whose size differs, instead of raising, so the error can
        # name the first such file in sorted order whichever thread finds one first.
        for index in indices:
            pixels = _decode(files[index], mode)
            if pixels.shape != first.shape:
                return index, pixels.shape
            images[index] = pixels
        return None

    chunks = [
        range(start, min(start + _DECODE_CHUNK, len(files))) for start in range(1, len(files), _DECODE_CHUNK)
    ]
    with ThreadPoolExecutor(_DECODE_THREADS) as pool:
        mismatches = [found for found in pool.map(decode_range, chunks) if found is not None]
    if mismatches:
        index, shape = min(mismatches)
        raise ValueError(
            f"{files[index]}: image is {shape[1]}×{shape[2]} (H×W) but the first image, {files[0]}, is "
            f"{first.shape[1]}×{first.shape[2]}; all images in an image folder must have the same size"
        )
    return images


def _read_cache(path: Path, fingerprint: str, listing: ImageFolderListing) -> np.ndarray | None:
    """The cached images if ``path`` holds a complete cache for this fingerprint, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as cached:
            stored_fingerprint = str(cached["fingerprint"])
            images, labels = cached["images"], cached["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        warnings.warn(
            f"ignoring unreadable image-folder cache {path} ({error}); decoding again", stacklevel=3
        )
        return None
    if (
        stored_fingerprint != fingerprint
        or not np.array_equal(labels, listing.labels)
        or len(images) != len(labels)
        or images.dtype != np.uint8
        or images.ndim != 4
    ):
        return None
    return images


def _write_cache(path: Path, fingerprint: str, images: np.ndarray, listing: ImageFolderListing) -> None:
    """Write the cache next to its final name, then rename: a crash never leaves a half file under it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    with partial.open("wb") as handle:
        np.savez(
            handle,
            images=images,
            labels=listing.labels,
            class_names=np.asarray(listing.class_names),
            fingerprint=np.asarray(fingerprint),
        )
    os.replace(partial, path)


def _load_split(listing: ImageFolderListing, cache_dir: Path | None, mode: ColorMode, name: str) -> Dataset:
    if cache_dir is None:
        return Dataset(_decode_all(listing.paths, mode), listing.labels, listing.class_names, name)
    fingerprint = listing.fingerprint(mode)
    cache_path = cache_dir / f"imagefolder-{fingerprint[:32]}.npz"
    images = _read_cache(cache_path, fingerprint, listing)
    if images is None:
        images = _decode_all(listing.paths, mode)
        _write_cache(cache_path, fingerprint, images, listing)
    return Dataset(images, listing.labels, listing.class_names, name)


def _split_folders(root: Path, ignore: Collection[Path]) -> dict[str, Path]:
    """``{"train": root/train, "test": root/test}`` for a split layout, else ``{"train": root}``."""
    train = root / "train"
    if not (train.is_dir() and _visible_subfolders(train, ignore)):
        return {"train": root}
    unexpected = [name for name in _visible_subfolders(root, ignore) if name not in SPLIT_FOLDERS]
    if unexpected:
        raise ValueError(
            f"{root}: found split folder train/ but also {', '.join(unexpected)}; a split layout may hold "
            f"only {' and '.join(f'{split}/' for split in SPLIT_FOLDERS)}"
        )
    return {split: root / split for split in SPLIT_FOLDERS if (root / split).is_dir()}


def imagefolder(
    root: str | Path,
    cache_dir: str | Path | None = None,
    *,
    mode: ColorMode = "RGB",
    name: str | None = None,
) -> dict[str, Dataset]:
    """Load an image folder as ``{"train": ...}`` (and ``"test"`` for a split layout); see the module doc.

    Args:
        root: ``root/<class>/<image>``, or ``root/train/<class>/<image>`` with an optional ``root/test``.
        cache_dir: where decoded arrays are cached as .npz; None decodes on every call.
        mode: "RGB" (3 channels, the default) or "L" (1 channel); every image is converted to it.
        name: the datasets' name; default the folder's name.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no classes, an empty class, an undecodable file, or images of different sizes (the
            message names the first file whose size differs from the first image's).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"imagefolder: mode must be 'RGB' or 'L', got {mode!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    cache_path = None if cache_dir is None else Path(cache_dir).expanduser()
    # A cache folder placed inside the image folder must not be taken for a class or a split.
    ignore = () if cache_path is None else (cache_path.resolve(),)
    dataset_name = name or root.resolve().name
    split_folders = _split_folders(root, ignore)
    train_listing = list_image_folder(split_folders["train"], ignore=ignore)
    splits = {"train": _load_split(train_listing, cache_path, mode, dataset_name)}
    if "test" in split_folders:
        test_listing = list_image_folder(
            split_folders["test"], class_names=train_listing.class_names, ignore=ignore
        )
        splits["test"] = _load_split(test_listing, cache_path, mode, dataset_name)
    return splits
