"""hpo.training.data and hpo.training.datasets: real Fashion-MNIST from the system copy; generated MNIST,
KMNIST, CIFAR-10 and CIFAR-100 files in their exact on-disk formats. Image folders: tests/test_folder.py."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import CIFAR10, CIFAR100, KMNIST, MNIST, FashionMNIST
from torchvision.transforms.v2 import functional as TF

from hpo import config
from hpo.config import DataSpec
from hpo.errors import HpoError
from hpo.training import data, datasets
from hpo.training.datasets import (
    IDX_FILES,
    read_cifar10,
    read_cifar100,
    read_fashion_mnist,
    read_kmnist,
    read_mnist,
)
from hpo.training.folder import FOLDER

FASHION, CIFAR = datasets.DATASETS["fashion_mnist"], datasets.DATASETS["cifar10"]


# ---------------------------------------------------------------- registry and data folder


@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_registry(name):
    info = datasets.DATASETS[name]
    assert info.name == name and name in data.READERS
    assert len(info.mean) == len(info.std) == info.channels
    assert all(0 < v < 1 for v in info.mean + info.std)
    assert info.crop_padding >= 0


def test_flip_only_for_cifar():
    assert (FASHION.crop_padding, FASHION.flip) == (2, False)
    assert (CIFAR.crop_padding, CIFAR.flip) == (4, True)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    assert data.data_dir() == Path("data")
    monkeypatch.setenv(data.DATA_DIR_ENV, "")  # set but empty counts as unset
    assert data.data_dir() == Path("data")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "env"))
    assert data.data_dir() == tmp_path / "env"
    assert data.data_dir(tmp_path / "given") == tmp_path / "given"
    assert data.data_dir(str(tmp_path / "given")) == tmp_path / "given"


def test_unknown_dataset():
    known = "cifar10, cifar100, fashion_mnist, folder, kmnist, mnist"
    with pytest.raises(HpoError, match=f"unknown data.dataset 'imagenet'.*choose one of: {known}$"):
        config.validate(config.TrainConfig(data=DataSpec(dataset="imagenet")))


def test_registries_implement_exactly_the_declared_datasets():
    # Every built-in dataset has a static entry and a reader; a folder's info is computed from its images.
    declared = set(config.declared(DataSpec, "dataset"))
    assert FOLDER in declared
    assert set(datasets.DATASETS) == set(datasets.READERS) == declared - {FOLDER}
    assert all(info.name == name for name, info in datasets.DATASETS.items())


@pytest.mark.parametrize("name", sorted(datasets.DATASETS))
def test_describe_a_built_in_dataset_is_its_registry_entry(name):
    assert data.describe(DataSpec(dataset=name)) is datasets.DATASETS[name]


def test_class_names():
    for info in datasets.DATASETS.values():
        assert len(info.class_names) == len(set(info.class_names)) == info.num_classes, info.name
    assert datasets.DATASETS["mnist"].class_names == tuple("0123456789")
    assert datasets.DATASETS["fashion_mnist"].class_names[:2] == ("T-shirt/top", "Trouser")
    assert datasets.DATASETS["kmnist"].class_names[:3] == ("o", "ki", "su")
    assert datasets.DATASETS["cifar10"].class_names[:2] == ("airplane", "automobile")
    hundred = datasets.DATASETS["cifar100"].class_names  # the meta file's order: alphabetical
    assert hundred == tuple(sorted(hundred)) and hundred[:2] == ("apple", "aquarium_fish") and hundred[-1] == "worm"
    assert (datasets.DATASETS["cifar100"].size, datasets.DATASETS["cifar100"].flip) == (32, True)


# ---------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="session")
def fashion_raw(empty_data_dir):
    """The cached raw tensors that ``load`` cuts from (same cache entry)."""
    return data._raw("fashion_mnist", empty_data_dir.resolve())


def test_fashion_mnist_real(fashion_raw):
    (train_x, train_y), (test_x, test_y) = fashion_raw
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_x.dtype == test_x.dtype == torch.uint8
    assert train_y.dtype == test_y.dtype == torch.int64
    assert train_y.bincount().tolist() == [6000] * 10  # the published class balance
    assert test_y.bincount().tolist() == [1000] * 10
    pixels = train_x.float() / 255
    assert pixels.mean().item() == pytest.approx(FASHION.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(FASHION.std[0], abs=1e-3)


def _tiny_idx(folder: Path, write, n: int = 7, gz: bool = True, seed: int = 0) -> np.ndarray:
    """The four IDX files of n train and n - 2 test images (labels 0, 1, 2, ...); the train images."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    images = {part: rng.integers(0, 256, (count, 28, 28)) for part, count in (("train", n), ("t10k", n - 2))}
    for part, array in images.items():
        write(folder / f"{part}-images-idx3-ubyte{suffix}", array)
        write(folder / f"{part}-labels-idx1-ubyte{suffix}", np.arange(len(array)) % 10)
    return images["train"]


