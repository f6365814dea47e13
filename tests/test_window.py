"""hpo.search.window: trial i samples and is pruned from the trials of index <= i - L only.

First the mechanism on a real SQLite store, without training: the study's own samplers and pruners
behind the window, driven through ask/tell by a seeded scheduler that plays K workers finishing
their epochs in a random order (and interrupting some trials, whose retries are queued as hpo
queues them). Every trial's parameters, curve and end must be those of the same study run one trial
at a time; the same schedules without the window must not be (so the test can fail). Then real
``python -m hpo.run`` runs: one process against two workers, one of them stopped with SIGSTOP
mid-run, a SIGTERM and resume, a kill -9 and the heartbeat retry, two commands sharing a PostgreSQL study.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
import uuid

import optuna
import pytest
from builders import PG, TINY_STUDY, write_study
from optuna.trial import TrialState
from processes import Watched, start

from hpo.records import CONFIRMS, FINISHED, INDEX, INDEX_OF, STATUS, WINDOW_WAIT, WORKER_ATTR
from hpo.search import shadow
from hpo.search.resume import requeue
from hpo.search.study import sampler_seed
from hpo.search.window import WindowPruner, WindowSampler, ended, indices
from hpo.storage.store import worker_tag

STEPS = 4
SAMPLERS = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=3, multivariate=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda seed: optuna.samplers.GridSampler({"x": [k / 10 for k in range(8)], "kind": ["a", "b"]}, seed=seed),
}
PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
    "percentile": lambda: optuna.pruners.PercentilePruner(40.0, n_startup_trials=2, n_warmup_steps=0),
    "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=STEPS),
    "patient": lambda: optuna.pruners.PatientPruner(None, patience=0),
}


def suggest(trial: optuna.Trial, conditional: bool) -> tuple[float, str]:
    kind = trial.suggest_categorical("kind", ["a", "b"])
    if conditional:  # a parameter only in one branch, the other branch its own range
        return (trial.suggest_float("x", 0.0, 0.7) if kind == "a" else trial.suggest_float("y", 0.0, 1.0)), kind
    return trial.suggest_float("x", 0.0, 0.7), kind


def curve(x: float, kind: str, step: int) -> float:
    return (1 - (x - 0.3) ** 2) * (step + 1) / STEPS + (0.05 if kind == "a" else 0.0)


def make_study(tmp_path, name, sampler, pruner, window, directions=("maximize",)):
    seed = 7
    if window:
        inner = SAMPLERS[sampler]
        s = WindowSampler(lambda i: inner(sampler_seed(seed, i)), window)
        p = WindowPruner(PRUNERS[pruner])
    else:  # free-running, as hpo does without a window: one sampler for the whole study
        s, p = SAMPLERS[sampler](seed), PRUNERS[pruner]()
    study = optuna.create_study(  # one name (Hyperband's brackets hash it), a store per run
        study_name="window",
        storage=f"sqlite:///{tmp_path / name}.db",
        sampler=s,
        pruner=p,
        directions=list(directions),
    )
    study.set_metric_names(["val_acc", "params"][: len(directions)])  # the shadow prunes on val_acc
    return study


def play(study, n: int, k: int, window: int, seed: int | None, conditional=False, interrupt=0.0):
    """n trials on k simulated workers: at each step one worker (seeded choice) asks for a trial,
    trains one epoch (report, should_prune; the last one tells), or is interrupted (status
    interrupted, its retry queued, as hpo.search.objective does). ``seed`` None: one at a time, in
    order. A worker asks only when the window lets the next trial start (else, in one thread, the
    wait would never end). Returns {index: (state, params, curve, values)} of the trials that count."""
    rng = random.Random(seed)
    running: dict[int, tuple[optuna.Trial, float, str, int]] = {}  # trial number -> (trial, x, kind, step)
    ended_indices: set[int] = set()
    fresh = 0
    multi = len(study.directions) > 1
    while len(ended_indices) < n:
        queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        # a queued retry goes first, and its window was open before
        open_ = queued or (fresh < n and all(j in ended_indices for j in range(fresh - window + 1)))
        can_ask = len(running) < k and open_
        if seed is None:
            action = "step" if running else "ask"
        else:
            options = (["ask"] if can_ask else []) + (["step"] * 2 if running else [])
            action = rng.choice(options)
            if action == "step" and interrupt and rng.random() < interrupt:
                action = "interrupt"
        if action == "ask":
            trial = study.ask()
            trial.set_user_attr("curve", [])  # a retry starts again (it inherited the stopped run's)
            x, kind = suggest(trial, conditional)
            running[trial.number] = (trial, x, kind, 0)
            fresh += not queued
            continue
        number = min(running) if seed is None else rng.choice(sorted(running))
        trial, x, kind, step = running[number]
        if action == "interrupt":
            trial.set_user_attr(STATUS, "interrupted")
            requeue(trial)
            study.tell(trial, state=TrialState.FAIL)
            del running[number]
            continue
        value = curve(x, kind, step)
        trial.set_user_attr("curve", [*trial.user_attrs["curve"], {"epoch": step, "val_acc": value}])  # as hpo's
        if multi:  # pruned on its first objective through hpo's single-objective shadow
            if shadow.should_prune(trial, trial.user_attrs["curve"]):
                study.tell(trial, state=TrialState.PRUNED)
            elif step + 1 == STEPS:
                study.tell(trial, [value, x])
        else:
            trial.report(value, step)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
            elif step + 1 == STEPS:
                study.tell(trial, value)
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            del running[number]
            ended_indices.add(trial.user_attrs.get(INDEX, trial.number))  # free-running: by number
        else:
            running[number] = (trial, x, kind, step + 1)
    out = {}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        index = t.user_attrs.get(INDEX, t.number)
        assert index not in out, "an index finished twice"
        out[index] = (t.state, t.params, t.user_attrs.get("curve"), t.values)
    return out


@pytest.mark.parametrize(
    "sampler, pruner, conditional",
    [
        ("tpe", "median", False),
        ("tpe", "percentile", True),
        ("tpe", "successive_halving", False),
        ("tpe", "hyperband", False),
        ("random", "patient", False),
        ("grid", "median", False),
    ],
)
def test_any_schedule_of_k_le_l_workers_gives_the_one_at_a_time_study(tmp_path, sampler, pruner, conditional):
    n, window = 14, 3
    reference = play(make_study(tmp_path, "one", sampler, pruner, window), n, 1, window, None, conditional)
    assert sorted(reference) == list(range(n))
    assert any(s == TrialState.PRUNED for s, *_ in reference.values()) or pruner == "patient"
    for k, seed in ((2, 0), (3, 1), (3, 2)):
        played = play(
            make_study(tmp_path, f"k{k}s{seed}", sampler, pruner, window), n, k, window, seed, conditional, 0.1
        )
        assert played == reference, (k, seed)


def test_without_the_window_the_schedule_changes_the_study(tmp_path):
    """The control: the same schedules, free-running TPE and median pruning, give other trials."""
    n, window = 14, 3
    reference = play(make_study(tmp_path, "one", "tpe", "median", 0), n, 1, window, None)
    differs = [
        play(make_study(tmp_path, f"free{seed}", "tpe", "median", 0), n, 3, window, seed) != reference
        for seed in (1, 2)
    ]
    assert any(differs)


def test_multi_objective_and_interrupted_retries_keep_their_index(tmp_path):
    n, window = 12, 2
    reference = play(make_study(tmp_path, "one", "tpe", "median", window, ("maximize", "minimize")), n, 1, window, None)
    assert any(s == TrialState.PRUNED for s, *_ in reference.values())
    study = make_study(tmp_path, "k2", "tpe", "median", window, ("maximize", "minimize"))
    assert play(study, n, 2, window, 3, interrupt=0.2) == reference
    trials = study.get_trials(deepcopy=False)
    retries = [t for t in trials if t.user_attrs[INDEX_OF] != t.number]
    assert retries, "the schedule interrupted no trial"
    by_number = {t.number: t for t in trials}
    for t in retries:  # the retry has the index and the parameters of the trial it retries
        assert t.user_attrs[INDEX] == by_number[t.user_attrs[INDEX_OF]].user_attrs[INDEX]
        assert t.params == by_number[t.user_attrs[INDEX_OF]].params
    assert all(t.user_attrs[WINDOW_WAIT] == 0 for t in trials)  # the scheduler never asked early


def test_indices_count_fresh_trials_and_follow_retries():
    def t(number, state=TrialState.COMPLETE, user=None, system=None):
        trial = optuna.trial.create_trial(state=state, value=1.0 if state == TrialState.COMPLETE else None)
        trial.number = number
        trial.user_attrs.update(user or {})
        trial.system_attrs.update(system or {})
        return trial

    trials = [
        t(0, user={INDEX: 0, INDEX_OF: 0}),
        t(1, TrialState.FAIL, user={INDEX: 1, INDEX_OF: 1, STATUS: "interrupted"}),
        t(2, TrialState.RUNNING),  # fresh, not yet written its index
        t(3, user={INDEX: 1, INDEX_OF: 1}),  # the retry of #1
        t(4, TrialState.FAIL, user={STATUS: "surplus"}),  # given up by --until: no index
        t(5, TrialState.FAIL),  # lost before it wrote its index
        t(6, TrialState.WAITING, system={"failed_trial": 5}),  # its heartbeat retry
        t(7),
    ]
    assert indices(trials) == {0: 0, 1: 1, 2: 2, 3: 1, 5: 3, 6: 3, 7: 4}
    assert ended([trials[1], trials[3]]) is trials[3]
    assert ended([trials[2]]) is None and ended([trials[5], trials[6]]) is None
    assert ended([trials[5]]) is None  # lost: its retry is on its way
    lost = [t(n, TrialState.FAIL) for n in (8, 9, 10)]  # lost three times: no retry comes (MAX_RETRY 2)
    assert ended(lost) is lost[-1]


# ---------------------------------------------------------------- real runs: python -m hpo.run

WINDOW_STUDY = (
    TINY_STUDY.replace("trials = 3", "trials = 8\nwindow = 2").replace("threads = 1\n", "")
    + """\
