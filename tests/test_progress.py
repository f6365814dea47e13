"""Progress as users see it: the bar's n/N, best and pruned count (one process), and the supervisor's
study line (``[study] n/N trials: ...; best ...; ETA mm:ss``) under --workers. The --quiet lines are
checked in tests/test_records.py, on a real run."""

from __future__ import annotations

import re

import optuna
from builders import TINY_STUDY, write_study
from optuna.trial import TrialState

from hpo import run
from hpo.runs import workers

STORE = "sqlite:///storage/hpo.db"


def _bars(err: str) -> list[str]:
    """Each redraw of the bar (tqdm redraws in place with \\r)."""
    return [part.strip() for line in err.split("\n") for part in line.split("\r") if part.strip().startswith("trials ")]


def test_the_bar_counts_trials_and_shows_the_best_and_the_pruned(study_dir, capsys):
    # Seed 1's grid: a collapsed trial, a complete one, then two the median pruner stops (tests/test_records.py).
    write_study(
        study_dir,
        text=TINY_STUDY.replace("seed = 0", "seed = 1"),
        sampler='name = "grid"',
        pruner='name = "median"\nn_startup_trials = 1',
        search="lr = { choices = [0.05, 0.0001] }\nmomentum = { choices = [0.9, 0.8] }",
    )
    assert run.main(["--study", str(study_dir), "--trials", "4"]) == 0
    err = capsys.readouterr().err
    trials = optuna.load_study(study_name="tiny", storage=STORE).trials
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    bars = _bars(err)
    counts = [int(re.match(r"trials (\d+)/4 ", b).group(1)) for b in bars]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 4, bars
    assert re.search(
        rf"\| \d\d:\d\d<00:00 , best {best.value:.2f}% \(#{best.number}\)  pruned 3  failed 0$", bars[-1]
    ), bars[-1]
    # mid-trial: the trial, its epoch and validation accuracy
    for t in trials:
        for epoch, value in t.intermediate_values.items():
            assert any(f"#{t.number} epoch {epoch}/2 val {value:.2f}%" in b for b in bars), (t.number, epoch)
    # a collapsed trial is said above the bar, with its reason
    (collapsed,) = [t for t in trials if t.user_attrs["status"] == "collapsed"]
    assert f"trial #{collapsed.number} pruned: {collapsed.user_attrs['reason']}" in err


def test_the_supervisor_prints_the_study_line_with_best_and_eta(study_dir, capsys, monkeypatch):
    monkeypatch.setattr(workers, "PROGRESS_S", 0.0)  # a study line at every change, not at most every 5 s
    # 3 epochs: each trial outlasts several of the supervisor's polls, so it sees the counts go up
    write_study(
        study_dir,
        train="epochs = 3\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        pruner='name = "none"',
        search="lr = { low = 0.02, high = 0.08 }",
    )  # all learn: every trial completes
    assert run.main(["--study", str(study_dir), "--trials", "4", "--workers", "2"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[study] ")]
    trials = optuna.load_study(study_name="tiny", storage=STORE).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    values = {t.number: t.value for t in trials}
    done = []
    for line in lines:
        m = re.fullmatch(
            r"\[study\] (\d)/4 trials: (\d) complete, 0 pruned, 0 failed; best ([\d.]+) \(#(\d)\)"
            r"(; ETA (\d+:)?\d\d:\d\d)?",
            line,
        )
        assert m, line
        n, complete, best, number, eta = int(m[1]), int(m[2]), float(m[3]), int(m[4]), m[5]
        assert n == complete and (eta is not None) == (n < 4)  # the ETA while trials are left
        assert best == float(f"{values[number]:.4g}")
        done.append(n)
    assert done and done == sorted(set(done)) and done[0] < 4, lines  # counts go up, at least one line with an ETA
