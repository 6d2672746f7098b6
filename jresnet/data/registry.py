"""The named datasets: one loader per name, and the normalisation statistics each trains with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jresnet.data.cifar import cifar10, cifar100
from jresnet.data.dataset import Dataset
from jresnet.data.digits import digits
from jresnet.data.idx import fashion_mnist, mnist
from jresnet.data.imagefolder import imagefolder
from jresnet.data.npz import npz
from jresnet.data.stats import ChannelStats, channel_stats

__all__ = ["DATASET_NAMES", "DATASET_STATS", "dataset_stats", "load_dataset"]

Root = str | Path | None
_Loader = Callable[[Root, Root, bool], dict[str, Dataset]]


def _require_root(name: str, root: Root, what: str) -> Path:
    if root is None:
        raise ValueError(f"load_dataset({name!r}) needs root: {what}")
    return Path(root)


# Each entry adapts one source to load_dataset's (root, cache_dir, download) call; a source ignores the
# arguments it has no use for (digits is bundled, image folders and .npz files are never downloaded).
_LOADERS: dict[str, _Loader] = {
    "digits": lambda root, cache_dir, download: digits(),
    "mnist": lambda root, cache_dir, download: mnist(root, download=download),
    "fashion_mnist": lambda root, cache_dir, download: fashion_mnist(root, download=download),
    "cifar10": lambda root, cache_dir, download: cifar10(root, download=download),
    "cifar100": lambda root, cache_dir, download: cifar100(root, download=download),
    "imagefolder": lambda root, cache_dir, download: imagefolder(
        _require_root("imagefolder", root, "the folder holding <class>/<image> or train/<class>/<image>"),
        cache_dir,
    ),
    "npz": lambda root, cache_dir, download: npz(_require_root("npz", root, "the path of the .npz file")),
}

DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)
"""The names `load_dataset` knows."""

DATASET_STATS: dict[str, ChannelStats] = {
    # Per-channel mean and std of the official train split, in [0, 1] units. The CIFAR-10 std is the
    # per-pixel one (0.247, 0.243, 0.261); the widely copied (0.2023, 0.1994, 0.2010) is not a pixel std.
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""Well-known normalisation constants; other datasets get theirs from `channel_stats` via `dataset_stats`."""


def load_dataset(
    name: str, root: Root = None, cache_dir: Root = None, *, download: bool = False
) -> dict[str, Dataset]:
    """Load the dataset called ``name`` as ``{"train": Dataset, "test": Dataset}`` (test where it exists).

    Args:
        name: one of `DATASET_NAMES`.
        root: the dataset's folder (for "npz", the file); None uses the default location, except for
            "imagefolder" and "npz", which need it. "digits" ignores it.
        cache_dir: where "imagefolder" caches decoded images; the others ignore it.
        download: fetch official files that are missing (mnist, fashion_mnist, cifar10, cifar100).

    Raises:
        ValueError: an unknown name (the message lists the known ones), or a missing required root.
        DatasetNotFoundError: the files are not there and were not downloaded.
    """
    try:
        loader = _LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_NAMES)}") from None
    return loader(root, cache_dir, download)


def dataset_stats(name: str, train: Dataset) -> ChannelStats:
    """The (mean, std) to normalise ``name`` with: `DATASET_STATS` when known, else ``channel_stats(train)``.

    Raises:
        ValueError: the known statistics have a different channel count than ``train``'s images.
    """
    if name not in DATASET_STATS:
        return channel_stats(train)
    mean, std = DATASET_STATS[name]
    if len(mean) != train.image_shape[0]:
        raise ValueError(
            f"dataset_stats: {name!r} has {len(mean)}-channel statistics but its train images have "
            f"{train.image_shape[0]} channels (shape {train.image_shape})"
        )
    return mean, std
