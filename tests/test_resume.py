"""Epoch checkpoints and resume (hpo.training.checkpoints, hpo.search.resume, fit's resume entry) and
--until (hpo.search.until): the loop in process, then python -m hpo.run as users run it, stopped by
real signals and kill -9."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
from builders import write_study
from optuna.trial import TrialState
from processes import hpo, start

from hpo.training.checkpoints import Checkpoints
from hpo.training.loop import fit

# ---------------------------------------------------------------- the loop


class Stop(Exception):
    pass


def stop_after(k: int):
    def on_epoch(stats):
        if stats.epoch == k:
            raise Stop

    return on_epoch


def without_seconds(curve) -> list:
    return [dataclasses.replace(s, seconds=0.0) for s in curve]


@pytest.mark.parametrize("model, k", [("lenet5", 1), ("simple_cnn", 2)])  # simple_cnn: dropout draws from torch's RNG
def test_resumed_fit_is_bit_identical(model, k, train_config, fashion_subset, restore_threads, tmp_path):
    config = train_config(model=model, epochs=3, schedule="cosine", warmup_epochs=1, seed=7)
    data = fashion_subset[1]
    whole, whole_model = fit(config, data)
    store, path = Checkpoints(tmp_path), tmp_path / "t.pt"
    with pytest.raises(Stop):
        fit(config, data, stop_after(k), on_checkpoint=lambda state: store.save(path, state))
    state = store.load(path)
    assert state["epoch"] == k and len(state["curve"]) == k
    resumed, resumed_model = fit(config, data, resume=state)
    a, b = whole_model.state_dict(), resumed_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert without_seconds(resumed.curve) == without_seconds(whole.curve)
    assert (resumed.test_acc, resumed.final_val_acc, resumed.epochs_run) == (whole.test_acc, whole.final_val_acc, 3)


def test_checkpoint_every(train_config, fashion_subset, restore_threads):
    seen = {}
    for every in (0, 1, 2):
        epochs = []
        fit(
            train_config(epochs=3, checkpoint_every=every),
            fashion_subset[1],
            on_checkpoint=lambda s, epochs=epochs: epochs.append(s["epoch"]),
        )
        seen[every] = epochs
    assert seen == {0: [], 1: [1, 2, 3], 2: [2]}


def test_an_unreadable_checkpoint_is_none_with_one_warning(tmp_path, caplog):
    store = Checkpoints(tmp_path)
    good = tmp_path / "good.pt"
    store.save(good, {"epoch": 2, "w": torch.arange(1000.0)})
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:500])  # a file cut short
    assert store.load(good)["epoch"] == 2
    with caplog.at_level("WARNING", logger="hpo.training.checkpoints"):
        assert store.load(cut) is None
    (line,) = caplog.messages
    assert f"checkpoint {cut} is unreadable" in line and "starts again from epoch 1" in line


def test_a_save_that_fails_leaves_the_last_checkpoint_whole(tmp_path):
    store, path = Checkpoints(tmp_path), tmp_path / "t.pt"
    store.save(path, {"epoch": 1, "w": torch.ones(3)})
    with pytest.raises(AttributeError):  # "Can't pickle local object": pickle's error for a lambda
        store.save(path, {"epoch": 2, "w": lambda: 0})  # not picklable: fails mid-save
    assert store.load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["t.pt"]  # no temporary file left behind


# ---------------------------------------------------------------- python -m hpo.run

STUDY = dict(train="epochs = 6\nbatch_size = 64\nlr = 0.05\nthreads = 1", pruner='name = "none"')


def wait_for_checkpoint(folder: Path, proc: subprocess.Popen, deadline: float = 120) -> Path:
    end = time.time() + deadline
    while time.time() < end:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        found = [p for p in folder.glob("*.pt")] if folder.exists() else []
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no checkpoint written in time")


def trials_of(cwd: Path, db: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{cwd / db}").trials


def weights(cwd: Path, trial: optuna.trial.FrozenTrial) -> dict:
    return torch.load(cwd / "models" / trial.user_attrs["weights_artifact_id"], weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, fashion_mnist_system):
    """The tiny study's one trial, run without a stop: (folder, trial) to compare the resumed ones with."""
    cwd = tmp_path_factory.mktemp("whole")
    write_study(cwd / "studies" / "tiny", **STUDY)
    hpo("--quiet", "--study", "tiny", "--until", "1", "--storage", "sqlite:///whole.db", cwd=cwd, check=0)
    (trial,) = trials_of(cwd, "whole.db")
    assert trial.state == TrialState.COMPLETE
    assert not list((cwd / "models" / "checkpoints").glob("*.pt"))  # deleted when the trial ended
    return cwd, trial


