"""README promises that no other test holds to: --trials' default, the password kept out of hpo.run's
own output, --timeout and a second Ctrl-C under --workers, --data-dir, integer-range grids, the preset
table, and refusing to resume a study whose metric directions changed."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from builders import TINY_STUDY, write_idx, write_study
from optuna.trial import TrialState
from processes import Watched

from hpo import config, run
from hpo.errors import HpoError, counted
from hpo.search import study as study_mod

ROOT = Path(__file__).resolve().parents[1]
STORE = "sqlite:///storage/hpo.db"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
QUICK = "epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1"


def trials_of(url=STORE, name="tiny"):
    return optuna.load_study(study_name=name, storage=url).trials


# ---------------------------------------------------------------- --trials


def test_trials_defaults_to_the_study_files_trials(study_dir):
    write_study(study_dir, text=TINY_STUDY.replace("trials = 3", "trials = 2"), train=QUICK)
    assert run.main(["--study", str(study_dir), "--quiet"]) == 0
    assert len(trials_of()) == 2


def test_trials_is_20_when_the_study_file_has_none(study_dir):
    write_study(study_dir, text=TINY_STUDY.replace("trials = 3\n", ""))
    assert config.load(study_dir).trials == 20
    assert run.parser().parse_args(["--study", "x"]).trials is None  # so main falls back to the file's


# ---------------------------------------------------------------- the password


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_password_never_reaches_the_output(workers, study_dir, capsys):
    """PostgreSQL on loopback trusts every local user: the password is accepted and ignored."""
    name = f"p{uuid.uuid4().hex[:10]}"
    folder = write_study(study_dir.parent / name, train=QUICK)
    url = PG.replace("postgres@", "postgres:s3cret-pw@")
    try:
        assert run.main(["--study", str(folder), "--trials", "2", "--storage", url, "--workers", workers]) == 0
        out, err = capsys.readouterr()
    finally:
        optuna.delete_study(study_name=name, storage=PG)
    assert "s3cret-pw" not in out + err
    assert "in postgresql+psycopg://postgres:***@127.0.0.1:5432/test" in err  # the start line
    assert "--storage 'postgresql+psycopg://postgres:***@127.0.0.1:5432/test'" in out  # the report command


# ---------------------------------------------------------------- --timeout and a second Ctrl-C under --workers


def test_timeout_bounds_a_run_with_workers(study_dir, tmp_path):
    write_study(study_dir, train=QUICK, pruner='name = "none"')
    watched = Watched("--study", "tiny", "--trials", "60", "--workers", "2", "--timeout", "2", cwd=tmp_path)
    assert watched.finish() == 0, watched.err[-3000:]
    trials = trials_of(f"sqlite:///{tmp_path / 'storage/hpo.db'}")
    # Optuna looks at the clock between trials: each worker finishes the trial it is in, then stops.
    assert 2 <= len(trials) < 60 and all(t.state != TrialState.RUNNING for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert f"tiny: {counted(len(trials), 'trial')} added" in watched.out


def test_a_second_ctrl_c_kills_the_workers_outright(study_dir, tmp_path):
    write_study(
        study_dir,
        train="epochs = 200\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        pruner='name = "none"',
        search="lr = { low = 0.02, high = 0.08 }",
    )  # each worker's one trial trains on: none collapses
    url = f"sqlite:///{tmp_path / 'storage/hpo.db'}"
    watched = Watched("--study", "tiny", "--trials", "2", "--workers", "2", cwd=tmp_path)
    try:
        pids = [int(watched.wait_line(rf"^\[worker {i}\] pid (\d+): ").group(1)) for i in (0, 1)]
        for i in (0, 1):
            watched.wait_line(rf"^\[worker {i}\] study 'tiny' in ")
        _wait(lambda: len([t for t in trials_of(url) if t.state == TrialState.RUNNING]) == 2, "both trials running")
        # Frozen workers cannot act on the first signal's SIGTERM: only the second (SIGKILL) ends them.
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        watched.proc.send_signal(signal.SIGINT)
        watched.wait_line(r"^stopping: each worker marks its running trial FAIL")
        watched.proc.send_signal(signal.SIGINT)
        code = watched.finish(60)
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code == 130, watched.err[-3000:]
    for pid in pids:  # gone, not merely stopped
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    running = sorted(t.number for t in trials_of(url) if t.state == TrialState.RUNNING)
    assert running == [0, 1]  # killed mid-trial: failed as lost by the next run's heartbeat check
    assert "was left RUNNING by a killed worker" in watched.err


def _wait(check, what: str, deadline: float = 120) -> None:
    import time

    end = time.monotonic() + deadline
    while True:
        try:
            if check():
                return
        except Exception:  # the study is not in the store yet
            pass
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


# ---------------------------------------------------------------- --data-dir


def _one_class_fashion_mnist(folder: Path) -> None:
    """Fashion-MNIST files in the plain fashion-mnist/ layout, every image of class 3: a model
    trained on them scores 100%, which the real data never gives."""
    rng = np.random.default_rng(0)
    for part, n in (("train", 1000), ("t10k", 200)):
        write_idx(folder / "fashion-mnist" / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / "fashion-mnist" / f"{part}-labels-idx1-ubyte.gz", np.full(n, 3))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_data_dir_is_where_the_data_comes_from(workers, study_dir, tmp_path, monkeypatch):
    _one_class_fashion_mnist(tmp_path / "mine")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("HPO_DATA_DIR", str(tmp_path / "elsewhere"))  # --data-dir wins over it
    write_study(
        study_dir,
        text=TINY_STUDY.replace("train_size = 2000", "train_size = 500")
        .replace("test_size = 200", "test_size = 100")
        .replace("val_fraction = 0.01", "val_fraction = 0.1"),
        train=QUICK,
        pruner='name = "none"',
        search="lr = { low = 0.01, high = 0.05 }",
    )  # every lr here learns the one
    # class; the preset's range reaches 0.5, where a second worker's proposal can diverge (4 % seen)
    assert (
        run.main(
            ["--study", str(study_dir), "--trials", "2", "--workers", workers, "--data-dir", str(tmp_path / "mine")]
        )
        == 0
    )
    trials = trials_of()
    assert [(t.value, t.user_attrs["test_acc"]) for t in trials] == [(100.0, 100.0)] * 2


# ---------------------------------------------------------------- integer-range grids


def test_a_grid_over_an_integer_range_lists_its_integers(study_dir):
    write_study(
        study_dir,
        sampler='name = "grid"',
        search="warmup_epochs = { low = 0, high = 2 }\nbatch_size = { low = 32, high = 96, step = 32 }",
    )
    space = study_mod.grid_space(config.load(study_dir))
    assert space == {"warmup_epochs": [0, 1, 2], "batch_size": [32, 64, 96]}
    assert all(type(v) is int for values in space.values() for v in values)


def test_a_grid_study_over_an_integer_range_runs_each_point_once(study_dir):
    write_study(
        study_dir,
        train=QUICK,
        sampler='name = "grid"',
        pruner='name = "none"',
        search="batch_size = { low = 32, high = 64, step = 32 }",
    )
    assert run.main(["--study", str(study_dir), "--trials", "5", "--quiet"]) == 0  # the grid stops the study at 2
    trials = trials_of()
    assert sorted(t.params["batch_size"] for t in trials) == [32, 64]
    assert all(type(t.user_attrs["config"]["train"]["batch_size"]) is int for t in trials)


# ---------------------------------------------------------------- the preset table


def _preset_rows() -> dict[str, str]:
    """README's preset table: study name -> what the row says it answers."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| study | what it answers |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        names, says = line.strip("|").split("|", 1)
        for name in re.findall(r"`([a-z0-9_]+)`", names):
            rows[name] = says
    return rows


