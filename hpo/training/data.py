"""Datasets as uint8 tensors on the training device, and the batched augment/normalise hot path.

The raw files are read once per process; each ``load`` only cuts a seeded split. ``describe`` says
what a dataset is (shape, classes, normalisation) for any data spec, a folder's included. ``batches`` works
on whole batches with tensor ops (no DataLoader, no PIL, no per-image Python), as airbench does.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hpo.config import DataSpec
from hpo.errors import HpoError
from hpo.training.datasets import DATASETS, READERS, Arrays, DatasetInfo
from hpo.training.folder import FOLDER, mean_std, read_folder

DATA_DIR_ENV = "HPO_DATA_DIR"


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``override``, else $HPO_DATA_DIR, else ./data (ignored by git)."""
    chosen = override if override is not None else os.environ.get(DATA_DIR_ENV) or "data"
    return Path(chosen).expanduser()


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W] on the training device
    labels: torch.Tensor  # int64 [N] on the training device

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Data:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split


@functools.cache
def _raw(name: str, root: Path):
    """CPU uint8 tensors of the official train and test sets, read once per (dataset, folder).
    Callers index into them (which copies) and never write to them."""
    return READERS[name](root)


def describe(spec: DataSpec, root: str | os.PathLike | None = None) -> DatasetInfo:
    """``spec``'s dataset as the nets, the loop and the report need it (channels, size, classes and
    their names, normalisation): the registry's entry for a built-in dataset; for a folder, read from
    its images (checked, decoded once and cached), so a bad folder fails here, in one line.
    ``load`` puts the same info in ``Data.info``, but for a folder without test/, whose mean and
    std there are its training part's (the test share is seeded, so it is known only with the seed)."""
    if spec.dataset == FOLDER:
        return read_folder(spec.path, spec.image_size, data_dir(root).resolve()).info
    return DATASETS[spec.dataset]


def _sets(spec: DataSpec, root: Path, g: torch.Generator) -> tuple[DatasetInfo, Arrays, Arrays]:
    """The info, training set and test set (CPU, shared: callers index into them, never write).
    A folder without test/ gives a seeded, stratified share of its train/ as the test set, drawn
    from ``g`` before the validation split; a built-in dataset draws nothing here, so its splits stay as they were."""
    if spec.dataset != FOLDER:
        return DATASETS[spec.dataset], *_raw(spec.dataset, root)
    images = read_folder(spec.path, spec.image_size, root)  # decoded or read once per process (hpo.training.folder)
    if images.test is not None:
        return images.info, images.train, images.test
    train, test = _stratified(images.train, spec.test_fraction, g)
    # Normalised by the training part alone: the held-out test images must not shape the inputs.
    mean, std = mean_std(train[0])
    return dataclasses.replace(images.info, mean=tuple(mean), std=tuple(std)), train, test


def _stratified(train: Arrays, fraction: float, g: torch.Generator) -> tuple[Arrays, Arrays]:
    """``fraction`` of each class (at least one image, never its last) held out: a small class keeps
    its share of the test set, where a plain random cut could leave it out."""
    x, y = train
    held = torch.zeros(len(y), dtype=torch.bool)
    for c in y.unique().tolist():
        members = (y == c).nonzero().flatten()
        k = min(max(round(fraction * len(members)), 1), len(members) - 1)
        held[members[torch.randperm(len(members), generator=g)[:k]]] = True
    return (x[~held], y[~held]), (x[held], y[held])


def _subset(size: int, order: torch.Tensor, what: str) -> torch.Tensor:
    """The first ``size`` of the shuffled indices ``order`` (all of them for size 0), ascending:
    ascending reads are kinder to memory, and training reshuffles every epoch anyway."""
    if size > len(order):
        raise HpoError(f"data.{what} = {size} is more than the {len(order)} images available; lower it (0: all)")
    return (order[:size] if size else order).sort().values


def _to(split: Split, device: torch.device) -> Split:
    if device.type != "cuda":
        return Split(split.images.to(device), split.labels.to(device))
    # Pinned memory lets the host-to-device copy run asynchronously with the rest of the setup.
    return Split(*(t.pin_memory().to(device, non_blocking=True) for t in (split.images, split.labels)))


def split_seed(spec: DataSpec, seed: int) -> int:
    """The split's seed: the data section's own (a trial's recorded config sets it), else ``seed``."""
    return seed if spec.split_seed < 0 else spec.split_seed


