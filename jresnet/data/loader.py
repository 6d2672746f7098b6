"""Host-side batching of an in-memory `Dataset` into fixed-shape numpy batches for this process.

The order of epoch ``e`` is a pure function of ``(seed, e)``, so a run resumed from a checkpoint at
(epoch, step) sees exactly the batches the uninterrupted run would have, and `Loader.epoch` can start
at any step without touching the batches before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from jresnet.data.checks import require_int
from jresnet.data.dataset import Dataset

__all__ = ["Batch", "Loader"]


class Batch(NamedTuple):
    """One batch, always ``batch_size`` rows so a jitted step compiles once.

    Attributes:
        images: uint8 (B, C, H, W).
        labels: int32 (B,).
        mask: bool (B,); True for real examples, False for the zero padding that fills the last
            batch of an epoch when ``drop_last`` is False.
    """

    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


class Loader:
    """Batches of a `Dataset`: shuffled per epoch for training, in order and padded for evaluation.

    Args:
        dataset: the examples, already in memory; the loader never reads files.
        batch_size: rows per batch.
        shuffle: permute the examples each epoch (from ``seed`` and the epoch number).
        seed: the shuffling seed, a non-negative int.
        drop_last: drop the final partial batch (training). With False (evaluation) the final
            batch is padded to ``batch_size`` and ``mask`` marks its real rows, so every example is
            seen exactly once per epoch.

    Raises:
        TypeError / ValueError: a non-integer or non-positive ``batch_size``, a negative ``seed``, or
            ``drop_last=True`` with fewer examples than one batch (which would yield nothing).
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool
    ) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(f"Loader: dataset must be a jresnet.data.Dataset, got {type(dataset).__name__}")
        self.dataset = dataset
        self.batch_size = require_int(batch_size, name="Loader: batch_size", minimum=1)
        self.seed = require_int(seed, name="Loader: seed", minimum=0)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        if drop_last and len(dataset) < batch_size:
            raise ValueError(
                f"Loader: dataset {dataset.name!r} has {len(dataset)} examples, fewer than batch_size "
                f"{batch_size}, so drop_last=True would yield no batches"
            )

    @property
    def steps_per_epoch(self) -> int:
        """Batches per epoch: ``N // B`` with ``drop_last``, else ``ceil(N / B)``."""
        full, remainder = divmod(len(self.dataset), self.batch_size)
        return full if self.drop_last or remainder == 0 else full + 1

    def __len__(self) -> int:
        return self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """The example order of ``epoch``: a pure function of (seed, epoch), or 0..N-1 without shuffling."""
        epoch = require_int(epoch, name="Loader: epoch", minimum=0)
        if not self.shuffle:
            return np.arange(len(self.dataset))
        # Seeding from the pair (not seed + epoch) keeps (seed=0, epoch=1) and (seed=1, epoch=0) apart.
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Yield the batches of ``epoch`` from step ``start_step`` on (earlier ones are never gathered).

        Raises:
            ValueError: ``start_step`` is outside ``0 .. steps_per_epoch``.
        """
        start_step = require_int(start_step, name="Loader: start_step", minimum=0)
        if start_step > self.steps_per_epoch:
            raise ValueError(
                f"Loader: start_step {start_step} is past the end of an epoch of {self.steps_per_epoch} steps"
            )
        order = self.permutation(epoch)
        return self._batches(order, start_step)

    def _batches(self, order: np.ndarray, start_step: int) -> Iterator[Batch]:
        for step in range(start_step, self.steps_per_epoch):
            indices = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self._gather(indices)

    def _gather(self, indices: np.ndarray) -> Batch:
        real = len(indices)
        padding = self.batch_size - real
        images = np.take(self.dataset.images, indices, axis=0)
        labels = np.take(self.dataset.labels, indices, axis=0)
        mask = np.ones(self.batch_size, dtype=bool)
        if padding:
            images = np.concatenate([images, np.zeros((padding, *images.shape[1:]), dtype=images.dtype)])
            labels = np.concatenate([labels, np.zeros(padding, dtype=labels.dtype)])
            mask[real:] = False
        return Batch(images=images, labels=labels, mask=mask)