momentum = { low = 0.5, high = 0.95 }
[sampler]
name = "tpe"
n_startup_trials = 3
[pruner]
name = "median"
n_startup_trials = 2
n_warmup_steps = 0
"""
)
FAST = {"HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "4"}  # a killed worker's trial is retried within seconds


def run_dir(root) -> None:
    write_study(root / "studies" / "tiny", WINDOW_STUDY)


def rows(root, db="w.db", study=None) -> dict:
    """What each logical trial did: state, parameters, curve, value, seed and recipe, by index."""
    study = study or optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / db}")
    out = {}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        assert t.user_attrs[INDEX] not in out, f"index {t.user_attrs[INDEX]} finished twice"
        out[t.user_attrs[INDEX]] = (t.state, t.params, t.intermediate_values, t.value, t.user_attrs["config"])
    return out


ARGS = ("--study", "tiny", "--storage", "sqlite:///w.db", "--keep", "none", "--quiet")


def hpo_run(root, *args) -> subprocess.Popen:
    return start(*ARGS, *args, cwd=root)


def done(proc: subprocess.Popen, timeout: float = 400) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.fixture(scope="module")
def reference_root(tmp_path_factory, fashion_mnist_system):
    """A folder holding the study run one trial at a time (--workers 1), in w.db."""
    root = tmp_path_factory.mktemp("reference")
    run_dir(root)
    done(hpo_run(root, "--trials", "8", "--workers", "1"))
    return root


@pytest.fixture(scope="module")
def reference(reference_root) -> dict:
    """The study run one trial at a time: its trials by index."""
    trials = rows(reference_root)
    assert sorted(trials) == list(range(8))
    assert {s for s, *_ in trials.values()} == {TrialState.COMPLETE, TrialState.PRUNED}  # the pruner prunes
    assert all(config["train"]["threads"] == 1 for *_, config in trials.values())  # the window's one thread
    return trials


def worker_pid(proc_lines: list[str], slot: int) -> int:
    for line in proc_lines:
        m = re.search(rf"\[worker {slot}\] pid (\d+)", line)
        if m:
            return int(m.group(1))
    raise AssertionError("no worker line")


def training(root, pid: int, deadline: float = 120) -> None:
    """Until the worker ``pid`` trains a trial (sampled: its config recorded), not between trials."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'w.db'}")
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if any(t.user_attrs.get(WORKER_ATTR) == worker_tag(pid) and "config" in t.user_attrs for t in running):
            return
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} trained no trial")


