"""jresnet.data: datasets as in-memory uint8 (N, C, H, W) arrays, host-side batching, and JAX augmentation.

Every source returns ``dict[str, Dataset]`` with the keys "train" and, where the format has an
official test split that is present, "test". Carve validation sets with `train_val_split`.

- Sources: `digits` (bundled, offline), `mnist`, `fashion_mnist` (idx files), `cifar10`, `cifar100`
  (python batches, read with a restricted unpickler), `imagefolder` (cached decode), `npz`.
- By name: `load_dataset`, `DATASET_NAMES`, `DATASET_STATS`, `dataset_stats`, `channel_stats`.
- Downloads: `download` and `fetch_*`, checksum-verified and only on request.
- Batching: `Loader` and `Batch`; augmentation: `augment`, `random_crop`, `random_flip`, `normalize`.

This package imports nothing from jresnet.models, jresnet.train or jresnet.cli.
"""

from jresnet.data.augment import augment, normalize, random_crop, random_flip
from jresnet.data.cifar import cifar10, cifar100, read_cifar_batch, read_cifar_class_names
from jresnet.data.dataset import Dataset
from jresnet.data.digits import digits
from jresnet.data.download import (
    DEBIAN_FASHION_MNIST_DIR,
    default_data_root,
    download,
    fetch_cifar10,
    fetch_cifar100,
    fetch_fashion_mnist,
    fetch_mnist,
)
from jresnet.data.errors import ChecksumMismatchError, DatasetNotFoundError, DownloadError, UnsafePickleError
from jresnet.data.idx import fashion_mnist, mnist, parse_idx, read_idx
from jresnet.data.imagefolder import imagefolder
from jresnet.data.loader import Batch, Loader
from jresnet.data.npz import npz
from jresnet.data.registry import DATASET_NAMES, DATASET_STATS, dataset_stats, load_dataset
from jresnet.data.safe_pickle import RestrictedUnpickler, safe_load_pickle, safe_loads_pickle
from jresnet.data.split import train_val_split
from jresnet.data.stats import channel_stats

__all__ = [
    "DATASET_NAMES",
    "DATASET_STATS",
    "DEBIAN_FASHION_MNIST_DIR",
    "Batch",
    "ChecksumMismatchError",
    "Dataset",
    "DatasetNotFoundError",
    "DownloadError",
    "Loader",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "augment",
    "channel_stats",
    "cifar10",
    "cifar100",
    "dataset_stats",
    "default_data_root",
    "digits",
    "download",
    "fashion_mnist",
    "fetch_cifar10",
    "fetch_cifar100",
    "fetch_fashion_mnist",
    "fetch_mnist",
    "imagefolder",
    "load_dataset",
    "mnist",
    "normalize",
    "npz",
    "parse_idx",
    "random_crop",
    "random_flip",
    "read_cifar_batch",
    "read_cifar_class_names",
    "read_idx",
    "safe_load_pickle",
    "safe_loads_pickle",
    "train_val_split",
]
