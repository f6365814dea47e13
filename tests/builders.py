"""Builders the tests share: data files in the exact on-disk formats, study folders, and studies
written into a real store from records (no training). Plain functions: the fixtures that use them
are in conftest.py."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import math
import pickle
import tarfile
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from torchvision.datasets import CIFAR10, CIFAR100

from hpo.training.datasets import CIFAR10_CLASSES, CIFAR100_CLASSES

# ---------------------------------------------------------------- data files (tests/test_data.py)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An IDX file of unsigned bytes, gzipped when the name ends in .gz."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.suffix == ".gz" else raw)
    return path


def sha(path: Path) -> str:
    """A file's sha256 (hex): the same before and after shows that a command left the file untouched."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_cifar(
    root: Path,
    per_batch: int = 20,
    test: int = 30,
    bytes_keys: bool = False,
    seed: int = 0,
    kind: type[CIFAR10] = CIFAR10,
    classes: int | None = None,
    learnable: bool = False,
) -> type[CIFAR10]:
    """CIFAR-10 (or, with ``kind=CIFAR100``, CIFAR-100) files in the official on-disk format under
    ``root``, plus the tarball of them in ``root.parent / "archive"``. Returns a subclass of ``kind``
    that carries their md5s, so torchvision's checks run on them, and a url to nowhere, so a
    "download" fails without touching the network. Image j of file i has label (i + j) % classes
    (``classes``: the kind's own count unless a test wants labels out of range).

    The official files are Python 2 pickles (str keys under encoding="latin1", bytes under "bytes");
    ``bytes_keys`` writes Python 3 bytes keys instead, as a re-pickled copy would have. ``learnable``
    gives each class its own colour under the noise, so a network trained on them beats chance."""
    rng = np.random.default_rng(seed)
    hundred = kind is CIFAR100
    classes = classes or (100 if hundred else 10)
    folder = root / kind.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    train_names, test_names = [n for n, _ in kind.train_list], [n for n, _ in kind.test_list]
    for i, name in enumerate(train_names + test_names):
        n = test if name in test_names else per_batch
        labels = [(j + i) % classes for j in range(n)]
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        if learnable:  # each class's own colour (R, G, B planes of 1024 pixels each), a little noise on it
            colour = np.array([[(c * 97) % 256, (c * 53 + 80) % 256, (c * 29 + 160) % 256] for c in labels])
            data = np.clip(np.repeat(colour, 1024, axis=1) + rng.integers(-20, 21, (n, 3072)), 0, 255).astype(np.uint8)
        entry = {key("data"): data}
        if hundred:  # CIFAR-100's 20 superclasses beside the 100 fine labels, as the real files have them
            entry |= {key("fine_labels"): labels, key("coarse_labels"): [label // 5 for label in labels]}
        else:
            entry[key("labels")] = labels
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    names = CIFAR100_CLASSES if hundred else CIFAR10_CLASSES
    meta_file = kind.meta["filename"]
    (folder / meta_file).write_bytes(pickle.dumps({key(kind.meta["key"]): list(names)}, protocol=2))
    archive = root.parent / "archive" / kind.filename
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=kind.base_folder)
    return type(
        f"Generated{kind.__name__}",
        (kind,),
        {
            "train_list": [[name, _md5(folder / name)] for name in train_names],
            "test_list": [[name, _md5(folder / name)] for name in test_names],
            "meta": {"filename": meta_file, "key": kind.meta["key"], "md5": _md5(folder / meta_file)},
            "tgz_md5": _md5(archive),
            "url": (root.parent / "offline" / kind.filename).as_uri(),
        },
    )


# ---------------------------------------------------------------- hpo.report: studies built from records (no training)
# Used by tests/test_findings.py and tests/test_report.py. A study is written into a real SQLite
# store with optuna.create_trial + study.add_trial, its user attrs as docs/records.md lists them.

REPORT_BEST_LR = 0.03  # the formula's best learning rate
REPORT_MOMENTUM_COST = {0.5: 3.0, 0.9: 0.0, 0.99: 1.5}
REPORT_BATCH_COST = {64: 0.0, 128: 0.5, 256: 2.0}
REPORT_EPOCHS = 10
REPORT_FAIL_REASON = "diverged: loss nan at epoch 2"
REPORT_DIVERGED_REASON = "diverged: loss inf at epoch 3"


def report_val_acc(lr: float, momentum: float = 0.9, batch_size: int = 64) -> float:
    """The known answer: lr drives accuracy (best at 0.03), momentum and batch size shave a little."""
    return (
        90.0
        - 8.0 * math.log10(lr / REPORT_BEST_LR) ** 2
        - REPORT_MOMENTUM_COST[momentum]
        - REPORT_BATCH_COST[batch_size]
    )


def _report_trial_attrs(number, params, val_acc, epochs_run, status="ok", reason="", test_acc=None):
    curve = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "train_acc": val_acc - 5 + e / 2,
            "val_loss": 1.1 / e,
            "val_acc": val_acc - (epochs_run - e),
            "lr": params.get("lr", 0.01),
            "seconds": 1.5,
        }
        for e in range(1, epochs_run + 1)
    ]
    return {
        "status": status,
        "reason": reason,
        "val_acc": val_acc,
        "best_val_acc": val_acc,
        **({"test_acc": test_acc} if test_acc is not None else {}),
        "epochs_run": epochs_run,
        "wall_time_s": 1.5 * epochs_run,
        "images_per_s": 12000.0,
        "device": "cpu",
        "threads": 2,
        "params": 61706,
        "seed": 1000 + number,
        "config": {
            "data": {"dataset": "fashion_mnist", "val_fraction": 0.1},
            "model": {"name": "lenet5", "activation": "relu"},
            "train": {
                "epochs": REPORT_EPOCHS,
                "lr": params.get("lr", 0.01),
                "momentum": params.get("momentum", 0.9),
                "batch_size": params.get("batch_size", 64),
            },
            "seed": 7,
        },
        "versions": {"python": "3.11.2", "torch": "2.14.1", "torchvision": "0.29.1", "optuna": "5.0.0", "hpo": "0.1.0"},
        "curve": curve,
    }