@pytest.mark.parametrize(
    "layout, gz", [("FashionMNIST/raw", False), ("FashionMNIST/raw", True), ("fashion-mnist", True)]
)
def test_fashion_mnist_data_folder_comes_first(tmp_path, idx_writer, layout, gz):
    _tiny_idx(tmp_path / layout, idx_writer, gz=gz)
    (train_x, train_y), (test_x, test_y) = read_fashion_mnist(tmp_path)
    assert train_x.shape == (7, 1, 28, 28) and test_x.shape == (5, 1, 28, 28)
    assert train_y.tolist() == list(range(7))


def test_fashion_mnist_incomplete_folder_is_skipped(tmp_path, idx_writer):
    idx_writer(tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    empty = tmp_path / "nowhere"
    _tiny_idx(empty, idx_writer)
    (train_x, _), _ = read_fashion_mnist(tmp_path, system=empty)
    assert len(train_x) == 7


def _copy_with_truncated(src: Path, dst: Path, name: str, keep: int) -> Path:
    dst.mkdir(parents=True)
    for stem in IDX_FILES:
        shutil.copy(src / f"{stem}.gz", dst / f"{stem}.gz")
    bad = dst / name
    bad.write_bytes(bad.read_bytes()[:keep])
    return bad


def test_fashion_mnist_truncated_gzip(tmp_path, fashion_mnist_system):
    bad = _copy_with_truncated(fashion_mnist_system, tmp_path / "fashion-mnist", "t10k-images-idx3-ubyte.gz", 100_000)
    with pytest.raises(HpoError) as error:
        read_fashion_mnist(tmp_path)
    message = str(error.value)
    assert str(bad) in message and "delete" in message and "\n" not in message


def test_fashion_mnist_truncated_plain_file(tmp_path, idx_writer):
    _tiny_idx(tmp_path / "fashion-mnist", idx_writer, gz=False)
    bad = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(HpoError, match="truncated or corrupt") as error:
        read_fashion_mnist(tmp_path)
    assert str(bad) in str(error.value)


def test_fashion_mnist_bad_header(tmp_path, idx_writer):
    _tiny_idx(tmp_path / "fashion-mnist", idx_writer, gz=False)
    (tmp_path / "fashion-mnist" / "train-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(HpoError, match="not an IDX file"):
        read_fashion_mnist(tmp_path)


def test_fashion_mnist_corrupt_system_copy_says_reinstall(tmp_path, fashion_mnist_system):
    system = tmp_path / "system"
    _copy_with_truncated(fashion_mnist_system, system, "train-labels-idx1-ubyte.gz", 5000)
    with pytest.raises(HpoError, match="reinstall dataset-fashion-mnist"):
        read_fashion_mnist(tmp_path / "data", system=system)


def test_fashion_mnist_missing_everywhere(tmp_path):
    # Mirrors that point at a missing local folder: torchvision's download runs and fails, offline.
    offline = type("FashionMNIST", (FashionMNIST,), {"mirrors": [(tmp_path / "offline").as_uri() + "/"]})
    root = tmp_path / "data"
    with pytest.raises(HpoError) as error:
        read_fashion_mnist(root, system=tmp_path / "no-system", source=offline)
    message = str(error.value)
    assert "\n" not in message
    assert (
        str(root / "fashion-mnist") in message and "HPO_DATA_DIR" in message and "train-images-idx3-ubyte.gz" in message
    )


# ---------------------------------------------------------------- MNIST and KMNIST: the same IDX files

IDX_READERS = {"mnist": (read_mnist, MNIST), "kmnist": (read_kmnist, KMNIST)}


@pytest.mark.parametrize(
    "name, layout, gz",
    [
        ("mnist", "MNIST/raw", False),
        ("mnist", "mnist", True),
        ("kmnist", "KMNIST/raw", True),
        ("kmnist", "kmnist", False),
    ],
)
def test_mnist_and_kmnist_from_the_data_folder(tmp_path, idx_writer, name, layout, gz):
    images = _tiny_idx(tmp_path / layout, idx_writer, n=9, gz=gz, seed=1)
    _tiny_idx(tmp_path / "fashion-mnist", idx_writer, n=12, seed=2)  # another dataset's files are not read
    read, _ = IDX_READERS[name]
    (train_x, train_y), (test_x, test_y) = read(tmp_path)
    assert train_x.shape == (9, 1, 28, 28) and test_x.shape == (7, 1, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert torch.equal(train_x[:, 0], torch.from_numpy(images.astype(np.uint8)))
    assert train_y.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8] and test_y.tolist() == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("name", sorted(IDX_READERS))
def test_mnist_and_kmnist_agree_with_torchvision(tmp_path, idx_writer, name):
    read, source = IDX_READERS[name]
    _tiny_idx(tmp_path / source.__name__ / "raw", idx_writer, n=11, gz=False)
    (train_x, train_y), (test_x, _) = read(tmp_path)
    theirs = source(str(tmp_path), train=True)  # torchvision's own reader of the same raw files
    assert torch.equal(train_x[:, 0], theirs.data) and torch.equal(train_y, theirs.targets)
    assert torch.equal(test_x[:, 0], source(str(tmp_path), train=False).data)


@pytest.mark.parametrize("name", sorted(IDX_READERS))
def test_mnist_and_kmnist_missing(tmp_path, name):
    read, source = IDX_READERS[name]
    offline = type(source.__name__, (source,), {"mirrors": [(tmp_path / "offline").as_uri() + "/"]})
    root = tmp_path / "data"
    with pytest.raises(HpoError) as error:
        read(root, source=offline)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{source.__name__} not found in {root / source.__name__}")
    for part in (str(root / name), "HPO_DATA_DIR", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert part in message
    assert "dataset-fashion-mnist" not in message  # no system package holds these


def test_mnist_bad_labels_name_the_dataset(tmp_path, idx_writer):
    _tiny_idx(tmp_path / "mnist", idx_writer, gz=False)
    idx_writer(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.full(5, 12))
    with pytest.raises(
        HpoError, match=r"^MNIST files in .*mnist do not match \(t10k: \(5, 28, 28\) images, 5 labels\)"
    ):
        read_mnist(tmp_path)


# ---------------------------------------------------------------- load: seeded splits


def _keys(split: data.Split) -> torch.Tensor:
    """One number per (image, label), to compare splits as multisets (Fashion-MNIST has duplicate images)."""
    weights = torch.randn(split.images[0].numel() + 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    flat = torch.cat([split.images.flatten(1).double(), split.labels[:, None].double()], dim=1)
    return (flat @ weights).sort().values


def test_split_is_a_seeded_partition(empty_data_dir, fashion_raw):
    spec = DataSpec(val_fraction=0.1)
    a, b = data.load(spec, seed=3, root=empty_data_dir), data.load(spec, seed=3, root=empty_data_dir)
    assert (len(a.train), len(a.val), len(a.test)) == (54000, 6000, 10000)
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(a, part).images, getattr(b, part).images)
        assert torch.equal(getattr(a, part).labels, getattr(b, part).labels)
    # train and val together are exactly the official training set: no overlap, nothing lost
    full = data.Split(*fashion_raw[0])
    both = data.Split(torch.cat([a.train.images, a.val.images]), torch.cat([a.train.labels, a.val.labels]))
    assert torch.equal(_keys(both), _keys(full))
    assert not torch.equal(data.load(spec, seed=4, root=empty_data_dir).val.labels, a.val.labels)
    assert a.info is FASHION and a.train.images.device.type == "cpu"


def test_train_and_test_subsets(empty_data_dir):
    full = data.load(DataSpec(), seed=5, root=empty_data_dir)
    small = data.load(DataSpec(train_size=1000, test_size=500), seed=5, root=empty_data_dir)
    assert (len(small.train), len(small.val), len(small.test)) == (1000, 6000, 500)
    assert torch.equal(small.val.images, full.val.images)  # the subset never eats into validation
    assert small.train.images.dtype == torch.uint8 and small.train.labels.dtype == torch.int64
    # the subset is drawn from this seed's train part, and a different seed draws another
    assert torch.isin(_keys(small.train), _keys(full.train)).all()
    other = data.load(DataSpec(train_size=1000, test_size=500), seed=6, root=empty_data_dir)
    assert not torch.equal(other.train.labels, small.train.labels)
    assert not torch.equal(other.test.labels, small.test.labels)


def test_subset_larger_than_the_set(empty_data_dir):
    with pytest.raises(HpoError, match="data.test_size = 10001"):
        data.load(DataSpec(test_size=10001), seed=0, root=empty_data_dir)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_to_cuda(empty_data_dir):
    d = data.load(DataSpec(train_size=256, test_size=128), seed=0, device="cuda", root=empty_data_dir)
    assert d.train.images.is_cuda and d.test.labels.is_cuda and d.train.images.dtype == torch.uint8
    x, y = next(data.batches(d.train, 64, d.info, generator=torch.Generator().manual_seed(0), augment=True))
    assert x.is_cuda and y.is_cuda and x.shape == (64, 1, 28, 28)


# ---------------------------------------------------------------- batches


def _synthetic(info: data.DatasetInfo, n: int, seed: int = 0) -> data.Split:
    """Random images (so each crop offset is recognisable) labelled by their index."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, info.channels, info.size, info.size), generator=g, dtype=torch.uint8)
    return data.Split(images, torch.arange(n))


def _pixels(x: torch.Tensor, info: data.DatasetInfo) -> torch.Tensor:
    """Undo the normalisation: back to uint8 pixel values."""
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (info.mean, info.std))
    return (x * std * 255 + mean * 255).round().to(torch.uint8)


def test_batches_in_order_keep_the_last_partial_batch():
    split = _synthetic(FASHION, 10)
    out = list(data.batches(split, 4, FASHION))
    assert [len(y) for _, y in out] == [4, 4, 2]
    assert torch.cat([y for _, y in out]).tolist() == list(range(10))
    x, y = out[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (4, 1, 28, 28)
    assert torch.equal(_pixels(torch.cat([x for x, _ in out]), FASHION), split.images)


def test_batches_shuffle_is_a_seeded_permutation():
    split = _synthetic(CIFAR, 50)

    def run(seed):
        return [y for _, y in data.batches(split, 16, CIFAR, generator=torch.Generator().manual_seed(seed))]

    first = run(1)
    assert [len(y) for y in first] == [16, 16, 16, 2]
    assert sorted(torch.cat(first).tolist()) == list(range(50)) and torch.cat(first).tolist() != list(range(50))
    assert all(torch.equal(a, b) for a, b in zip(first, run(1), strict=True))
    assert not torch.equal(torch.cat(first), torch.cat(run(2)))


def test_augmented_batches_are_deterministic():
    split = _synthetic(CIFAR, 40)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return [x for x, _ in data.batches(split, 16, CIFAR, generator=generator, augment=True)]

    assert all(torch.equal(a, b) for a, b in zip(run(7), run(7), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(run(7), run(8), strict=True))


def test_normalised_train_split_is_standard(empty_data_dir):
    d = data.load(DataSpec(), seed=0, root=empty_data_dir)
    x = torch.cat([x for x, _ in data.batches(d.train, 8192, d.info)])
    assert x.mean().item() == pytest.approx(0, abs=0.01)
    assert x.std().item() == pytest.approx(1, abs=0.01)


def _match(out: torch.Tensor, source: torch.Tensor, p: int) -> tuple[int, int, bool]:
    """The (top, left, flipped) for which torchvision's crop of the zero-padded source gives ``out``."""
    padded = TF.pad(source, [p])
    h, w = source.shape[-2:]
    for top in range(2 * p + 1):
        for left in range(2 * p + 1):
            crop = TF.crop(padded, top, left, h, w)
            for flipped, candidate in ((False, crop), (True, TF.horizontal_flip(crop))):
                if torch.equal(out, candidate):
                    return top, left, flipped
    raise AssertionError("output is no crop of its padded source")


@pytest.mark.parametrize("info", [FASHION, CIFAR], ids=lambda i: i.name)
def test_augment_is_random_crop_and_flip(info):
    split = _synthetic(info, 300)
    p = info.crop_padding
    found = []
    for x, y in data.batches(split, 128, info, generator=torch.Generator().manual_seed(0), augment=True):
        assert x.shape == (len(y), info.channels, info.size, info.size)
        for out, i in zip(_pixels(x, info), y.tolist(), strict=True):
            found.append(_match(out, split.images[i], p))
    tops, lefts, flips = zip(*found, strict=True)
    assert set(tops) == set(lefts) == set(range(2 * p + 1))  # every offset of RandomCrop occurs
    if info.flip:
        assert 0.35 < sum(flips) / len(flips) < 0.65
    else:
        assert not any(flips)


def test_crop_padding_is_zero_before_normalising():
    split = data.Split(torch.full((64, 3, 32, 32), 255, dtype=torch.uint8), torch.arange(64))
    x, _ = next(data.batches(split, 64, CIFAR, generator=torch.Generator().manual_seed(0), augment=True))
    pixels = _pixels(x, CIFAR)
    assert set(pixels.unique().tolist()) == {0, 255}  # only padding and image, no blending
    zero = (-torch.tensor(CIFAR.mean) / torch.tensor(CIFAR.std)).view(3, 1, 1)
    corners = x[:, :, 0, 0][pixels[:, 0, 0, 0] == 0]  # crops whose top-left pixel is padding
    assert len(corners) > 0 and torch.allclose(corners, zero.view(1, 3).expand_as(corners), atol=1e-5)


def test_augment_needs_a_generator():
    with pytest.raises(ValueError, match="generator"):
        next(data.batches(_synthetic(FASHION, 4), 2, FASHION, augment=True))


def test_channels_last():
    split = _synthetic(CIFAR, 8)
    ((x, _),) = data.batches(split, 8, CIFAR, channels_last=True)
    ((plain, _),) = data.batches(split, 8, CIFAR)
    assert x.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, plain)


# ---------------------------------------------------------------- CIFAR-10 (generated files in the official format)


@pytest.mark.parametrize("bytes_keys", [False, True], ids=["str-keys", "bytes-keys"])
def test_cifar10_reads_the_official_format(cifar_files, bytes_keys):
    root, source = cifar_files(per_batch=20, test=30, bytes_keys=bytes_keys)
    (train_x, train_y), (test_x, test_y) = read_cifar10(root, source=source)
    assert train_x.shape == (100, 3, 32, 32) and test_x.shape == (30, 3, 32, 32)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert train_y[:20].tolist() == [j % 10 for j in range(20)] and train_y[20:22].tolist() == [1, 2]
    # a known pixel: channel planes R, G, B, each 32x32 row-major, in a row of 3072
    entry = pickle.loads((root / "cifar-10-batches-py" / "data_batch_2").read_bytes())
    row = entry[b"data" if bytes_keys else "data"][3]
    c, h, w = 2, 5, 17
    assert train_x[20 + 3, c, h, w] == row[c * 1024 + h * 32 + w]
    assert train_x[20 + 3, 1, 31, 0] == row[1 * 1024 + 31 * 32 + 0]


def test_cifar10_agrees_with_torchvision(cifar_files):
    root, source = cifar_files()
    (train_x, train_y), (test_x, _) = read_cifar10(root, source=source)
    theirs = source(str(root), train=True)  # torchvision's own reader, HWC
    assert torch.equal(train_x, torch.from_numpy(theirs.data).permute(0, 3, 1, 2))
    assert train_y.tolist() == theirs.targets
    assert torch.equal(test_x, torch.from_numpy(source(str(root), train=False).data).permute(0, 3, 1, 2))


def test_cifar10_from_a_dropped_tarball(cifar_files):
    root, source = cifar_files()
    expected = read_cifar10(root, source=source)
    shutil.rmtree(root / "cifar-10-batches-py")
    shutil.copy(root.parent / "archive" / "cifar-10-python.tar.gz", root)
    got = read_cifar10(root, source=source)  # extracted by torchvision; its url leads nowhere
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert all(torch.equal(a, b) for a, b in zip(expected[0] + expected[1], got[0] + got[1], strict=True))


def test_cifar10_corrupt_file_fails_the_md5_check(cifar_files):
    root, source = cifar_files()
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    raw = bytearray(batch.read_bytes())
    # One wrong pixel in a pickle that still loads: only the md5 can tell. (Protocol 2 stores the
    # array as latin-1 text in UTF-8, so change an ASCII byte into another ASCII byte.)
    i = next(i for i in range(len(raw) // 2, len(raw)) if raw[i] < 0x80)
    raw[i] ^= 0x01
    batch.write_bytes(bytes(raw))
    assert pickle.loads(bytes(raw), encoding="latin1")["data"].shape == (20, 3072)
    with pytest.raises(HpoError, match="fail their md5 check"):
        read_cifar10(root, source=source)


def test_cifar10_bad_tarball(cifar_files):
    root, source = cifar_files()
    shutil.rmtree(root / "cifar-10-batches-py")
    (root / "cifar-10-python.tar.gz").write_bytes(b"partial download")
    with pytest.raises(HpoError, match="cifar-10-python.tar.gz fails its md5 check"):
        read_cifar10(root, source=source)


@pytest.mark.parametrize(
    "kind, read, folder",
    [(CIFAR10, read_cifar10, "cifar-10-batches-py"), (CIFAR100, read_cifar100, "cifar-100-python")],
    ids=["cifar10", "cifar100"],
)
def test_cifar_missing(tmp_path, cifar_files, kind, read, folder):
    _, source = cifar_files(kind=kind)
    root = tmp_path / "empty"
    with pytest.raises(HpoError) as error:
        read(root, source=source)
    message = str(error.value)
    assert "\n" not in message
    for part in (
        str(root / folder),
        kind.filename,
        "HPO_DATA_DIR",
        f"https://www.cs.toronto.edu/~kriz/{kind.filename}",
    ):
        assert part in message


# ---------------------------------------------------------------- CIFAR-100 (generated files in the official format)


@pytest.mark.parametrize("bytes_keys", [False, True], ids=["str-keys", "bytes-keys"])
def test_cifar100_reads_the_official_format(cifar_files, bytes_keys):
    root, source = cifar_files(per_batch=250, test=40, bytes_keys=bytes_keys, kind=CIFAR100)
    (train_x, train_y), (test_x, test_y) = read_cifar100(root, source=source)
    assert train_x.shape == (250, 3, 32, 32) and test_x.shape == (40, 3, 32, 32)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    # the fine labels (0..99), not the 20 coarse ones beside them
    assert train_y.tolist() == [j % 100 for j in range(250)] and test_y.tolist() == [(j + 1) % 100 for j in range(40)]
    entry = pickle.loads((root / "cifar-100-python" / "train").read_bytes())
    row = entry[b"data" if bytes_keys else "data"][123]
    assert train_x[123, 2, 5, 17] == row[2 * 1024 + 5 * 32 + 17] and train_x[123, 0, 31, 31] == row[1023]


def test_cifar100_agrees_with_torchvision(cifar_files):
    root, source = cifar_files(per_batch=120, test=30, kind=CIFAR100)
    (train_x, train_y), (test_x, test_y) = read_cifar100(root, source=source)
    for ours, labels, train in ((train_x, train_y, True), (test_x, test_y, False)):
        theirs = source(str(root), train=train)  # torchvision's own reader (its md5 checks included), HWC
        assert (
            torch.equal(ours, torch.from_numpy(theirs.data).permute(0, 3, 1, 2)) and labels.tolist() == theirs.targets
        )
    assert tuple(source(str(root), train=False).classes) == datasets.DATASETS["cifar100"].class_names


def test_cifar100_corrupt_file_fails_the_md5_check(cifar_files):
    root, source = cifar_files(kind=CIFAR100)
    (root / "cifar-100-python" / "test").write_bytes(b"half a download")
    with pytest.raises(HpoError, match="^CIFAR-100 not found in .*cifar-100-python .*fail their md5 check"):
        read_cifar100(root, source=source)


def test_cifar_labels_out_of_range(cifar_files):
    root, source = cifar_files(classes=11)  # files that pass their md5 check but hold a label 10
    with pytest.raises(HpoError, match=r"cifar-10-batches-py holds labels outside 0..9: not CIFAR-10"):
        read_cifar10(root, source=source)
