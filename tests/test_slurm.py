"""The README's Slurm recipe, submitted to a real single-node Slurm (tests/slurm.py) against PostgreSQL:
an array task cancelled mid-trial, resubmitted, and the study ends with exactly the trials asked for."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna
import psycopg
import pytest
from builders import write_study
from optuna.trial import TrialState

pytestmark = pytest.mark.xdist_group("slurm")  # one Slurm at a time: its daemons are the machine's

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "examples" / "slurm" / "lenet_lr.sbatch"
RECIPE_STORE = "postgresql+psycopg://hpo@db.example:5432/hpo"
DB = "hpo_slurm_test"
N = 4


@pytest.fixture
def slurm_store():
    """A PostgreSQL database of this test's own, dropped afterwards."""
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    storage = optuna.storages.RDBStorage(f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}")
    yield storage
    storage.engine.dispose()
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")  # only this test's connections use it


def test_readme_shows_the_recipe_the_tests_submit():
    assert RECIPE.read_text() in (ROOT / "README.md").read_text()


def trials(storage) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="lenet_lr", storage=storage).trials
    except KeyError:  # not created yet
        return []


def wait_for(check, what: str, deadline: float = 120):
    end = time.time() + deadline
    while time.time() < end:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def array_task(pid: int) -> str:
    """The Slurm array task a worker process runs in (the recipe execs hpo, so it is the batch step)."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"SLURM_ARRAY_TASK_ID="))


def test_a_cancelled_array_task_is_resubmitted_and_the_study_ends_with_exactly_n(
    slurm, slurm_store, tmp_path, fashion_mnist_system
):
    url = slurm_store.url
    # The recipe as the README shows it; only the store and the trial count change. The submit
    # folder holds a tiny lenet_lr study (2,000 images, 6 epochs) and the .venv the recipe runs.
    script = RECIPE.read_text()
    for old, new in ((RECIPE_STORE, url), ("--until 80", f"--until {N}")):
        assert old in script
        script = script.replace(old, new)
    (tmp_path / "job.sbatch").write_text(script)
    write_study(
        tmp_path / "studies" / "lenet_lr",
        train="epochs = 6\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        pruner='name = "none"',
        search="lr = { low = 0.02, high = 0.08, log = true }",
    )  # every lr learns: none collapses
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    (tmp_path / "logs").mkdir()
    options = ("--cpus-per-task=1", "--mem=500M")  # this one small node: two tasks at once
    job = slurm.sbatch(tmp_path / "job.sbatch", "--array=0-1", *options, cwd=tmp_path)

    def training():
        return [t for t in trials(slurm_store) if t.state == TrialState.RUNNING and t.intermediate_values]

    victim = wait_for(training, "a trial in training")[0]
    task = array_task(int(victim.user_attrs["worker"].rsplit(":", 1)[1]))
    slurm.run("scancel", f"{job}_{task}")
    stopped = wait_for(
        lambda: [t for t in trials(slurm_store) if t.number == victim.number and t.state.is_finished()],
        "the cancelled task's trial to be marked",
    )[0]
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["status"] == "interrupted"
    wait_for(lambda: f"{job}_{task}" not in slurm.queued(job), "the cancelled task to end")
    again = slurm.sbatch(tmp_path / "job.sbatch", f"--array={task}", *options, cwd=tmp_path)
    wait_for(lambda: not slurm.queued(job) and not slurm.queued(again), "every task to end", deadline=240)

    logs = {p.name: p.read_text() for p in (tmp_path / "logs").iterdir()}
    assert logs and not any("Traceback" in text for text in logs.values()), logs
    cancelled = logs[f"lenet_lr-{job}_{task}.out"]
    assert f"resume with: python -m hpo.run --study lenet_lr --until {N} --storage {url}" in cancelled
    done = trials(slurm_store)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in done) == N
    assert not [t for t in done if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    (retry,) = [
        t
        for t in done
        if t.user_attrs.get("checkpoint_of") == stopped.user_attrs["checkpoint_of"] and t.number != stopped.number
    ]
    assert retry.state == TrialState.COMPLETE and retry.params == stopped.params
    assert retry.user_attrs["resumed_from_epoch"] in (
        stopped.user_attrs["epochs_run"],
        stopped.user_attrs["epochs_run"] + 1,
    )
    assert retry.user_attrs["resumed_from_epoch"] >= 1
    assert not list((tmp_path / "models" / "checkpoints").glob("*.pt"))  # every trial ended for good
