"""Popping a queued trial is atomic across processes on SQLite (BEGIN IMMEDIATE, hpo.storage.store).

The retry of a lost trial is a queued trial; two workers must never both run it. Without BEGIN
IMMEDIATE, four processes popping 200 queued trials ran some of them twice and crashed on the
second tell ("Cannot tell a COMPLETE trial"). Here four real processes pop 200 queued trials
through hpo.storage.store's storage, and each trial must be popped, run and told exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
from optuna.trial import TrialState

from hpo.storage.store import open_storage

QUEUED, PROCESSES = 200, 4

POPPER = textwrap.dedent("""
    import sys, pathlib, time
    import optuna
    from hpo.storage.store import open_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url, out, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    study = optuna.load_study(study_name="queue", storage=open_storage(url, create=True))
    pathlib.Path(str(out) + ".ready").touch()
    while not go.exists():  # all start popping together
        time.sleep(0.01)
    lines = []
    while True:
        trial = study.ask()
        if "fixed_params" not in study._storage.get_trial(trial._trial_id).system_attrs:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # the queue is empty: a new trial
            break
        x = trial.suggest_int("x", 0, 10_000)
        try:
            study.tell(trial, float(x))
            lines.append(f"{trial.number} {x}")
        except Exception as e:
            lines.append(f"error {trial.number} {type(e).__name__}: {e}")
    out.write_text("\\n".join(lines))
""")


def test_queued_trials_are_popped_once_each_by_concurrent_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(study_name="queue", storage=open_storage(url, create=True))
    for x in range(QUEUED):
        study.enqueue_trial({"x": x})
    outs = [tmp_path / f"popper{i}.txt" for i in range(PROCESSES)]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen([sys.executable, "-c", POPPER, url, str(out), str(go)], stderr=subprocess.PIPE, text=True)
        for out in outs
    ]
    try:
        _wait_until(lambda: all((out.parent / (out.name + ".ready")).exists() for out in outs), procs)
        go.touch()
        errs = [p.communicate(timeout=240)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0] * PROCESSES, "\n".join(e[-1500:] for e in errs)
    lines = [line for out in outs for line in out.read_text().splitlines()]
    assert not [line for line in lines if line.startswith("error")], lines
    popped = sorted(int(line.split()[0]) for line in lines)
    assert popped == list(range(QUEUED))  # each queued trial exactly once
    assert sum(bool(out.read_text()) for out in outs) >= 2  # they did pop side by side
    trials = optuna.load_study(study_name="queue", storage=url).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["x"] for t in done) == list(range(QUEUED)) and all(t.value == t.params["x"] for t in done)


def _wait_until(check, procs, deadline: float = 120) -> None:
    import time

    end = time.monotonic() + deadline
    while not check():
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, dead[0].communicate()[1][-2000:]
        assert time.monotonic() < end, "the popping processes did not start in time"
        time.sleep(0.05)
