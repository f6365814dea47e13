"""The real Fashion-MNIST in torchvision's ``FashionMNIST/raw`` layout, for the peers that read it
the way their examples do (``datasets.FashionMNIST(root, download=True)`` finds the files there
and downloads nothing)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

SYSTEM = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def raw_layout(root: Path, source: Path = SYSTEM) -> Path:
    """Unpack ``source``'s four .gz files into ``root/FashionMNIST/raw`` (torchvision reads them
    uncompressed); returns ``root``. Missing files: one line, as FileNotFoundError."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        target = raw / name
        if target.exists():
            continue
        packed = source / f"{name}.gz"
        if not packed.exists():
            raise FileNotFoundError(f"{packed} is missing: apt-get install dataset-fashion-mnist")
        with gzip.open(packed, "rb") as f, open(target, "wb") as out:
            shutil.copyfileobj(f, out)
    return Path(root)