def assert_same_training(cwd: Path, trial, reference) -> None:
    ref_cwd, ref = reference
    assert trial.params == ref.params and trial.user_attrs["seed"] == ref.user_attrs["seed"]
    assert trial.value == ref.value and trial.user_attrs["test_acc"] == ref.user_attrs["test_acc"]
    assert trial.intermediate_values == ref.intermediate_values  # the whole curve, as the pruner saw it

    def strip(curve):
        return [{k: v for k, v in c.items() if k != "seconds"} for c in curve]

    assert strip(trial.user_attrs["curve"]) == strip(ref.user_attrs["curve"])
    a, b = weights(cwd, trial), weights(ref_cwd, ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_then_the_printed_command_goes_on_from_the_checkpoint(study_dir, tmp_path, uninterrupted):
    write_study(study_dir, **STUDY)
    proc = start("--quiet", "--study", "tiny", "--until", "1", "--storage", "sqlite:///b.db", cwd=tmp_path)
    try:
        wait_for_checkpoint(tmp_path / "models" / "checkpoints", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    command = re.search(r"resume with: (python -m hpo.run .*)$", err, re.M).group(1)
    # the store and --until, and since the plan (issue 19) every option given, --quiet too
    assert command == "python -m hpo.run --study tiny --until 1 --storage sqlite:///b.db --quiet"
    stopped, retry = trials_of(tmp_path, "b.db")
    assert (stopped.state, stopped.user_attrs["status"], retry.state) == (
        TrialState.FAIL,
        "interrupted",
        TrialState.WAITING,
    )
    assert 1 <= stopped.user_attrs["epochs_run"] < 6  # stopped mid-trial
    out = hpo("--quiet", *command.split()[3:], cwd=tmp_path, check=0)
    trials = trials_of(tmp_path, "b.db")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    done = trials[1]
    # It went on from its checkpoint: the epoch the store saw last, or the next one if the signal
    # came between the checkpoint and that epoch's records.
    assert done.user_attrs["resumed_from_epoch"] in (
        stopped.user_attrs["epochs_run"],
        stopped.user_attrs["epochs_run"] + 1,
    )
    assert done.user_attrs["resumes"] == 1
    assert f"trial #1 resumes from its checkpoint after epoch {done.user_attrs['resumed_from_epoch']}" in out.stderr
    assert_same_training(tmp_path, done, uninterrupted)
    assert not list((tmp_path / "models" / "checkpoints").glob("*.pt"))
    again = hpo("--quiet", *command.split()[3:], cwd=tmp_path, check=0)  # idempotent: nothing more to do
    assert "1 trials finished, nothing to add" in again.stderr and len(trials_of(tmp_path, "b.db")) == 2


def test_kill_9_then_another_run_takes_the_lost_trial_over_from_its_checkpoint(study_dir, tmp_path, uninterrupted):
    write_study(study_dir, **STUDY)
    beats = {"HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "2"}
    proc = start("--quiet", "--study", "tiny", "--until", "1", "--storage", "sqlite:///c.db", cwd=tmp_path, env=beats)
    try:
        wait_for_checkpoint(tmp_path / "models" / "checkpoints", proc)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    (lost,) = trials_of(tmp_path, "c.db")
    assert lost.state == TrialState.RUNNING  # nobody marked it: its worker died
    # At once: if the heartbeat is not stale yet, the run waits for it (test_until_waits_for_...) rather than leave it.
    out = hpo(
        "--quiet", "--study", "tiny", "--until", "1", "--storage", "sqlite:///c.db", cwd=tmp_path, env=beats, check=0
    )
    lost, done = trials_of(tmp_path, "c.db")
    assert lost.state == TrialState.FAIL and "status" not in lost.user_attrs  # failed as lost, then retried
    assert done.state == TrialState.COMPLETE and done.user_attrs["resumed_from_epoch"] >= 1
    assert "resumes from its checkpoint" in out.stderr
    assert_same_training(tmp_path, done, uninterrupted)


def test_an_unreadable_checkpoint_restarts_the_trial_with_one_warning(study_dir, tmp_path, uninterrupted):
    write_study(study_dir, **STUDY)
    proc = start("--quiet", "--study", "tiny", "--until", "1", "--storage", "sqlite:///d.db", cwd=tmp_path)
    try:
        path = wait_for_checkpoint(tmp_path / "models" / "checkpoints", proc)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    path.write_bytes(b"not a checkpoint")
    out = hpo("--quiet", "--study", "tiny", "--until", "1", "--storage", "sqlite:///d.db", cwd=tmp_path, check=0)
    assert "is unreadable" in out.stderr and "starts again from epoch 1" in out.stderr and "Traceback" not in out.stderr
    done = trials_of(tmp_path, "d.db")[-1]
    assert done.state == TrialState.COMPLETE and done.user_attrs["resumed_from_epoch"] == 0
    assert_same_training(tmp_path, done, uninterrupted)  # from epoch 1, the seed makes it the same run


def test_until_n_from_two_commands_and_again_ends_with_exactly_n(study_dir, tmp_path):
    write_study(study_dir, train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1")
    # One process, and a supervisor of two workers: three processes share the study.
    procs = [
        start("--quiet", "--study", "tiny", "--until", "5", "--worker-index", "0", cwd=tmp_path),
        start("--quiet", "--study", "tiny", "--until", "5", "--workers", "2", "--worker-index", "1", cwd=tmp_path),
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    trials = trials_of(tmp_path, "storage/hpo.db")
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 5
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    again = hpo("--quiet", "--study", "tiny", "--until", "5", cwd=tmp_path, check=0)
    assert "5 trials finished, nothing to add (--until 5)" in again.stderr
    assert len(trials_of(tmp_path, "storage/hpo.db")) == len(trials)


def test_until_waits_for_trials_running_elsewhere_and_takes_over_a_lost_one(tmp_path, monkeypatch):
    """A restarted --until run whose last trials are running elsewhere waits; when one's heartbeat
    goes stale it is failed, its retry queued, and the run goes on with it."""
    import threading

    from hpo.search.until import Until
    from hpo.storage.store import open_storage

    monkeypatch.setenv("HPO_HEARTBEAT_S", "1")
    monkeypatch.setenv("HPO_GRACE_S", "2")
    study = optuna.create_study(study_name="u", storage=open_storage(f"sqlite:///{tmp_path / 'u.db'}", create=True))
    study.add_trial(optuna.trial.create_trial(value=1.0))
    other = study.ask({"lr": optuna.distributions.FloatDistribution(0.001, 0.1)})  # another worker's trial, in training
    storage = study._storage
    storage.record_heartbeat(other._trial_id)
    lines, result = [], []
    waiting = threading.Thread(target=lambda: result.append(Until(2).wait(study, 0.2, lambda: None, lines.append)))
    waiting.start()
    end = time.time() + 1.0  # within the grace period: still waiting
    while time.time() < end and not result:
        storage.record_heartbeat(other._trial_id)
        time.sleep(0.2)
    assert not result and lines == [
        "the other 1 of the 2 trials are running elsewhere: waiting for them to finish "
        "(a stopped or lost one is taken over here)"
    ]
    waiting.join(timeout=30)  # no more heartbeats: lost after 2 s
    assert result == [1]
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]  # the lost trial's retry, queued
    assert Until(1).wait(study, 0.2, lambda: None, lines.append) == 0  # already done: no wait


@pytest.mark.parametrize(
    "args, message",
    [
        (["--until", "0"], "--until must be >= 1, got 0"),
        (["--until", "3", "--trials", "3"], "--trials and --until exclude each other"),
        (["--set", "train.checkpoint_every=-1"], "train.checkpoint_every must be >= 0"),
    ],
)
def test_bad_until_or_checkpoint_setting_is_one_line(args, message, study_dir, tmp_path):
    proc = hpo("--quiet", "--study", "tiny", *args, cwd=tmp_path, check=2)
    assert proc.stderr.strip() == f"error: {message}" or message in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "storage" / "hpo.db").exists()
