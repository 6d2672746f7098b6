"""scikit-learn's bundled 8×8 handwritten digits: the embedded default that works offline."""

from __future__ import annotations

import numpy as np

from jresnet.data.dataset import Dataset

__all__ = ["DIGITS_MAX_VALUE", "digits"]

DIGITS_MAX_VALUE = 16
"""The digits' pixels are counts of set pixels in 4×4 blocks of a 32×32 bitmap, so they run 0..16."""


def digits() -> dict[str, Dataset]:
    """Load the 1,797 real 8×8 digits that ship with scikit-learn, as ``{"train": Dataset}``.

    Pixels 0..16 are scaled to 0..255 (rounded) and given one channel: images are uint8 (1797, 1, 8, 8),
    classes ``"0"`` .. ``"9"``. The set has no official test split; carve one with `train_val_split`.
    """
    # Imported here: scikit-learn takes about a second to import and only this source needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scaled = np.rint(bunch.images * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)
    dataset = Dataset(
        images=scaled[:, np.newaxis, :, :],
        labels=bunch.target.astype(np.int32),
        class_names=tuple(str(name) for name in bunch.target_names),
        name="digits",
    )
    return {"train": dataset}