def test_two_workers_one_of_them_stopped_give_the_one_process_study(reference, tmp_path):
    run_dir(tmp_path)
    run = Watched(*ARGS, "--trials", "8", "--workers", "2", cwd=tmp_path)
    run.wait_line(r"\[worker 1\] trial #\d+ ", 300)  # worker 1 has finished a trial
    pid = worker_pid(run.lines, 1)
    training(tmp_path, pid)  # and is training the next: stop it for a while
    os.kill(pid, signal.SIGSTOP)
    time.sleep(6)
    os.kill(pid, signal.SIGCONT)
    assert run.finish(400) == 0, run.err[-3000:]
    assert rows(tmp_path) == reference
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'w.db'}")
    assert max(t.user_attrs[WINDOW_WAIT] for t in study.trials) > 2  # worker 0 had to wait for the stopped one
    assert "waits for index" in run.err


def test_sigterm_and_resume_give_the_one_process_study(reference, tmp_path):
    run_dir(tmp_path)
    run = Watched(*ARGS, "--trials", "8", "--workers", "2", cwd=tmp_path)
    run.wait_line(r"\[worker \d\] trial #[2-9]", 300)
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(120) == 130, run.err[-3000:]
    resume = re.search(r"resume with: python -m hpo.run (.*)", run.err).group(1).split()
    assert "interrupted" in run.err
    done(start(*resume, "--keep", "none", cwd=tmp_path))
    assert rows(tmp_path) == reference


