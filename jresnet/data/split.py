"""Carving a validation set out of a training set, deterministically and stratified by class."""

from __future__ import annotations

import numpy as np

from jresnet.data.checks import require_int
from jresnet.data.dataset import Dataset

__all__ = ["train_val_split"]


def _validation_size(total: int, val_fraction: float | None, val_size: int | None) -> int:
    if (val_fraction is None) == (val_size is None):
        raise ValueError(
            "train_val_split: pass exactly one of val_fraction and val_size, "
            f"got val_fraction={val_fraction}, val_size={val_size}"
        )
    if val_fraction is not None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(
                f"train_val_split: val_fraction must lie strictly between 0 and 1, got {val_fraction}"
            )
        val_size = round(total * val_fraction)
    else:
        val_size = require_int(val_size, name="train_val_split: val_size", minimum=0)
    if not 1 <= val_size <= total - 1:
        source = f" (from val_fraction={val_fraction})" if val_fraction is not None else ""
        raise ValueError(
            f"train_val_split: validation size must be 1..{total - 1} so both parts of the {total} examples "
            f"are non-empty, got {val_size}{source}"
        )
    return val_size


def _per_class_quota(class_counts: np.ndarray, val_size: int) -> np.ndarray:
    """Validation examples per class: proportional, rounded by largest remainder to sum to val_size."""
    ideal = class_counts * (val_size / class_counts.sum())
    quota = np.floor(ideal).astype(np.int64)
    shortfall = val_size - int(quota.sum())
    # Stable sort: ties go to the lower class index, so the result depends on nothing but the counts.
    by_remainder = np.argsort(-(ideal - quota), kind="stable")
    quota[by_remainder[:shortfall]] += 1
    return quota


def train_val_split(
    dataset: Dataset,
    *,
    val_fraction: float | None = None,
    val_size: int | None = None,
    seed: int = 0,
    stratify: bool = True,
) -> tuple[Dataset, Dataset]:
    """Split ``dataset`` into (train, val) with no example in both; the same seed gives the same split.

    Pass exactly one of ``val_fraction`` (of all examples, rounded) or ``val_size``. With ``stratify``,
    each class contributes to validation in proportion to its size (largest-remainder rounding), so
    class balance is kept; without it, validation is a uniform random sample. Both parts keep the
    original order of the examples they hold.

    Raises:
        ValueError: both or neither size given, a size that would leave a part empty, or a negative seed.
        TypeError: ``val_size`` or ``seed`` is not an int.
    """
    size = _validation_size(len(dataset), val_fraction, val_size)
    rng = np.random.default_rng(require_int(seed, name="train_val_split: seed", minimum=0))
    if stratify:
        class_counts = np.bincount(dataset.labels, minlength=dataset.num_classes)
        quota = _per_class_quota(class_counts, size)
        chosen = [
            rng.permutation(np.flatnonzero(dataset.labels == label))[:count]
            for label, count in enumerate(quota)
        ]
        val_indices = np.concatenate(chosen)
    else:
        val_indices = rng.permutation(len(dataset))[:size]
    in_val = np.zeros(len(dataset), dtype=bool)
    in_val[val_indices] = True
    return dataset.subset(np.flatnonzero(~in_val)), dataset.subset(np.flatnonzero(in_val))