def build_report_study(root, name="lenet_lr", kind="full", storage_file="storage/hpo.db"):
    """Write studies/NAME/study.toml and the study into ROOT/storage_file; return (folder, storage URL).

    kind: "full" (lr, momentum, batch_size; 16 complete, 3 pruned (one diverged), 1 failed), "one" (lr only),
    "categorical" (momentum, batch_size), "multi" (val_acc and wall_time), "fixed" (no searched
    parameter), "empty" (only pruned, failed and running trials), "none" (study.toml, no trials).
    """
    folder = root / "studies" / name
    folder.mkdir(parents=True, exist_ok=True)
    toml = (
        'description = "LeNet-5 on Fashion-MNIST: lr, momentum, batch size"\nseed = 7\n\n'
        f"[train]\nepochs = {REPORT_EPOCHS}\n\n"
        "[search]\nlr = { low = 1e-4, high = 0.3, log = true }\n"
        "momentum = [0.5, 0.9, 0.99]\nbatch_size = [64, 128, 256]\n"
    )
    (folder / "study.toml").write_text(toml)
    db = root / storage_file
    db.parent.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{db}"
    metrics = ["val_acc", "wall_time"] if kind == "multi" else ["val_acc"]
    directions = ["maximize", "minimize"] if kind == "multi" else ["maximize"]
    study = optuna.create_study(study_name=name, storage=url, directions=directions)
    for key, value in {
        "description": "LeNet-5 on Fashion-MNIST: lr, momentum, batch size",
        "study_file": str(folder / "study.toml"),
        "study_toml": toml,
        "seed": 7,
        "metrics": metrics,
        "epochs": REPORT_EPOCHS,
        "dataset": "fashion_mnist",
        "model": "lenet5",
    }.items():
        study.set_user_attr(key, value)
    if kind == "none":
        return folder, url
    dists = {
        "lr": FloatDistribution(1e-4, 0.3, log=True),
        "momentum": CategoricalDistribution([0.5, 0.9, 0.99]),
        "batch_size": CategoricalDistribution([64, 128, 256]),
    }
    keep = {
        "full": dists,
        "multi": dists,
        "one": {"lr": dists["lr"]},
        "empty": dists,
        "categorical": {k: dists[k] for k in ("momentum", "batch_size")},
        "fixed": {},
    }[kind]
    rng = np.random.default_rng(0)
    start = datetime.datetime(2026, 1, 5, 9, 0, 0)
    n = 20
    for number in range(n):
        full = {
            "lr": float(10 ** rng.uniform(-4, math.log10(0.3))),
            "momentum": [0.5, 0.9, 0.99][number % 3],
            "batch_size": [64, 128, 256][(number // 3) % 3],
        }
        params = {k: full[k] for k in keep}
        acc = report_val_acc(
            full["lr"] if "lr" in keep else REPORT_BEST_LR, params.get("momentum", 0.9), params.get("batch_size", 64)
        )
        acc = max(acc, 10.0)
        if kind == "fixed":
            acc = 85.0 + number % 5
        state, epochs_run, status, reason = TrialState.COMPLETE, REPORT_EPOCHS, "ok", ""
        if number in (3, 8) or kind == "empty" and number % 3 == 0:
            state, epochs_run, status, reason = (
                TrialState.PRUNED,
                2 + number % 2,
                "pruned",
                "below the median at epoch 2",
            )
        elif number == 13:  # hpo.search.objective records a divergence as a pruned trial with its reason
            state, epochs_run, status, reason = TrialState.PRUNED, 3, "diverged", REPORT_DIVERGED_REASON
        elif number == 17 or kind == "empty" and number % 3 == 1:
            state, epochs_run, status, reason = TrialState.FAIL, 2, "diverged", REPORT_FAIL_REASON
        elif kind == "empty":
            state = TrialState.RUNNING
        inter = {e: acc - (REPORT_EPOCHS - e) for e in range(1, epochs_run + 1)}
        if state == TrialState.PRUNED:
            inter = {e: acc - 20 - (REPORT_EPOCHS - e) for e in range(1, epochs_run + 1)}
        value = None
        if state == TrialState.COMPLETE:
            value = [acc, 10.0 + 200.0 / full["batch_size"] + number] if kind == "multi" else [acc]
        attrs = _report_trial_attrs(
            number,
            params,
            acc,
            epochs_run,
            status,
            reason,
            test_acc=acc - 0.5 if state == TrialState.COMPLETE else None,
        )
        trial = optuna.create_trial(
            state=state,
            values=value,
            params=params,
            distributions=keep,
            user_attrs=attrs,
            intermediate_values=inter if state != TrialState.FAIL else {},
        )
        trial.datetime_start = start + datetime.timedelta(seconds=20 * number)  # two workers' worth of overlap
        trial.datetime_complete = (
            None if state == TrialState.RUNNING else trial.datetime_start + datetime.timedelta(seconds=4 * epochs_run)
        )
        study.add_trial(trial)
    return folder, url


# ---------------------------------------------------------------- studies in PostgreSQL
# (tests/test_workers.py, test_store_faults.py)
# PostgreSQL runs on loopback on every development and CI machine; each test makes its own study
# (conftest.py's pg_study) and deletes it: other engineers share the server.

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def assert_exactly(trials, n: int, lost: int | None = None, clean: bool = False) -> None:
    """n trials that count (lost ones aside), unique numbers, nothing left RUNNING or WAITING;
    ``lost``: exactly that many lost ones (any number when None). ``clean``, what riding out store
    faults must leave: besides, no trial that counts failed, and each lost one was retried."""
    from hpo.storage.store import is_lost

    counted = [t for t in trials if not is_lost(t)]
    assert len(counted) == n, [(t.number, t.state.name, t.user_attrs.get("reason")) for t in trials]
    assert len({t.number for t in trials}) == len(trials)
    assert all(t.state in FINISHED for t in trials), [(t.number, t.state.name) for t in trials]
    gone = [t for t in trials if is_lost(t)]
    if lost is not None:
        assert len(gone) == lost, [(t.number, t.state.name) for t in trials]
    if not clean:
        return
    assert not [t.user_attrs.get("reason") for t in counted if t.state == TrialState.FAIL]
    for t in gone:  # retried with the same parameters, if it had any yet (a retry lost in turn is retried again)
        assert any(
            r.system_attrs.get("retry_history", [None])[-1] == t.number and (r.params == t.params or not t.params)
            for r in trials
        ), [(r.number, r.state.name, r.system_attrs) for r in trials]


# ---------------------------------------------------------------- study folders
# (tests/test_study.py, test_run.py, test_workers.py)

TINY_STUDY = """
description = "tiny test study"
seed = 0
trials = 3
[data]
dataset = "fashion_mnist"
val_fraction = 0.01   # 600 validation images
train_size = 2000
test_size = 200
[model]
name = "lenet5"
[train]
epochs = 2
batch_size = 64
lr = 0.05
momentum = 0.9
threads = 1
[search]
lr = { low = 1e-3, high = 0.5, log = true }
"""


def write_study(folder: Path, text: str = TINY_STUDY, **sections: str) -> Path:
    """A study folder under ``folder``; ``sections`` replace or add whole TOML sections by name."""
    body = text
    for name, content in sections.items():
        head = f"[{name}]"
        if head in body:
            start = body.index(head)
            end = body.find("\n[", start + 1)
            body = body[:start] + head + "\n" + content + ("\n" + body[end + 1 :] if end != -1 else "\n")
        else:
            body += f"\n{head}\n{content}\n"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.toml").write_text(body)
    return folder