def test_kill_9_of_a_worker_and_its_retry_give_the_one_process_study(reference, tmp_path):
    run_dir(tmp_path)
    run = Watched(*ARGS, "--trials", "8", "--workers", "2", cwd=tmp_path, env=FAST)
    run.wait_line(r"\[worker 1\] trial #\d+ ", 300)
    pid = worker_pid(run.lines, 1)
    training(tmp_path, pid)
    os.kill(pid, signal.SIGKILL)
    assert run.finish(400) == 0, run.err[-3000:]
    assert rows(tmp_path) == reference
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'w.db'}")
    assert any(t.state == TrialState.FAIL and STATUS not in t.user_attrs for t in study.trials), "no trial was lost"


def test_two_commands_sharing_a_postgresql_study_give_the_one_process_study(reference, tmp_path):
    """Two supervisors (separate commands, one worker each) on one PostgreSQL study: the study of
    one process on SQLite, index by index (the store, the supervisors and the schedule all differ)."""
    run_dir(tmp_path)
    name = f"w{uuid.uuid4().hex[:10]}"  # others share the server: a study of our own, deleted after
    both = ("--study", "tiny", "--storage", PG, "--study-name", name, "--keep", "none", "--quiet", "--workers", "1")
    try:
        first = start(*both, "--trials", "4", cwd=tmp_path)
        second = start(*both, "--trials", "4", cwd=tmp_path)
        done(first), done(second)
        study = optuna.load_study(study_name=name, storage=PG)
        assert rows(tmp_path, study=study) == reference
        tags = {t.user_attrs[WORKER_ATTR] for t in study.trials}
        assert len(tags) == 2, tags  # both commands trained trials of it
    finally:
        try:
            optuna.delete_study(study_name=name, storage=PG)
        except KeyError:
            pass


def test_until_and_its_resume_give_the_one_process_study(reference, tmp_path):
    """--until decides which indices run, not what each does: --until 5 on two workers holds the
    reference's first five; --until 8 then goes on to the whole of it."""
    run_dir(tmp_path)
    done(hpo_run(tmp_path, "--until", "5", "--workers", "2"))
    first = rows(tmp_path)
    assert sorted(first) == list(range(5)) and first == {i: reference[i] for i in first}
    done(hpo_run(tmp_path, "--until", "8", "--workers", "2"))
    assert rows(tmp_path) == reference


