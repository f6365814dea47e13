"""python -m hpo.run as users run it: real subprocesses, a real SQLite store, real signals."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from builders import sha, write_study
from processes import hpo, start

from hpo.errors import counted

STORE = "storage/hpo.db"


def hpo_run(*args: str, cwd: Path, check_code: int | None = 0) -> subprocess.CompletedProcess:
    """The single-process run (``--workers 1`` unless the test says otherwise): tests/test_workers.py has the rest."""
    return hpo(*args, *(() if "--workers" in args else ("--workers", "1")), cwd=cwd, check=check_code)


def trials_of(cwd: Path, name: str = "tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / STORE}").trials


def test_run_then_resume_adds_to_the_same_study(study_dir, tmp_path):
    first = hpo_run("--study", "tiny", "--trials", "2", cwd=tmp_path)
    assert "tiny: 2 trials added" in first.stdout and "best trials:" in first.stdout
    assert "report: python -m hpo.report studies/tiny" in first.stdout
    assert "trials" in first.stderr and "epoch" in first.stderr  # progress
    hpo_run("--study", "tiny", "--trials", "2", cwd=tmp_path)
    trials = trials_of(tmp_path)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert len({t.params["lr"] for t in trials}) == 4  # the resumed run does not replay proposals
    t = trials[0]
    for key in (
        "val_acc",
        "test_acc",
        "epochs_run",
        "wall_time_s",
        "images_per_s",
        "device",
        "seed",
        "config",
        "versions",
        "curve",
    ):
        assert key in t.user_attrs, key
    assert t.user_attrs["versions"]["optuna"] == optuna.__version__
    assert [c["epoch"] for c in t.user_attrs["curve"]] == [1, 2] == list(t.intermediate_values)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / STORE}")
    assert study.user_attrs["study_toml"] == (study_dir / "study.toml").read_text()
    assert study.user_attrs["epochs"] == 2 and study.user_attrs["seed"] == 0


def test_same_study_file_and_seed_give_the_same_study(study_dir, tmp_path):
    hpo_run("--study", "tiny", "--trials", "3", "--storage", "sqlite:///a.db", cwd=tmp_path)
    hpo_run("--study", "tiny", "--trials", "3", "--storage", "sqlite:///b.db", cwd=tmp_path)
    a, b = (optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / f}").trials for f in ("a.db", "b.db"))
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.values for t in a] == [t.values for t in b]  # bit-identical on the CPU
    assert [t.intermediate_values for t in a] == [t.intermediate_values for t in b]
    write_study(study_dir, text=(study_dir / "study.toml").read_text().replace("seed = 0", "seed = 1"))
    hpo_run("--study", "tiny", "--trials", "3", "--storage", "sqlite:///c.db", cwd=tmp_path)
    c = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'c.db'}").trials
    assert [t.params for t in c] != [t.params for t in a]


def wait_for_running_trial(db: Path, proc: subprocess.Popen, deadline: float = 120) -> None:
    """Until the store holds a RUNNING trial that has reported an epoch (training under way)."""
    end = time.time() + deadline
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    rows = conn.execute(
                        "SELECT count(*) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id "
                        "WHERE t.state = 'RUNNING'"
                    ).fetchone()
                if rows[0]:
                    return
            except sqlite3.OperationalError:  # tables not created yet
                pass
        time.sleep(0.2)
    raise AssertionError("no trial started training in time")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_interrupt_marks_the_running_trial_and_says_how_to_resume(sig, code, study_dir, tmp_path):
    write_study(study_dir, train="epochs = 200\nbatch_size = 64\nlr = 0.05\nthreads = 1")
    proc = start("--study", "tiny", "--trials", "5", "--workers", "1", cwd=tmp_path)
    try:
        wait_for_running_trial(tmp_path / STORE, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err
    assert "resume with: python -m hpo.run --study tiny --trials 5" in err  # none of the 5 is done
    t, retry = trials_of(tmp_path)
    assert t.state == optuna.trial.TrialState.FAIL  # not left RUNNING
    assert t.user_attrs["status"] == "interrupted"
    assert retry.state == optuna.trial.TrialState.WAITING and retry.params == t.params  # its retry, queued
    # and the study resumes from the same store: the retry first (with other settings its checkpoint
    # is not its own: it starts again)
    write_study(study_dir, train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1")
    out = hpo_run("--study", "tiny", "--trials", "1", cwd=tmp_path)
    assert "was written for other settings; it starts again from epoch 1" in out.stderr
    assert [t.state.name for t in trials_of(tmp_path)] == ["FAIL", "COMPLETE"]


@pytest.fixture(scope="module")
def one_trial_store(tmp_path_factory, fashion_mnist_system) -> Path:
    """A store holding the tiny study with one complete trial, made once for the module."""
    cwd = tmp_path_factory.mktemp("store")
    write_study(cwd / "studies" / "tiny")
    hpo_run("--study", "tiny", "--trials", "1", cwd=cwd)
    return cwd / STORE


@pytest.mark.parametrize(
    "args, section, text, message",
    [
        ([], "sampler", 'name = "bayes"', "unknown sampler.name 'bayes'"),
        ([], "pruner", 'name = "medain"', "unknown pruner.name 'medain' (did you mean 'median'?)"),
        ([], "sampler", 'name = "grid"', "search.lr is a continuous range"),
        ([], "search", "lr = { low = 0.5, high = 0.1 }", "low (0.5) is greater than high (0.1)"),
        ([], "search", "lr = { low = 0.0, high = 0.1, log = true }", "log scale needs low > 0"),
        ([], "search", "batch_size = { choices = [] }", "choices must be a non-empty list"),
        ([], "train", "epoch = 3", "unknown key train.epoch (did you mean 'epochs'?)"),
        (["--study", "tiny2"], None, None, "no study 'tiny2'"),
        (
            ["--storage", "postgresql+psycopg://postgres@127.0.0.1:5432/hpo_no_such_db"],
            None,
            None,
            "cannot open the store postgresql+psycopg://postgres@127.0.0.1:5432/hpo_no_such_db: connection failed: "
            'connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "hpo_no_such_db" does not exist',
        ),
        (["--storage", "sqlite:///file:storage/hpo.db?mode=ro&uri=true"], None, None, "cannot open the store"),
        (["--trials", "0"], None, None, "--trials must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_store_untouched(
    args, section, text, message, study_dir, tmp_path, one_trial_store
):
    (tmp_path / "storage").mkdir()
    shutil.copy(one_trial_store, tmp_path / STORE)
    before = sha(tmp_path / STORE)
    if section:
        write_study(study_dir, **{section: text})
    argv = ["--study", "tiny", "--trials", "1", *args] if "--study" not in args else ["--trials", "1", *args]
    proc = hpo_run(*argv, cwd=tmp_path, check_code=2)
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert sha(tmp_path / STORE) == before
    assert len(trials_of(tmp_path)) == 1


def test_malformed_toml_is_one_line(study_dir, tmp_path):
    (study_dir / "study.toml").write_text("[train\nlr = 0.1\n")
    proc = hpo_run("--study", "tiny", cwd=tmp_path, check_code=2)
    assert proc.stderr.startswith("error: ") and "is not valid TOML" in proc.stderr
    assert not (tmp_path / STORE).exists()


def test_multi_objective_study_keeps_a_pareto_front(study_dir, tmp_path):
    write_study(
        study_dir,
        objective='metrics = ["val_acc", "params"]',
        sampler='name = "nsga2"\npopulation_size = 4',
        search='"model.name" = { choices = ["lenet5", "simple_cnn"] }\nlr = { low = 0.02, high = 0.1 }',
    )
    proc = hpo_run("--study", "tiny", "--trials", "3", cwd=tmp_path)
    assert "Pareto front:" in proc.stdout
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / STORE}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.best_trials and all(len(t.values) == 2 for t in study.best_trials)


def test_timeout_bounds_the_run(study_dir, tmp_path):
    proc = hpo_run("--study", "tiny", "--trials", "50", "--timeout", "0.5", cwd=tmp_path)
    added = len(trials_of(tmp_path))
    assert 1 <= added < 50  # Optuna checks the clock between trials: the running one finishes
    assert f"tiny: {counted(added, 'trial')} added" in proc.stdout
