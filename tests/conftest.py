"""Shared fixtures. Each module's fixtures sit in their own marked block."""
from __future__ import annotations

import gzip
import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10

# ---------------------------------------------------------------- hpo.data fixtures (tests/test_data.py)

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_system() -> Path:
    """The real Fashion-MNIST from Debian's dataset-fashion-mnist package (skips where it is missing)."""
    if not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real Fashion-MNIST not installed at {SYSTEM_FASHION_MNIST} (apt-get install dataset-fashion-mnist)")
    return SYSTEM_FASHION_MNIST


@pytest.fixture(scope="session")
def empty_data_dir(tmp_path_factory, fashion_mnist_system) -> Path:
    """An empty data folder: Fashion-MNIST loads from the system copy. One per session, so that
    hpo.data's per-(dataset, folder) cache reads the real files only once."""
    return tmp_path_factory.mktemp("data")


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_cifar(root: Path, per_batch: int = 20, test: int = 30, bytes_keys: bool = False, seed: int = 0) -> type[CIFAR10]:
    """CIFAR-10 files in the official on-disk format under ``root``, plus the tarball of them in
    ``root.parent / "archive"``. Returns a CIFAR10 subclass that carries their md5s, so torchvision's
    checks run on them, and a url to nowhere, so a "download" fails without touching the network.

    The official files are Python 2 pickles (str keys under encoding="latin1", bytes under "bytes");
    ``bytes_keys`` writes Python 3 bytes keys instead, as a re-pickled copy would have."""
    rng = np.random.default_rng(seed)
    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = test if name == "test_batch" else per_batch
        entry = {key("data"): rng.integers(0, 256, (n, 3072), dtype=np.uint8), key("labels"): [(j + i) % 10 for j in range(n)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {key("label_names"): ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    archive = root.parent / "archive" / CIFAR10.filename
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR10.base_folder)
    return type(
        "GeneratedCIFAR10",
        (CIFAR10,),
        {
            "train_list": [[name, _md5(folder / name)] for name in names[:5]],
            "test_list": [["test_batch", _md5(folder / "test_batch")]],
            "meta": {"filename": "batches.meta", "key": "label_names", "md5": _md5(folder / "batches.meta")},
            "tgz_md5": _md5(archive),
            "url": (root.parent / "offline" / CIFAR10.filename).as_uri(),
        },
    )


@pytest.fixture
def cifar_files(tmp_path):
    """make_cifar as a fixture: ``cifar_files(bytes_keys=...)`` -> (data folder, CIFAR10 subclass)."""

    def make(**kwargs):
        root = tmp_path / "data"
        return root, make_cifar(root, **kwargs)

    return make


@pytest.fixture
def idx_writer():
    return write_idx


# ---------------------------------------------------------------- end of hpo.data fixtures
