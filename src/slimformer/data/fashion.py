"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (60,000 train + 10,000 test, 28x28, 10 classes).

The files are gzipped idx: a big-endian header (magic, then one count per dimension) followed by raw
uint8 values. Images carry a 16-byte header (magic 2051, count, rows, cols), labels an 8-byte one
(magic 2049, count). Everything in the header is checked against the file size, so a truncated or
swapped file fails with a message naming it instead of producing garbage tensors.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import SlimformerError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
PACKAGE = "dataset-fashion-mnist"
ENV_VAR = "SLIMFORMER_FASHION_DIR"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}


@dataclass
class FashionSplit:
    images: Tensor  # [n, 28, 28] uint8
    labels: Tensor  # [n] int64 in 0..9


def data_dir(override: str | Path | None = None) -> Path:
    """Where the idx files are: `override` (the CLI's `--data-dir`), else `$SLIMFORMER_FASHION_DIR`,
    else the Debian package's path."""
    return Path(override or os.environ.get(ENV_VAR) or DEFAULT_DIR)


def read_idx(path: Path, magic: int, n_dims: int) -> np.ndarray:
    """Parse one gzipped idx file into a uint8 array of the shape its header states."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise SlimformerError(f"{path}: not a readable gzip file ({e})") from e
    header = 4 + 4 * n_dims
    if len(raw) < header:
        raise SlimformerError(f"{path}: {len(raw)} bytes, shorter than the {header}-byte idx header")
    found, *dims = struct.unpack(f">{1 + n_dims}I", raw[:header])
    if found != magic:
        raise SlimformerError(f"{path}: idx magic number {found}, expected {magic}")
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise SlimformerError(f"{path}: {len(raw)} bytes, header {dims} implies {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_split(split: str, root: str | Path | None = None) -> FashionSplit:
    """One split ("train" or "test") as uint8 images `[n, 28, 28]` and int64 labels `[n]`."""
    if split not in FILES:
        raise SlimformerError(f"unknown Fashion-MNIST split {split!r}; splits: {', '.join(FILES)}")
    root = data_dir(root)
    image_file, label_file, count = FILES[split]
    missing = [name for name in (image_file, label_file) if not (root / name).is_file()]
    if missing:
        raise SlimformerError(f"Fashion-MNIST not found ({root / missing[0]} missing): "
                              f"apt-get install {PACKAGE}, or pass --data-dir")
    images = read_idx(root / image_file, IMAGE_MAGIC, 3)
    labels = read_idx(root / label_file, LABEL_MAGIC, 1)
    if len(images) != count or len(labels) != count:
        raise SlimformerError(f"{root}: {split} split has {len(images)} images and {len(labels)} labels, "
                              f"expected {count} of each")
    if images.shape[1:] != (28, 28):
        raise SlimformerError(f"{root / image_file}: images are {images.shape[1:]}, expected (28, 28)")
    if labels.max() > 9:
        raise SlimformerError(f"{root / label_file}: label {int(labels.max())} outside 0..9")
    return FashionSplit(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))
