"""python -m hpo.run --workers K: real worker processes, real SQLite and PostgreSQL, real signals.

The tiny study (2,000 training images, 1 thread per worker) keeps a trial to a second or two;
most of each test's time is the workers starting (importing torch). PostgreSQL runs on loopback
on every development and CI machine; each test here makes its own study and deletes it.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import time

import optuna
import pytest
import sqlalchemy.exc
from builders import FINISHED, PG, assert_exactly, write_study
from optuna.trial import TrialState
from processes import hpo, start

from hpo.storage.store import is_lost

STORE = "storage/hpo.db"


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        proc.kill()


@functools.cache
def storage(url: str) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(url)  # one engine per store: polling does not open connection after connection


def trials_of(name: str, url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage(url)).trials


def wait_for(check, proc: subprocess.Popen, what: str, deadline: float = 120):
    """Poll ``check()`` until it returns something truthy; the supervisor must stay alive meanwhile."""
    end = time.time() + deadline
    while time.time() < end:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the run ended before {what}:\n{err[-3000:]}")
        try:
            found = check()
        except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):  # not there yet
            found = None
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def training(name: str, url: str):
    """RUNNING trials that have reported an epoch (so their worker is training)."""
    return [t for t in trials_of(name, url) if t.state == TrialState.RUNNING and t.intermediate_values]


@pytest.mark.parametrize("k", [2, 4])
def test_k_workers_on_sqlite_add_exactly_n_while_readers_read(k, study_dir, tmp_path):
    write_study(study_dir, train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1")
    url = f"sqlite:///{tmp_path / STORE}"
    proc = start("--study", "tiny", "--trials", "6", "--workers", str(k), cwd=tmp_path)
    # Readers while the workers write: Optuna's own (what the dashboard uses) and the report.
    wait_for(lambda: (tmp_path / STORE).exists() and trials_of("tiny", url) is not None, proc, "the study")
    counts, report = [], None
    while proc.poll() is None:
        trials = trials_of("tiny", url)
        counts.append(len([t for t in trials if t.state in FINISHED]))
        if report is None and any(t.state == TrialState.COMPLETE for t in trials):
            report = start("studies/tiny", "--no-png", module="hpo.report", cwd=tmp_path)
        time.sleep(0.1)
    out, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert "database is locked" not in err and "Traceback" not in err
    assert counts == sorted(counts) and len(counts) > 3  # read during the writes, never going back
    assert_exactly(trials_of("tiny", url), 6)
    assert "tiny: 6 trials added" in out and f"adding 6 with {k} workers" in err
    assert len(set(re.findall(r"\[worker (\d)\] done: ", err))) == k  # every worker took part
    assert report is not None
    r_out, r_err = finish(report, 120)
    assert report.returncode == 0, r_err[-2000:]
    assert "report written to" in r_out


def test_two_workers_on_postgresql_add_exactly_n(pg_study, tmp_path):
    name, folder = pg_study
    write_study(folder, train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1")
    out, err = finish(start("--study", name, "--trials", "5", "--workers", "2", "--storage", PG, cwd=tmp_path))
    assert "Traceback" not in err
    assert f"{name}: 5 trials added" in out, err[-3000:]
    trials = trials_of(name, PG)
    assert_exactly(trials, 5)
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert len({t.params["lr"] for t in trials}) == 5  # the two workers' samplers do not propose the same values


def test_kill_9_mid_trial_is_failed_and_retried_with_the_same_parameters(study_dir, tmp_path):
    write_study(
        study_dir,
        train="epochs = 6\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        pruner='name = "none"',
        search="lr = { low = 0.01, high = 0.05 }",
    )  # no trial ends early: the victim is still training
    url = f"sqlite:///{tmp_path / STORE}"
    proc = start(
        "--study",
        "tiny",
        "--trials",
        "3",
        "--workers",
        "2",
        cwd=tmp_path,
        env={"HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "3"},
    )
    victim = wait_for(lambda: training("tiny", url), proc, "a trial in training")[0]
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    out, err = finish(proc)
    assert proc.returncode == 0, err[-3000:]
    assert f"pid {pid} was killed (SIGKILL)" in err and f"trial #{victim.number} is failed as lost" in err
    trials = trials_of("tiny", url)
    assert_exactly(trials, 3)
    lost = [t for t in trials if is_lost(t)]
    assert [t.number for t in lost] == [victim.number]
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == victim.params and retry.user_attrs["seed"] == victim.user_attrs["seed"]
    # The retry trains as the lost trial did: the epochs the lost one reported match bit for bit.
    lost_curve = lost[0].intermediate_values
    assert lost_curve and all(retry.intermediate_values[e] == v for e, v in lost_curve.items())
    assert f"trial #{victim.number}" in out  # named in the summary as lost and retried


def test_sigterm_to_the_supervisor_leaves_no_trial_running_and_the_study_resumes(study_dir, tmp_path):
    write_study(
        study_dir,
        train="epochs = 200\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        pruner='name = "none"',
        search="lr = { low = 0.01, high = 0.05 }",
    )
    url = f"sqlite:///{tmp_path / STORE}"
    proc = start("--study", "tiny", "--trials", "4", "--workers", "2", "--set", "data.test_size=100", cwd=tmp_path)
    running = wait_for(lambda: len(training("tiny", url)) == 2 and training("tiny", url), proc, "both workers training")
    proc.send_signal(signal.SIGTERM)
    out, err = finish(proc, 60)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    trials = trials_of("tiny", url)
    assert all(t.state in FINISHED or t.state == TrialState.WAITING for t in trials)  # nothing left RUNNING
    interrupted = [t.number for t in trials if t.user_attrs.get("status") == "interrupted"]
    assert interrupted == [t.number for t in running] and all(trials[n].state == TrialState.FAIL for n in interrupted)
    retries = [t for t in trials if t.state == TrialState.WAITING]  # queued, to go on from their checkpoints
    assert sorted(t.user_attrs["checkpoint_of"] for t in retries) == interrupted
    resume = re.search(r"resume with: (python -m hpo.run .*)$", err, re.M).group(1)
    assert resume == "python -m hpo.run --study tiny --trials 4 --workers 2 --set data.test_size=100"
    lines = re.findall(r"^\[worker \d\] interrupted: trial (.*) marked FAIL", err, re.M)
    assert sorted(lines) == sorted(f"#{n}" for n in interrupted)  # each worker names its own trial, no other's
    write_study(
        study_dir,
        train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        search="lr = { low = 0.01, high = 0.05 }",
    )  # the same space: a toggled log flag would be refused
    out, err = finish(start(*resume.split()[3:], cwd=tmp_path))
    assert "tiny: 4 trials added" in out, err[-3000:]
    assert_exactly(trials_of("tiny", url), 6)


def test_a_crashing_or_diverging_trial_does_not_stop_the_other_workers(study_dir, tmp_path):
    # The grid's four points: train_size 10**9 raises in the data loader; lr = 50 diverges.
    write_study(
        study_dir,
        train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        sampler='name = "grid"',
        search="train_size = [1500, 1000000000]\nlr = [0.05, 50.0]",
    )
    out, err = finish(start("--study", "tiny", "--trials", "4", "--workers", "2", cwd=tmp_path))
    trials = trials_of("tiny", f"sqlite:///{tmp_path / STORE}")
    assert_exactly(trials, 4)
    reasons = [t.user_attrs["reason"] for t in trials]
    assert any(r.startswith("failed: HpoError: data.train_size") for r in reasons), reasons
    # The good point trains to the end wherever it ran (two grid workers may both draw another point).
    good = [t for t in trials if t.params == {"train_size": 1500, "lr": 0.05}]
    assert all(t.state == TrialState.COMPLETE for t in good), [(t.params, t.state) for t in trials]
    assert len(re.findall(r"\[worker \d\] done: 2 trials", err)) == 2  # neither worker stopped early
    assert "tiny: 4 trials added" in out


@pytest.mark.parametrize("workers", ["0", "many"])
def test_a_bad_worker_count_is_one_line_and_no_store(workers, study_dir, tmp_path):
    proc = hpo("--study", "tiny", "--workers", workers, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --workers must be a number >= 1 or auto, got {workers!r}"
    ], proc.stderr
    assert not (tmp_path / "storage").exists()