def load(spec: DataSpec, seed: int, device: str | torch.device = "cpu", root: str | os.PathLike | None = None) -> Data:
    """The dataset ``spec`` names, split by ``seed``: validation held out of the training set
    (never the test set), then optional seeded subsets of train and test for quick runs. ``root``:
    the data folder (``data_dir``), where the built-in datasets' files and the folders' caches live."""
    g = torch.Generator().manual_seed(split_seed(spec, seed))
    info, (train_x, train_y), (test_x, test_y) = _sets(spec, data_dir(root).resolve(), g)
    order = torch.randperm(len(train_y), generator=g)
    n_val = round(spec.val_fraction * len(train_y))
    _check_split(spec, n_val, len(train_y), info.num_classes)
    val_idx = _subset(0, order[:n_val], "val_fraction")
    train_idx = _subset(spec.train_size, order[n_val:], "train_size")
    test_idx = _subset(spec.test_size, torch.randperm(len(test_y), generator=g), "test_size")
    device = torch.device(device)
    return Data(
        info=info,
        train=_to(Split(train_x[train_idx], train_y[train_idx]), device),
        val=_to(Split(train_x[val_idx], train_y[val_idx]), device),
        test=_to(Split(test_x[test_idx], test_y[test_idx]), device),
    )


def _check_split(spec: DataSpec, n_val: int, n_train: int, classes: int) -> None:
    """A validation set smaller than the class count scores in steps too coarse to select by (one
    image: 0% or 100%); a training set that small cannot learn every class."""
    if min(n_val, n_train - n_val) < classes:
        raise HpoError(
            f"data.val_fraction = {spec.val_fraction} of {n_train} {spec.dataset} training images leaves "
            f"{n_val} for validation and {n_train - n_val} for training; each needs at least {classes} "
            f"(one per class)"
        )


def random_crop_flip(images: torch.Tensor, info: DatasetInfo, generator: torch.Generator) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding=p) and, where ``info.flip``, RandomHorizontalFlip,
    drawn per image but applied to the whole uint8 batch at once."""
    n, c, h, w = images.shape
    p, device = info.crop_padding, images.device
    # Offsets in [0, 2p] into the zero-padded image, as RandomCrop draws them; then the flips.
    dy, dx = torch.randint(0, 2 * p + 1, (2, n), generator=generator).to(device) if p > 0 else (None, None)
    flip = (torch.rand(n, generator=generator) < 0.5).to(device) if info.flip else None
    if p == 0:
        return images if flip is None else torch.where(flip[:, None, None, None], images.flip(-1), images)
    if flip is None:
        return _windows(F.pad(images, (p, p, p, p)), dy, dx, h, w)
    # The mirror of the crop at dx is the crop at 2p - dx of the mirrored padded image. Lay that
    # beside the original, row by row, and one gather does crop and flip together.
    cols = w + 2 * p
    source = images.new_zeros(n, c, h + 2 * p, 2 * cols)
    source[..., p : p + h, p : p + w] = images
    source[..., p : p + h, cols + p : cols + p + w] = images.flip(-1)
    return _windows(source, dy, torch.where(flip, cols + 2 * p - dx, dx), h, w)


def _windows(source: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``source[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]`` for every i, in one ``index_select``.

    The view ``starts`` has a window at every flat offset of ``source`` (overlapping, no copy), so
    picking each image's window is an index_select over dim 0, which copies whole rows: several
    times faster than advanced indexing, which goes pixel by pixel."""
    source = source.contiguous()
    n, c, rows, cols = source.shape
    reach = (c - 1) * rows * cols + (h - 1) * cols + w  # elements from a window's first to its last, inclusive
    starts = source.as_strided((max(source.numel() - reach + 1, 0), c, h, w), (1, rows * cols, cols, 1))
    return starts.index_select(0, torch.arange(n, device=source.device) * (c * rows * cols) + dy * cols + dx)


def batches(
    split: Split,
    batch_size: int,
    info: DatasetInfo,
    *,
    generator: torch.Generator | None = None,
    augment: bool = False,
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x float32 [B, C, H, W] normalised, y int64 [B]) over ``split``; the last batch may be short.

    With ``generator`` (a CPU generator): shuffled, and augmented if asked. Without: in order, as
    evaluation wants, and augmenting is refused (evaluation data must not be random)."""
    if augment and generator is None:
        raise ValueError("batches(augment=True) needs a generator: augmentation is random")
    device, n = split.images.device, len(split)
    # /255 and normalisation folded into one affine step on the uint8 values.
    mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(info.std, device=device).view(1, -1, 1, 1) * 255
    order = torch.randperm(n, generator=generator).to(device) if generator is not None else None
    for start in range(0, n, batch_size):
        if order is None:
            x, y = split.images[start : start + batch_size], split.labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            # index_select copies whole images; images[idx] goes through the per-element index kernel.
            x, y = split.images.index_select(0, idx), split.labels.index_select(0, idx)
        if augment:
            x = random_crop_flip(x, info, generator)
        x = x.float().sub_(mean).div_(std)  # in place: the same values as (x - mean) / std, no temporaries
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y
