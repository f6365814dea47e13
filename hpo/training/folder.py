"""Images from a folder of the user's (data.dataset = "folder"), in torchvision's ImageFolder layout:
DIR/train/CLASS/*.png (or any of ImageFolder's extensions), optionally DIR/test/CLASS/..., read into
the same uint8 tensors [N, C, H, W] as the built-in datasets.

Decoded once, resized to one square side, and cached in the data folder under a key of the file list
(names, sizes, mtimes) and the side: another process (a worker, the next run) reads the cache in
about a second, and a changed, added or removed file makes a new key, so the folder is decoded again.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as TF

from hpo.errors import HpoError, reason
from hpo.training.datasets import Arrays, DatasetInfo

FOLDER = "folder"  # the data.dataset that reads a folder
CACHE_DIR = "folders"  # under the data folder
CACHE_FORMAT = 1  # in the key: a change to what is cached makes every older cache stale
# decode_image's formats; the rest of ImageFolder's (.bmp, .ppm, .pgm, .tif) through PIL, as ImageFolder reads them.
TORCHVISION_IO = {".png", ".jpg", ".jpeg", ".webp", ".gif"}
UNREADABLE = (OSError, RuntimeError, ValueError)  # what the decoders raise for a file that is no image they know

log = logging.getLogger(__name__)  # the entry points print these lines (hpo.cli)


@dataclass(frozen=True)
class Folder:
    info: DatasetInfo
    train: Arrays
    test: Arrays | None  # None: no test/ folder; hpo.training.data holds out a stratified share of train


_loaded: dict[str, Folder] = {}  # by cache key: each folder is decoded or read once per process


def read_folder(path: str | os.PathLike, image_size: int, data_root: Path) -> Folder:
    """The folder's images (checked, decoded or read from the cache under ``data_root``) and their info.
    The files are listed and stat'ed every call, so a folder changed since is read again."""
    root = Path(path)
    try:
        parts = _parts(root)
        key = _key(root, parts, image_size)
    except OSError as e:  # a folder we may not list, a file gone between listing and stat
        raise HpoError(f"cannot read the image folder {root}: {reason(e)}") from None
    if key not in _loaded:
        name = re.sub(r"[^\w.-]", "_", root.name) or "images"
        slot = hashlib.sha256(f"{root.resolve()}|{image_size}".encode()).hexdigest()[:12]
        _loaded[key] = _cached(root, parts, image_size, Path(data_root) / CACHE_DIR / f"{name}-{slot}-{key}.pt")
    return _loaded[key]


# ---------------------------------------------------------------- the file list, checked


def _parts(root: Path) -> dict[str, dict[str, list[Path]]]:
    """{"train": {CLASS: files}, "test": ...}: the images, with every check a person can act on."""
    if not root.is_dir():
        raise HpoError(f"data.path: no folder {root} (a relative data.path is taken from the study folder)")
    train = root / "train"
    if not train.is_dir():
        raise HpoError(
            f"{root} has no train/ folder: put the images in {train}/CLASS/ (one folder per class, "
            f"e.g. {train}/cat/1.png), and a test set, if you have one, in {root}/test/CLASS/"
        )
    parts = {"train": _classes(train)}
    if len(parts["train"]) < 2:
        found = f"one class folder ({next(iter(parts['train']))})" if parts["train"] else "no class folders"
        raise HpoError(f"{train} holds {found}: a classifier needs at least two, one folder of images per class")
    if (root / "test").is_dir():
        parts["test"] = _classes(root / "test")
        missing, extra = parts["train"].keys() - parts["test"].keys(), parts["test"].keys() - parts["train"].keys()
        if missing or extra:
            words = [f"no {', '.join(sorted(missing))}"] if missing else []
            words += [f"{', '.join(sorted(extra))} not in train/"] if extra else []
            raise HpoError(
                f"{root / 'test'} has other classes than {train} ({'; '.join(words)}): give test/ one folder "
                f"per class of train/, or remove test/ to hold out data.test_fraction of train/"
            )
    return parts


def _hidden(path: Path, below: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(below).parts)


def _classes(part: Path) -> dict[str, list[Path]]:
    """CLASS -> its images, sorted; searched below each class folder, as ImageFolder does."""
    out = {}
    for folder in sorted(d for d in part.iterdir() if d.is_dir() and not d.name.startswith(".")):
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.suffix.lower() in IMG_EXTENSIONS and not _hidden(p, folder) and p.is_file()
        )
        if not files:
            raise HpoError(f"{folder} holds no images ({' '.join(IMG_EXTENSIONS)}): add some or remove the folder")
        out[folder.name] = files
    return out


def _key(root: Path, parts: dict, image_size: int) -> str:
    """A digest of the folder, every file's name, size and mtime, and the side: any change, a new key."""
    files = [
        [part, str(p.relative_to(root)), st.st_size, st.st_mtime_ns]
        for part, classes in parts.items()
        for names in classes.values()
        for p in names
        for st in (p.stat(),)
    ]
    text = json.dumps([CACHE_FORMAT, str(root.resolve()), image_size, files])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


# ---------------------------------------------------------------- the cache


def _cached(root: Path, parts: dict, image_size: int, file: Path) -> Folder:
    if file.is_file():
        try:
            folder = _folder(torch.load(file, weights_only=True))
            log.info(f"{root}: {_count(folder)} images read from the cache {file}")
            return folder
        except (*UNREADABLE, EOFError, KeyError, pickle.UnpicklingError) as e:  # damaged: decode again
            log.info(f"{root}: the cache {file} is unreadable ({reason(e)}); decoding the images again")
    saved = _decode_all(root, parts, image_size)
    folder = _folder(saved)
    _save(saved, file)
    log.info(
        f"{root}: {_count(folder)} images of {folder.info.num_classes} classes decoded "
        f"({folder.info.size}x{folder.info.size}, {folder.info.channels} channel(s)), cached in {file}"
    )
    return folder


