"""A run is a plan (hpo.runs.plan): every option of hpo.run's parser reaches the printed resume
command and every worker by construction, and the one lifecycle (hpo.runs.lifecycle) says the
same things whoever ran the trials."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from builders import write_study
from optuna.trial import TrialState
from processes import Watched, hpo

from hpo.runs import plan as plan_mod
from hpo.runs.plan import AMOUNT, ONCE, PLAN_ENV, parse, parser
from hpo.runs.workers import Supervisor

SETTING = "train.epochs=2"  # a --set the tiny study accepts


def options_of_the_parser() -> list[argparse.Action]:
    return [a for a in parser()._actions if a.option_strings and a.dest not in ("help", "study")]


def example(action: argparse.Action) -> list[str]:
    """The option with a value that is not its default, typed as a user would."""
    flag = action.option_strings[-1]
    if isinstance(action, argparse._StoreTrueAction):
        return [flag]
    if action.dest == "set":
        return [flag, SETTING]
    if action.choices:
        return [flag, next(c for c in reversed(action.choices) if c != action.default)]
    if action.type is int:
        return [flag, "3"]
    if action.type is float:
        return [flag, "2.5"]
    return [flag, {"storage": "sqlite:///other.db", "workers": "2"}.get(action.dest, "value")]


def resumed(plan) -> plan_mod.Plan:
    """The plan of the printed resume command, as a user pastes it."""
    words = shlex.split(plan.command(2))
    assert words[:3] == ["python", "-m", "hpo.run"]
    return parse(words[3:])


@pytest.mark.parametrize("action", options_of_the_parser(), ids=lambda a: a.option_strings[-1])
def test_every_option_the_user_gave_is_in_the_resume_command(action, study_dir, no_env_defaults):
    plan = parse(["--study", str(study_dir), *example(action)])
    again = resumed(plan)
    for dest, value in plan.options.items():
        if dest in AMOUNT:
            continue
        expected = parser().get_default(dest) if dest in ONCE else value
        assert again.options[dest] == expected, (dest, plan.command(2))
    assert (again.until, again.options["trials"]) == ((None, 2) if plan.until is None else (plan.until, None))


def test_until_is_repeated_and_trials_left_to_do_replace_trials(study_dir, no_env_defaults):
    assert (
        parse(["--study", str(study_dir), "--until", "7"]).command(2)
        == f"python -m hpo.run --study {study_dir} --until 7"
    )
    plan = parse(["--study", str(study_dir), "--trials", "9", "--keep", "none", "--set", SETTING])
    assert plan.command(4) == f"python -m hpo.run --study {study_dir} --trials 4 --set {SETTING} --keep none"


def test_what_the_environment_chose_stays_implicit_and_a_password_is_masked(study_dir, no_env_defaults):
    no_env_defaults.setenv("HPO_WORKERS", "2")
    plan = parse(["--study", str(study_dir), "--storage", "postgresql+psycopg://u:secret@db/hpo"])
    assert plan.workers == "2" and "--workers" not in plan.command(1)
    assert "--storage 'postgresql+psycopg://u:***@db/hpo'" in plan.command(1) and "secret" not in plan.command(1)


def test_warm_start_and_confirm_are_not_done_twice(study_dir, no_env_defaults):
    plan = parse(["--study", str(study_dir), "--warm-start", "src", "--warm-start-trials", "2", "--quiet"])
    assert plan.command(3) == f"python -m hpo.run --study {study_dir} --trials 3 --quiet"


def test_a_new_option_reaches_the_workers_with_no_other_edit(study_dir, no_env_defaults, monkeypatch):
    """An option added to the parser, and nothing else: the worker's plan has it, read from its
    environment in a real process, and the resume command repeats it."""
    plain = plan_mod.parser

    def with_a_new_option() -> argparse.ArgumentParser:
        p = plain()
        p.add_argument("--brand-new", type=int, default=None)
        return p

    monkeypatch.setattr(plan_mod, "parser", with_a_new_option)
    plan = parse(["--study", str(study_dir), "--workers", "2", "--brand-new", "7"])
    supervisor = Supervisor(plan, 2)
    supervisor.threads, supervisor.gpus, supervisor.deadline = 1, [], None
    env = {**os.environ, PLAN_ENV: supervisor.worker_plan(1, 3).to_json()}
    read = "from hpo.runs.plan import worker_plan; p = worker_plan(); print(p.brand_new, p.trials, p.worker_index)"
    out = subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["7", "3", "1"]
    assert "--brand-new 7" in plan.command(1)


@pytest.fixture
def no_env_defaults(monkeypatch):
    for name in ("HPO_WORKERS", "HPO_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# ---------------------------------------------------------------- real runs, stopped and resumed as printed


def _stop_at_a_checkpoint(watched: Watched, folder: Path) -> str:
    """SIGTERM once a trial has saved an epoch checkpoint; the printed resume command."""
    end = time.monotonic() + 180
    while not list(folder.glob("*.pt")):
        assert watched.proc.poll() is None and time.monotonic() < end, watched.err[-3000:]
        time.sleep(0.05)
    watched.proc.send_signal(signal.SIGTERM)
    assert watched.finish(120) == 130, watched.err[-3000:]
    return watched.wait_line(r"resume with: python -m hpo\.run (.*)$").group(1)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "two workers"])
def test_the_printed_command_keeps_every_option_of_the_run(workers, study_dir, tmp_path):
    """The user's report: SIGTERM a run with --checkpoint-dir DIR --keep none, paste the printed
    command, and the retry started again from epoch 1 with weights in models/. Here with the
    store, the study name and --quiet as well, in one process and under two workers."""
    write_study(study_dir, train="epochs = 4\nbatch_size = 64\nlr = 0.05\nthreads = 1", pruner='name = "none"')
    options = ["--checkpoint-dir", "ckpt", "--keep", "none", "--storage", "sqlite:///runs.db"]
    options += ["--study-name", "renamed", "--quiet", *workers]
    watched = Watched("--study", "tiny", "--trials", "2", *options, cwd=tmp_path)
    printed = _stop_at_a_checkpoint(watched, tmp_path / "ckpt")
    assert all(o in shlex.split(printed) for o in options), printed
    code, out, err = hpo(*shlex.split(printed), cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert "models/checkpoints" not in err  # retries look where the first run left its checkpoints
    assert "|" not in err  # --quiet: lines, no progress bar
    trials = optuna.load_study(study_name="renamed", storage="sqlite:///runs.db").trials
    states = [
        (t.number, t.state.name, t.user_attrs.get("status"), t.user_attrs.get("resumed_from_epoch")) for t in trials
    ]
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]  # pruned: collapsed
    assert len(finished) == 2, (states, err[-3000:])  # the two asked for, in the same study
    retried = [t for t in finished if "resumed_from_epoch" in t.user_attrs]
    # the trial stopped after its checkpoint goes on from it (another, stopped before one, starts again)
    assert any(t.user_attrs["resumed_from_epoch"] >= 1 for t in retried), (states, err[-3000:])
    assert list((tmp_path / "ckpt").glob("*.pt")) == []  # each deleted when its trial ended
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*"))  # --keep none
    assert not (tmp_path / "storage").exists()  # nothing went to the default store


def test_a_quiet_run_in_one_process_ends_as_one_with_workers_does(study_dir, tmp_path):
    for workers in ([], ["--workers", "2"]):
        code, out, err = hpo("--study", "tiny", "--trials", "2", "--quiet", *workers, cwd=tmp_path)
        assert code == 0, err[-3000:]
        assert "best trials:" in out and "report: python -m hpo.report studies/tiny" in out, (workers, out)


def test_until_below_what_the_study_holds_says_how_many_it_holds(study_dir, tmp_path):
    code, _, err = hpo("--study", "tiny", "--trials", "3", cwd=tmp_path)
    assert code == 0, err[-3000:]
    code, _, err = hpo("--study", "tiny", "--until", "2", cwd=tmp_path)
    assert code == 0 and "3 trials finished, nothing to add (--until 2)" in err, err[-3000:]


def test_the_summary_of_a_study_that_searches_epochs_has_both_columns(study_dir, tmp_path):
    """A searched `epochs` beside the table's own count of the epochs each trial ran (it crashed the
    end of every lenet_optimizer run)."""
    write_study(study_dir, search="epochs = { choices = [1, 2] }\nlr = { low = 0.01, high = 0.1 }")
    code, out, err = hpo("--study", "tiny", "--trials", "2", cwd=tmp_path)
    assert code == 0 and "Traceback" not in err, err[-3000:]
    header = out.split("best trials:\n")[1].splitlines()[0].split()
    assert header[:6] == ["trial", "val_acc", "test_acc", "epochs", "run", "epochs"], header
