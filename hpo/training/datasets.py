"""The datasets a study can name (``DATASETS``: shape, classes, normalisation, augmentation), and
reading them from disk into CPU uint8 tensors: Fashion-MNIST (IDX files) and CIFAR-10.

Each reader returns ``((train_images, train_labels), (test_images, test_labels))`` with images
uint8 [N, C, H, W] and labels int64 [N]; ``hpo.training.data`` caches the result and cuts the splits.
"""

from __future__ import annotations

import gzip
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, FashionMNIST
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from hpo.errors import HpoError, reason

Arrays = tuple[torch.Tensor, torch.Tensor]  # (images uint8 [N, C, H, W], labels int64 [N])

# Debian's dataset-fashion-mnist package installs the four .gz files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ---------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Path, ndim: int, fix: str) -> torch.Tensor:
    """One IDX file (gzip or not) of unsigned bytes with ``ndim`` dimensions, checked against its header."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # sniff rather than trust the name: some mirrors store .gz uncompressed
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise HpoError(f"cannot read {path}: {reason(e, whole=True)}; {fix}") from None
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise HpoError(f"{path} is not an IDX file of {ndim}-d unsigned bytes (bad header); {fix}")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) != head + int(np.prod(shape)):
        raise HpoError(
            f"{path} is truncated or corrupt: its header promises {shape}, it holds {len(raw) - head} bytes; {fix}"
        )
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=head).view(shape)


def _idx_pair(folder: Path, files: dict[str, Path], part: str, fix: str) -> Arrays:
    images = read_idx(files[f"{part}-images-idx3-ubyte"], 3, fix)
    labels = read_idx(files[f"{part}-labels-idx1-ubyte"], 1, fix).long()
    if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.numel() == 0 or int(labels.max()) > 9:
        raise HpoError(
            f"Fashion-MNIST files in {folder} do not match "
            f"({part}: {tuple(images.shape)} images, {len(labels)} labels); {fix}"
        )
    return images.unsqueeze(1), labels


def _complete(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (each plain or .gz), or None unless all four are there."""
    found = {}
    for stem in FASHION_MNIST_FILES:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found[stem] = next((p for p in candidates if p.is_file()), None)
    return found if all(found.values()) else None


def read_fashion_mnist(
    root: Path, *, system: Path = SYSTEM_FASHION_MNIST, source: type[FashionMNIST] = FashionMNIST
) -> tuple[Arrays, Arrays]:
    """The data folder first (torchvision's layout, or a plain fashion-mnist/ folder), then the
    system copy, then torchvision's download (``source`` is the class to download with)."""
    root = Path(root)
    ours = (root / source.__name__ / "raw", root / "fashion-mnist")
    for folder in (*ours, system):
        files = _complete(folder)
        if files is None:
            continue
        if folder == system:
            fix = "reinstall it: sudo apt-get install --reinstall dataset-fashion-mnist"
        else:
            fix = f"delete {folder} and run again to read it from the next source"
        return _idx_pair(folder, files, "train", fix), _idx_pair(folder, files, "t10k", fix)
    try:
        sets = [source(str(root), train=train, download=True) for train in (True, False)]
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision wraps mirror failures in RuntimeError
        names = ", ".join(f"{stem}.gz" for stem in FASHION_MNIST_FILES)
        raise HpoError(
            f"Fashion-MNIST not found in {ours[0]}, {ours[1]} or {system}, "
            f"and downloading failed ({reason(e, whole=True)}): "
            f"put {names} into {ours[1]} (or point HPO_DATA_DIR at a folder holding fashion-mnist/), "
            f"or install Debian's dataset-fashion-mnist package"
        ) from None
    return tuple((s.data.unsqueeze(1).contiguous(), s.targets.long()) for s in sets)


# ---------------------------------------------------------------- CIFAR-10


def _cifar_intact(folder: Path, source: type[CIFAR10]) -> bool:
    files = [*source.train_list, *source.test_list, (source.meta["filename"], source.meta["md5"])]
    return all(check_integrity(str(folder / name), digest) for name, digest in files)


def _cifar_batches(folder: Path, names: list) -> Arrays:
    images, labels = [], []
    for name, _ in names:
        # Safe to unpickle: the md5 check has already matched these files to the published ones.
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        # Python 2 pickles (the official files) load with str keys under latin1; a Python 3 re-pickle has bytes keys.
        data = entry.get("data", entry.get(b"data"))
        targets = entry.get("labels", entry.get(b"labels"))
        if data is None or targets is None or np.asarray(data).size != 3072 * len(targets):
            raise HpoError(
                f"{folder / name} is not a CIFAR-10 batch (needs data: N x 3072 uint8, labels: N); "
                f"delete {folder} and run again"
            )
        # Each row is the R plane, then G, then B, each 32x32 row-major: exactly C, H, W.
        images.append(torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(list(targets), dtype=torch.int64))
    return torch.cat(images), torch.cat(labels)


def read_cifar10(root: Path, *, source: type[CIFAR10] = CIFAR10) -> tuple[Arrays, Arrays]:
    """Through torchvision's ``CIFAR10`` file list and md5s (``source``: the class that carries them):
    an extracted folder whose files check, else a tarball in ``root`` whose md5 checks (torchvision
    extracts it without downloading), else a download."""
    root = Path(root)
    folder = root / source.base_folder
    if not _cifar_intact(folder, source):
        tarball = root / source.filename
        why = "its files are incomplete or fail their md5 check" if folder.is_dir() else "no such folder"
        if tarball.is_file() and not check_integrity(str(tarball), source.tgz_md5):
            why = f"{tarball} fails its md5 check: an incomplete or different file"
        try:
            download_and_extract_archive(source.url, str(root), filename=source.filename, md5=source.tgz_md5)
        except (OSError, RuntimeError) as e:  # offline: URLError (an OSError); bad download: RuntimeError
            why += f"; downloading failed: {reason(e, whole=True)}"
        if not _cifar_intact(folder, source):
            raise HpoError(
                f"CIFAR-10 not found in {folder} ({why}): put {source.filename} from {CIFAR10.url} into {root} "
                f"(the data folder; set HPO_DATA_DIR to use another) and run again"
            )
    return _cifar_batches(folder, source.train_list), _cifar_batches(folder, source.test_list)


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    size: int  # images are size x size
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units, over the official training set
    std: tuple[float, ...]
    crop_padding: int  # zero padding of the random crop when augmenting
    flip: bool  # random horizontal flip (p = 0.5) when augmenting


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 1, 28, 10, (0.2860,), (0.3530,), crop_padding=2, flip=False),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), crop_padding=4, flip=True
    ),
}
READERS = {"fashion_mnist": read_fashion_mnist, "cifar10": read_cifar10}