def test_the_preset_table_lists_every_study_folder():
    folders = {p.parent.name for p in (ROOT / "studies").glob("*/study.toml")}
    assert set(_preset_rows()) == folders


@pytest.mark.parametrize("name", sorted(p.parent.name for p in (ROOT / "studies").glob("*/study.toml")))
def test_each_preset_is_what_the_table_says(name):
    spec = config.load(ROOT / "studies" / name)
    says = _preset_rows()[name]
    b, search = spec.base, {p.name: p for p in spec.search}
    assert b.data.dataset == ("cifar10" if name.endswith("_cifar10") else "fashion_mnist")
    assert all(m < b.train.epochs for m in b.train.milestones), "a milestone past the last epoch never applies"
    if name.startswith("lenet_"):
        assert b.model.name == "lenet5"
    if name.startswith("lenet_lr"):
        assert search["lr"].log and (spec.sampler.name, spec.pruner.name) == ("tpe", "successive_halving")
    for param, values in (
        ("momentum", [0.5, 0.9, 0.95, 0.99]),
        ("batch_size", [32, 64, 128, 256]),
        ("activation", ["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"]),
    ):
        if name.startswith(f"lenet_{param}"):
            assert list(search[param].choices) == values and spec.sampler.name == "grid"
    if name.startswith("cnn_schedule"):
        assert b.model.name == "simple_cnn" and b.train.schedule == "step"
        assert {"lr", "momentum", "nesterov", "warmup_epochs"} <= set(search)
    if name == "cnn_schedule_cifar10":
        assert "45k/5k split, 200 epochs, decay at 50/100/150 by 0.2" in says
        assert (b.data.val_fraction, b.train.epochs, b.train.milestones, b.train.gamma) == (
            0.1,
            200,
            (50, 100, 150),
            0.2,
        )
    if name == "resnet18_lr_cifar10":
        assert "lr 0.001 / 0.01 / 0.1, 50 epochs, batch 128" in says
        assert b.model.name == "resnet18" and list(search["lr"].choices) == [0.001, 0.01, 0.1]
        assert (b.train.epochs, b.train.batch_size) == (50, 128)
    if name == "resnet18_schedule_cifar10":
        assert "lr 0.1, batch 256, 200 epochs: cosine vs step, warmup, label smoothing" in says
        assert b.model.name == "resnet18" and (b.train.lr, b.train.batch_size, b.train.epochs) == (0.1, 256, 200)
        assert set(search["schedule"].choices) == {"cosine", "step"} and {"warmup_epochs", "label_smoothing"} <= set(
            search
        )
    if name.startswith("joint"):
        assert "optimizer (SGD with momentum and Nesterov, Adam, AdamW" in says and "Hyperband" in says
        assert set(search["optimizer"].choices) == {"sgd", "adam", "adamw"} and spec.pruner.name == "hyperband"
        assert {
            "name",
            "activation",
            "optimizer",
            "momentum",
            "nesterov",
            "batch_size",
            "warmup_epochs",
            "schedule",
        } <= set(search)
        assert {p.when for p in spec.search if p.name == "momentum"} == {(("train.optimizer", ("sgd",)),)}


# ---------------------------------------------------------------- metric directions


def test_resuming_with_other_metric_directions_is_refused_and_leaves_the_store(study_dir, tmp_path):
    write_study(study_dir, train=QUICK)
    assert run.main(["--study", str(study_dir), "--trials", "1", "--quiet"]) == 0
    db = tmp_path / "storage" / "hpo.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    write_study(study_dir, train=QUICK, objective='metrics = ["val_acc", "params"]')
    with pytest.raises(
        HpoError,
        match=re.escape(
            "study 'tiny' in the store optimises ['maximize'], the study file "
            "asks for ['maximize', 'minimize']; use another --storage"
        ),
    ):
        run.main(["--study", str(study_dir), "--trials", "1"])
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
