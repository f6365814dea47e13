"""The datasets a study can name (``DATASETS``: shape, classes, normalisation, augmentation), and
reading them from disk into CPU uint8 tensors: Fashion-MNIST, MNIST and KMNIST (IDX files), CIFAR-10
and CIFAR-100 (python pickles). Images from a folder (data.dataset = "folder") are hpo.training.folder's.

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
from torchvision.datasets import CIFAR10, CIFAR100, KMNIST, MNIST, FashionMNIST
from torchvision.datasets.utils import check_integrity, download_and_extract_archive

from hpo.errors import HpoError, reason

Arrays = tuple[torch.Tensor, torch.Tensor]  # (images uint8 [N, C, H, W], labels int64 [N])

# Debian's dataset-fashion-mnist package installs the four .gz files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SYSTEM_PACKAGE = "dataset-fashion-mnist"
# The same four names for Fashion-MNIST, MNIST and KMNIST.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ---------------------------------------------------------------- IDX: Fashion-MNIST, MNIST, KMNIST


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


def _idx_pair(title: str, folder: Path, files: dict[str, Path], part: str, fix: str) -> Arrays:
    images = read_idx(files[f"{part}-images-idx3-ubyte"], 3, fix)
    labels = read_idx(files[f"{part}-labels-idx1-ubyte"], 1, fix).long()
    if len(images) != len(labels) or images.shape[1:] != (28, 28) or labels.numel() == 0 or int(labels.max()) > 9:
        raise HpoError(
            f"{title} files in {folder} do not match "
            f"({part}: {tuple(images.shape)} images, {len(labels)} labels); {fix}"
        )
    return images.unsqueeze(1), labels


def _complete(folder: Path) -> dict[str, Path] | None:
    """The four files in ``folder`` (each plain or .gz), or None unless all four are there."""
    found = {}
    for stem in IDX_FILES:
        candidates = [folder / stem, folder / f"{stem}.gz"]
        found[stem] = next((p for p in candidates if p.is_file()), None)
    return found if all(found.values()) else None


def _read_idx_set(
    root: Path, title: str, plain: str, source: type[MNIST], system: Path | None
) -> tuple[Arrays, Arrays]:
    """The data folder first (torchvision's ``NAME/raw`` layout, or the plain folder), then the
    system copy where there is one, then torchvision's download (``source`` is the class to download with)."""
    root = Path(root)
    ours = (root / source.__name__ / "raw", root / plain)
    for folder in (*ours, *([system] if system else [])):
        files = _complete(folder)
        if files is None:
            continue
        if folder == system:
            fix = f"reinstall it: sudo apt-get install --reinstall {SYSTEM_PACKAGE}"
        else:
            fix = f"delete {folder} and run again to read it from the next source"
        return _idx_pair(title, folder, files, "train", fix), _idx_pair(title, folder, files, "t10k", fix)
    try:
        sets = [source(str(root), train=train, download=True) for train in (True, False)]
    except (OSError, RuntimeError) as e:  # URLError is an OSError; torchvision wraps mirror failures in RuntimeError
        names = ", ".join(f"{stem}.gz" for stem in IDX_FILES)
        raise HpoError(
            f"{title} not found in {ours[0]}, {ours[1]}{f' or {system}' if system else ''}, "
            f"and downloading failed ({reason(e, whole=True)}): "
            f"put {names} into {ours[1]} (or point HPO_DATA_DIR at a folder holding {plain}/)"
            + (f", or install Debian's {SYSTEM_PACKAGE} package" if system else "")
        ) from None
    return tuple((s.data.unsqueeze(1).contiguous(), s.targets.long()) for s in sets)


def read_fashion_mnist(
    root: Path, *, system: Path = SYSTEM_FASHION_MNIST, source: type[FashionMNIST] = FashionMNIST
) -> tuple[Arrays, Arrays]:
    return _read_idx_set(root, "Fashion-MNIST", "fashion-mnist", source, system)


def read_mnist(root: Path, *, source: type[MNIST] = MNIST) -> tuple[Arrays, Arrays]:
    return _read_idx_set(root, "MNIST", "mnist", source, None)


def read_kmnist(root: Path, *, source: type[KMNIST] = KMNIST) -> tuple[Arrays, Arrays]:
    return _read_idx_set(root, "KMNIST", "kmnist", source, None)


# ---------------------------------------------------------------- CIFAR-10 and CIFAR-100


def _cifar_intact(folder: Path, source: type[CIFAR10]) -> bool:
    files = [*source.train_list, *source.test_list, (source.meta["filename"], source.meta["md5"])]
    return all(check_integrity(str(folder / name), digest) for name, digest in files)


def _cifar_batches(folder: Path, names: list, title: str, label_key: str, classes: int) -> Arrays:
    images, labels = [], []
    for name, _ in names:
        # Safe to unpickle: the md5 check has already matched these files to the published ones.
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        # Python 2 pickles (the official files) load with str keys under latin1; a Python 3 re-pickle has bytes keys.
        data = entry.get("data", entry.get(b"data"))
        targets = entry.get(label_key, entry.get(label_key.encode()))
        if data is None or targets is None or np.asarray(data).size != 3072 * len(targets):
            raise HpoError(
                f"{folder / name} is not a {title} batch (needs data: N x 3072 uint8, {label_key}: N); "
                f"delete {folder} and run again"
            )
        # Each row is the R plane, then G, then B, each 32x32 row-major: exactly C, H, W.
        images.append(torch.from_numpy(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(list(targets), dtype=torch.int64))
    labels = torch.cat(labels)
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < classes:
        raise HpoError(
            f"{folder} holds {label_key} outside 0..{classes - 1}: not {title}; delete {folder} and run again"
        )
    return torch.cat(images), labels


def _read_cifar(
    root: Path, source: type[CIFAR10], published: type[CIFAR10], title: str, label_key: str, classes: int
) -> tuple[Arrays, Arrays]:
    """Through torchvision's file list and md5s (``source``: the class that carries them; ``published``:
    the one whose url to name): an extracted folder whose files check, else a tarball in ``root`` whose
    md5 checks (torchvision extracts it without downloading), else a download."""
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
                f"{title} not found in {folder} ({why}): put {source.filename} from {published.url} into {root} "
                f"(the data folder; set HPO_DATA_DIR to use another) and run again"
            )
    return tuple(
        _cifar_batches(folder, names, title, label_key, classes) for names in (source.train_list, source.test_list)
    )


def read_cifar10(root: Path, *, source: type[CIFAR10] = CIFAR10) -> tuple[Arrays, Arrays]:
    return _read_cifar(root, source, CIFAR10, "CIFAR-10", "labels", 10)


def read_cifar100(root: Path, *, source: type[CIFAR100] = CIFAR100) -> tuple[Arrays, Arrays]:
    """The 100 fine labels (the 20 coarse ones are not read)."""
    return _read_cifar(root, source, CIFAR100, "CIFAR-100", "fine_labels", 100)


# ---------------------------------------------------------------- the registry


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    size: int  # images are size x size
    num_classes: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units, over the training set
    std: tuple[float, ...]
    crop_padding: int  # zero padding of the random crop when augmenting
    flip: bool  # random horizontal flip (p = 0.5) when augmenting
    class_names: tuple[str, ...] = ()  # label i is class_names[i]


DIGITS = tuple(str(i) for i in range(10))
# The published label orders: torchvision's class lists, the CIFAR files' meta (CIFAR-100's is alphabetical).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_CLASSES = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can
    castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
    flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
    motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate
    poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider
    squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle
    wardrobe whale willow_tree wolf woman worm""".split()
)


def _grey(name: str, mean: float, std: float, classes: tuple[str, ...]) -> DatasetInfo:
    return DatasetInfo(name, 1, 28, 10, (mean,), (std,), crop_padding=2, flip=False, class_names=classes)


def _colour(name: str, mean: tuple, std: tuple, classes: tuple[str, ...]) -> DatasetInfo:
    return DatasetInfo(name, 3, 32, len(classes), mean, std, crop_padding=4, flip=True, class_names=classes)


# The built-in datasets; a folder's info is computed from its images (hpo.training.folder).
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": _grey("fashion_mnist", 0.2860, 0.3530, tuple(FashionMNIST.classes)),
    "mnist": _grey("mnist", 0.1307, 0.3081, DIGITS),
    "kmnist": _grey("kmnist", 0.1918, 0.3483, tuple(KMNIST.classes)),
    "cifar10": _colour("cifar10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), CIFAR10_CLASSES),
    "cifar100": _colour("cifar100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), CIFAR100_CLASSES),
}
READERS = {
    "fashion_mnist": read_fashion_mnist,
    "mnist": read_mnist,
    "kmnist": read_kmnist,
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
}
