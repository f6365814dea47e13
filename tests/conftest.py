"""Shared fixtures. Each module's fixtures sit in their own marked block."""

from __future__ import annotations

import dataclasses
import os
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from builders import PG, build_report_study, make_cifar, write_idx, write_study

# Every `python -m hpo.*` subprocess runs this checkout's package, whatever the venv has installed
# (an editable install of another checkout, a worktree): they inherit this.
ROOT = Path(__file__).resolve().parents[1]
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
# One process unless a test asks for workers: a test's trials then come in a known order, and it
# does not matter how many cores the machine has. The default itself (auto) is tested in
# tests/test_placement.py, which removes this.
os.environ["HPO_WORKERS"] = "1"

# ---------------------------------------------------------------- hpo.training.data fixtures (tests/test_data.py)

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_mnist_system() -> Path:
    """The real Fashion-MNIST from Debian's dataset-fashion-mnist package. Missing is a failure,
    not a skip: ./setup.sh and CI install it, and the tests that need it must run."""
    if not (SYSTEM_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            f"real Fashion-MNIST not installed at {SYSTEM_FASHION_MNIST} "
            "(run ./setup.sh, or apt-get install dataset-fashion-mnist)"
        )
    return SYSTEM_FASHION_MNIST


@pytest.fixture(scope="session")
def empty_data_dir(tmp_path_factory, fashion_mnist_system) -> Path:
    """An empty data folder: Fashion-MNIST loads from the system copy. One per session, so that
    hpo.training.data's per-(dataset, folder) cache reads the real files only once."""
    return tmp_path_factory.mktemp("data")


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


@pytest.fixture
def report_study(tmp_path):
    """A factory: report_study(kind="full", name="lenet_lr") -> (folder, storage URL) under tmp_path."""
    return lambda kind="full", name="lenet_lr": build_report_study(tmp_path, name=name, kind=kind)


# ---------------------------------------------------------------- study fixtures
# (tests/test_study.py, test_run.py, test_workers.py, test_store_faults.py, ...)


@pytest.fixture
def study_dir(tmp_path, monkeypatch, fashion_mnist_system):
    """A tiny study folder in an empty working directory (its storage/ and models/ land there)."""
    monkeypatch.chdir(tmp_path)
    return write_study(tmp_path / "studies" / "tiny")


@pytest.fixture
def pg_study(study_dir):
    """(name, folder): the tiny study in a folder with a unique name, to run against PostgreSQL (PG);
    the study is deleted from the server afterwards."""
    name = f"w{uuid.uuid4().hex[:10]}"
    folder = write_study(study_dir.parent / name)
    yield name, folder
    try:
        optuna.delete_study(study_name=name, storage=PG)
    except KeyError:
        pass


# ---- hpo.training.nets / hpo.train: a tiny real Fashion-MNIST subset, one thread --------------------------
# Used by tests/test_loop.py and test_train.py (and restore_threads by tests/test_nets.py). The subset
# is cut once per session from the real files. Runs use one thread: on a shared 2-core machine a 2-thread
# OpenMP pool stalls at every barrier whenever another process holds a core (measured 5-10x
# slower), and a run is bit-identical at any fixed thread count.
TRAIN_SUBSET = {"train_size": 2000, "test_size": 1000}


@pytest.fixture(scope="session")
def fashion_subset(empty_data_dir):
    """(DataSpec, Data): 2,000 train / 6,000 val / 1,000 test real Fashion-MNIST images on the CPU."""
    from hpo.config import DataSpec
    from hpo.training import data as data_mod

    spec = DataSpec(**TRAIN_SUBSET)
    return spec, data_mod.load(spec, 0, "cpu", root=empty_data_dir)


@pytest.fixture
def train_config(fashion_subset):
    """A factory: train_config(lr=0.05, epochs=2, ...) -> TrainConfig of LeNet-5 on the subset.
    Keyword arguments go to TrainSpec, except seed, model, activation and augment."""
    from hpo.config import ModelSpec, TrainConfig, TrainSpec

    def make(seed=0, model="lenet5", activation="relu", augment=True, **train):
        train = {"epochs": 2, "lr": 0.05, "threads": 1, **train}
        data_spec = dataclasses.replace(fashion_subset[0], augment=augment)
        return TrainConfig(data=data_spec, model=ModelSpec(model, activation), train=TrainSpec(**train), seed=seed)

    return make


@pytest.fixture
def restore_threads():
    """setup_runtime sets torch's process-wide thread count; put it back after the test."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---- a real single-node Slurm (tests/test_slurm.py) -----------------------------------------------


@pytest.fixture(scope="module")
def slurm():
    """munged, slurmctld and slurmd on this machine, configured in a temporary folder; stopped after
    the module. Not installed or not root is a failure, not a skip: ./setup.sh installs it."""
    from slurm import Slurm

    try:
        cluster = Slurm()
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield cluster.start()
    finally:
        cluster.stop()
