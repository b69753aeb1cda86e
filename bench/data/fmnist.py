"""Fashion-MNIST from local IDX files (Debian package `dataset-fashion-mnist` or a user copy)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from bench.core.errors import ConfigError, DataError

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "SMARTBENCH_DATA"
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """Return the file's bytes, decompressed when the name ends in `.gz`."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return f.read()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a read-only array of its stored dtype."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path}: IDX size does not match its header dims {dims}")
    return np.frombuffer(data, dtype, offset=header).reshape(dims)


def _idx_file(directory: Path, name: str) -> Path | None:
    """Return `name.gz` or `name` inside `directory`, whichever exists (gz first)."""
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def _candidates(data_root: str | Path | None) -> list[Path]:
    """Directories to search, in order: `data_root`, `$SMARTBENCH_DATA`, the Debian path."""
    dirs: list[Path] = []
    for root in (data_root, os.environ.get(ENV_VAR)):
        if root:
            root = Path(root).expanduser()
            dirs += [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
    return dirs + [SYSTEM_DIR]


def find_fmnist_dir(data_root: str | Path | None = None) -> Path:
    """Return the first directory holding all four Fashion-MNIST IDX files, or raise DataError."""
    searched = _candidates(data_root)
    for directory in searched:
        if all(_idx_file(directory, name) for name in FILES):
            return directory
    listing = "\n".join(f"  {d}" for d in searched)
    raise DataError(
        "Fashion-MNIST not found. Install the Debian package with "
        "`apt-get install dataset-fashion-mnist`, or set "
        f"{ENV_VAR} to a folder holding {', '.join(f + '.gz' for f in FILES)} "
        "(directly, in fashion-mnist/, or in FashionMNIST/raw/). Searched:\n" + listing
    )


@functools.cache
def _load(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    prefix = _PREFIX[split]
    images = read_idx(_idx_file(directory, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(directory, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    labels.setflags(write=False)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or labels.shape != images.shape[:1]:
        raise DataError(
            f"{directory}: Fashion-MNIST {split} has images {images.shape} {images.dtype} and "
            f"labels {labels.shape}; expected uint8 (N, 28, 28) and (N,)"
        )
    return images, labels


def load_fmnist(split: str, data_root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return read-only (images uint8 (N, 28, 28), labels int64 (N,)) for "train" or "test"."""
    if split not in _PREFIX:
        raise ConfigError("split", f"unknown Fashion-MNIST split {split!r}; allowed: train, test")
    return _load(find_fmnist_dir(data_root), split)


@functools.cache
def _hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in FILES:
        digest.update(_read_bytes(_idx_file(directory, name)))
    return digest.hexdigest()[:16]


def dataset_hash(data_root: str | Path | None = None) -> str:
    """First 16 hex digits of the sha256 of the four uncompressed IDX files, in `FILES` order."""
    return _hash(find_fmnist_dir(data_root))
