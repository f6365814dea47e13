"""How a run ends when it could not do what was asked: an exhausted grid says so; a run whose
every trial failed is an error even below the three-in-a-row guard. In-process hpo.run.main on
a tiny real Fashion-MNIST subset and a real SQLite store."""

from __future__ import annotations

import optuna
import pytest
from builders import write_study
from processes import start

from hpo import run
from hpo.errors import HpoError


def trials():
    return optuna.load_study(study_name="tiny", storage="sqlite:///storage/hpo.db").trials


def test_an_exhausted_grid_says_how_many_trials_it_added(study_dir, capsys):
    write_study(study_dir, search="lr = { choices = [0.05] }", sampler='name = "grid"', pruner='name = "none"')
    assert (
        run.main(
            [
                "--study",
                "tiny",
                "--trials",
                "3",
                "--keep",
                "none",
                "--quiet",
                "--set",
                "data.train_size=300",
                "--set",
                "train.epochs=1",
            ]
        )
        == 0
    )
    assert len(trials()) == 1
    assert "note: the grid's 1 points have all run: 1 of the 3 trials asked for were added" in capsys.readouterr().err


def test_a_run_whose_every_trial_failed_is_an_error(study_dir):
    write_study(study_dir, search="val_fraction = { choices = [0.00001] }")  # loads, then fails in the trial
    with pytest.raises(HpoError, match=r"every trial failed \(2\); last: failed: HpoError: data.val_fraction"):
        run.main(["--study", "tiny", "--trials", "2", "--keep", "none", "--quiet"])
    assert [t.state.name for t in trials()] == ["FAIL", "FAIL"]


def test_two_workers_whose_every_trial_failed_are_an_error(study_dir):
    write_study(study_dir, search="val_fraction = { choices = [0.00001] }")  # one failed trial per worker
    with pytest.raises(HpoError, match=r"every trial failed \(2\); last: failed: HpoError: data.val_fraction"):
        run.main(["--study", "tiny", "--trials", "2", "--workers", "2", "--keep", "none", "--quiet"])
    assert [t.state.name for t in trials()] == ["FAIL", "FAIL"]


def test_ctrl_c_prints_no_optuna_failure_warnings(study_dir, tmp_path):
    import signal
    import sqlite3
    import time

    proc = start(
        "--study",
        "tiny",
        "--trials",
        "2",
        "--keep",
        "none",
        "--quiet",
        "--set",
        "train.epochs=50",
        "--set",
        "data.train_size=300",
        cwd=tmp_path,
    )
    deadline, db = time.monotonic() + 120, tmp_path / "storage" / "hpo.db"
    while time.monotonic() < deadline and proc.poll() is None:  # a trial RUNNING with an epoch recorded: it trains
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                if conn.execute("SELECT count(*) FROM trial_intermediate_values").fetchone()[0]:
                    break
        except sqlite3.Error:
            pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: trial #0 marked FAIL" in err
    assert "failed with value" not in err and "failed with parameters" not in err, err


def sigterm_caught(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught & (1 << (15 - 1)))  # SIGTERM is signal 15


def test_sigterm_before_the_first_trial_ends_with_a_line(study_dir, tmp_path):
    import signal
    import time

    proc = start("--study", "tiny", "--trials", "1", "--keep", "none", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not sigterm_caught(proc.pid) and time.monotonic() < deadline:  # the handler is in: hpo's code runs
        time.sleep(0.005)
    assert not (tmp_path / "storage").exists()  # caught from the start, before the store is opened
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted")