def _count(folder: Folder) -> int:
    return len(folder.train[1]) + (len(folder.test[1]) if folder.test else 0)


def _save(saved: dict, file: Path) -> None:
    """Written to a temporary file and renamed: a process reading the cache never sees half a file.
    A cache that cannot be written costs the next process a decode, nothing more."""
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
        os.chmod(fd, 0o644)  # mkstemp makes it private; a shared data folder is read by its group too
        with os.fdopen(fd, "wb") as f:
            torch.save(saved, f)
        os.replace(tmp, file)
        tmp = None
        for stale in file.parent.glob(f"{file.name.rsplit('-', 1)[0]}-*.pt"):  # this folder's older versions
            if stale != file:
                with contextlib.suppress(OSError):
                    stale.unlink()
    except OSError as e:
        log.warning(f"could not cache the decoded images in {file} ({reason(e)}); the next process decodes again")
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _folder(saved: dict) -> Folder:
    train = saved["train_x"]
    info = DatasetInfo(
        FOLDER,
        channels=train.shape[1],
        size=train.shape[-1],
        num_classes=len(saved["classes"]),
        mean=tuple(saved["mean"]),
        std=tuple(saved["std"]),
        crop_padding=train.shape[-1] // 8,  # 4 on 32x32, as CIFAR's; 3 on 28x28
        flip=False,  # a mirrored image may be another class (digits, letters, arrows): off unless known safe
        class_names=tuple(saved["classes"]),
    )
    test = (saved["test_x"], saved["test_y"]) if "test_x" in saved else None
    return Folder(info, (train, saved["train_y"]), test)


# ---------------------------------------------------------------- decoding


def _decode(path: Path) -> torch.Tensor:
    """uint8 [C, H, W] with C = 1 (grey) or 3 (RGB): alpha dropped, 16-bit scaled to 8, EXIF rotation applied."""
    try:
        if path.suffix.lower() in TORCHVISION_IO:
            with warnings.catch_warnings():
                # torchvision 0.29 deprecates its image codecs for TorchCodec (not installed here): one
                # warning per image would bury the run's output; PIL (below) is the way out if they go.
                warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
                image = decode_image(str(path), mode=ImageReadMode.UNCHANGED, apply_exif_orientation=True)
            image = image[0] if image.ndim == 4 else image  # an animated GIF: its first frame
        else:
            with Image.open(path) as im:
                image = TF.pil_to_tensor(im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB"))
    except UNREADABLE as e:
        raise HpoError(f"cannot read the image {path} ({reason(e)}): replace or remove it") from None
    if image.dtype != torch.uint8:
        image = TF.to_dtype(image, torch.uint8, scale=True)
    return image[:1] if image.shape[0] == 2 else image[:3]


def _decode_all(root: Path, parts: dict, image_size: int) -> dict:
    """What the cache holds: every part's images at one side, labels, class names, and the
    normalisation, computed over all of train/ (before hpo.training.data holds out a test share,
    when there is no test/, and the validation split): the same for every seed, so one cache serves all."""
    classes = list(parts["train"])
    listed = {part: [(p, i) for i, c in enumerate(classes) for p in by_class[c]] for part, by_class in parts.items()}
    decoded = {part: [_decode(p) for p, _ in items] for part, items in listed.items()}
    _one_kind(root, listed, decoded)
    side = image_size or _common_side(decoded["train"])
    saved: dict = {"classes": classes}
    for part, items in listed.items():
        saved[f"{part}_x"] = torch.stack([_square(x, side) for x in decoded[part]])
        saved[f"{part}_y"] = torch.tensor([label for _, label in items], dtype=torch.int64)
    saved["mean"], saved["std"] = mean_std(saved["train_x"])
    return saved


def _one_kind(root: Path, listed: dict, decoded: dict) -> None:
    first = {}  # channels -> the first file with them
    for part, items in listed.items():
        for (path, _), image in zip(items, decoded[part], strict=True):
            first.setdefault(image.shape[0], path)
    if len(first) > 1:
        raise HpoError(
            f"{root} mixes grayscale and colour images ({first[1]} is grayscale, {first[3]} is RGB): "
            f"convert them to one kind"
        )


def _common_side(images: list[torch.Tensor]) -> int:
    """The most common (height, width) in train/; its larger side when not square."""
    (h, w), _ = collections.Counter(tuple(x.shape[-2:]) for x in images).most_common(1)[0]
    return max(h, w)


def _square(image: torch.Tensor, side: int) -> torch.Tensor:
    """Resized (not cropped) to side x side; an image already that size is kept pixel for pixel."""
    if tuple(image.shape[-2:]) == (side, side):
        return image
    return TF.resize(image, [side, side], antialias=True)


def mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per channel over every pixel, in [0, 1] units, summed in float64 a chunk at a time (no float
    copy of the whole set). A constant channel gets std 1/255, not 0: normalising divides by it."""
    c = images.shape[1]
    total, squares = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(1024):
        x = chunk.transpose(0, 1).reshape(c, -1).double()
        total += x.sum(1)
        squares += (x * x).sum(1)
    n = images.numel() // c
    mean = total / n / 255
    std = (squares / n / 255**2 - mean**2).clamp_min(0).sqrt().clamp_min(1 / 255)
    return mean.tolist(), std.tolist()
