"""digits(): scikit-learn's bundled 8×8 digits, scaled to uint8 with one channel."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from jresnet.data import digits


def test_digits_is_one_train_split_of_1797_one_channel_8x8_images() -> None:
    splits = digits()
    assert list(splits) == ["train"]
    train = splits["train"]
    assert train.images.shape == (1797, 1, 8, 8) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32
    assert train.class_names == tuple("0123456789")
    assert np.array_equal(np.bincount(train.labels) > 150, np.ones(10, bool))  # every digit well represented


def test_pixel_scale_maps_0_to_0_and_16_to_255() -> None:
    raw = load_digits().images
    scaled = digits()["train"].images[:, 0]
    assert np.all(scaled[raw == 0] == 0)
    assert np.all(scaled[raw == 16] == 255)
    assert np.all(scaled[raw == 8] == 128)  # 127.5 rounds to the even 128
    # Scaling is monotone: a brighter raw pixel never becomes darker.
    order = np.argsort(raw.ravel(), kind="stable")
    assert np.all(np.diff(scaled.ravel()[order].astype(int)) >= 0)


def test_labels_match_scikit_learns_targets() -> None:
    assert np.array_equal(digits()["train"].labels, load_digits().target)
