"""Per-channel mean and standard deviation of a dataset's pixels, in [0, 1] units, for `normalize`."""

from __future__ import annotations

import numpy as np

from jresnet.data.dataset import Dataset

__all__ = ["ChannelStats", "channel_stats"]

ChannelStats = tuple[tuple[float, ...], tuple[float, ...]]
"""(mean per channel, std per channel), each in [0, 1] units."""

_LEVELS = 256


def channel_stats(dataset: Dataset) -> ChannelStats:
    """Mean and (population) standard deviation of each channel over all images and pixels, in [0, 1] units.

    Computed exactly from a 256-bin histogram per channel, so 50,000 CIFAR images need no float copy.

    Raises:
        ValueError: the dataset is empty.
    """
    if len(dataset) == 0:
        raise ValueError(
            f"channel_stats: dataset {dataset.name!r} is empty; statistics need at least one image"
        )
    levels = np.arange(_LEVELS, dtype=np.float64) / (_LEVELS - 1)
    means, stds = [], []
    for channel in range(dataset.image_shape[0]):
        counts = np.bincount(dataset.images[:, channel].ravel(), minlength=_LEVELS).astype(np.float64)
        weights = counts / counts.sum()
        mean = float(weights @ levels)
        variance = float(weights @ (levels - mean) ** 2)
        means.append(mean)
        stds.append(variance**0.5)
    return tuple(means), tuple(stds)