def test_a_timeout_and_the_run_that_goes_on_give_the_one_process_study(reference, tmp_path):
    """--timeout decides which indices run, not what each does: a two-worker run stopped early by
    its timeout holds the reference's first trials; --until 8 then goes on to the whole of it."""
    run_dir(tmp_path)
    done(hpo_run(tmp_path, "--trials", "8", "--workers", "2", "--timeout", "12"))
    first = rows(tmp_path)
    assert first and first == {i: reference[i] for i in first}  # how many ran depends on the machine
    done(hpo_run(tmp_path, "--until", "8", "--workers", "2"))
    assert rows(tmp_path) == reference


def copied(reference_root, tmp_path):
    """The reference's store in a folder of its own, with the study folder beside it."""
    run_dir(tmp_path)
    (tmp_path / "w.db").write_bytes((reference_root / "w.db").read_bytes())
    return tmp_path


def test_a_warm_start_on_two_workers_gives_the_one_process_study(reference_root, tmp_path):
    """The queued configurations take indices 0, 1, ... in their queue order; the search that
    follows samples from them as one process would."""
    warm = ("--study", "warm", "--storage", "sqlite:///w.db", "--keep", "none", "--quiet", "--trials", "6")
    found = {}
    for workers in ("1", "2"):
        root = copied(reference_root, tmp_path / workers)
        write_study(root / "studies" / "warm", WINDOW_STUDY)
        done(start(*warm, "--warm-start", "tiny", "--warm-start-trials", "3", "--workers", workers, cwd=root))
        study = optuna.load_study(study_name="warm", storage=f"sqlite:///{root / 'w.db'}")
        found[workers] = rows(root, study=study)
        queued = sorted(
            (t.user_attrs[INDEX], t.user_attrs.get("warm_start"))
            for t in study.trials
            if t.user_attrs.get("warm_start")
        )
        assert [i for i, _ in queued] == [0, 1, 2], queued  # the three queued first, in their order
    assert sorted(found["1"]) == list(range(6))
    assert found["2"] == found["1"]


def test_confirm_after_a_window_search_retrains_with_its_threads_and_indices(reference_root, tmp_path):
    """--confirm queues its retrainings after the search: they take the next indices in queue
    order, train on the search's one thread, and the search's own trials stay as they were."""
    root = copied(reference_root, tmp_path)
    before = rows(root)
    done(hpo_run(root, "--confirm", "1"))
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{root / 'w.db'}")
    confirms = [t for t in study.trials if CONFIRMS in t.user_attrs]
    complete = sum(state == TrialState.COMPLETE for state, *_ in before.values())
    assert len(confirms) == min(3, complete) and all(t.state == TrialState.COMPLETE for t in confirms)
    assert sorted(t.user_attrs[INDEX] for t in confirms) == list(range(8, 8 + len(confirms)))
    assert all(t.user_attrs["config"]["train"]["threads"] == 1 for t in confirms)
    assert {i: r for i, r in rows(root).items() if i < 8} == before


def test_a_bad_window_is_one_line_and_exit_2(tmp_path, fashion_mnist_system):
    run_dir(tmp_path)
    proc = hpo_run(tmp_path, "--trials", "1", "--set", "window=-1")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    line = "error: window must be >= 0 (0: free-running; L: the reproducible window), got -1"
    assert err.strip().splitlines() == [line]
    assert not (tmp_path / "w.db").exists()


def test_under_a_window_every_trial_gets_one_thread_unless_the_study_sets_them(tmp_path):
    from hpo.runs.plan import parse

    folder = write_study(tmp_path / "tiny", WINDOW_STUDY)
    assert parse(["--study", str(folder)]).spec.base.train.threads == 1
    assert parse(["--study", str(folder), "--set", "train.threads=2"]).spec.base.train.threads == 2
    assert parse(["--study", str(folder), "--set", "window=0"]).spec.base.train.threads == 0  # free: all cores
    assert parse(["--study", str(folder), "--set", "window=0"]).spec.window == 0
    assert parse(["--study", str(folder)]).spec.window == 2
