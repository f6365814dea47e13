"""Three failed trials in a row stop a run (a setup problem, not bad luck): in one process and in
each worker under hpo.workers. A failure between successes does not count towards it."""

from __future__ import annotations

import re

import optuna
from builders import write_study
from processes import hpo

from hpo.runs.single import MAX_FAILS_IN_A_ROW, FailureGuard

# Every trial asks for more training images than Fashion-MNIST has: each fails as its data loads.
ALWAYS_FAILS = "train_size = { choices = [1000000000] }\nlr = { low = 0.01, high = 0.1 }"
REASON = "failed: HpoError: data.train_size"


def test_the_guard_counts_failures_in_a_row_only():
    pattern = "FFCFFCFFFC"  # F: the trial fails, C: it completes; the third F in a row is trial #8
    guard = FailureGuard()

    def objective(trial):
        trial.set_user_attr("reason", f"failed: boom at #{trial.number}")
        if pattern[trial.number] == "F":
            raise RuntimeError("boom")
        return 1.0

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study()
    study.optimize(objective, n_trials=len(pattern), callbacks=[guard], catch=(RuntimeError,))
    assert MAX_FAILS_IN_A_ROW == 3
    assert len(study.trials) == 9 and guard.in_a_row == 3 and guard.reason == "failed: boom at #8"


def _failed(cwd, name="tiny"):
    trials = optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'storage/hpo.db'}").trials
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs["reason"].startswith(REASON) for t in trials)
    return trials


def test_one_process_stops_after_three_failures_in_a_row(study_dir, tmp_path):
    write_study(study_dir, search=ALWAYS_FAILS, sampler='name = "random"')
    code, out, err = hpo("--study", "tiny", "--trials", "10", cwd=tmp_path)
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"error: stopped after 3 failed trials in a row; last: {REASON}")
    assert len(_failed(tmp_path)) == 3
    assert "tiny: 3 trials added (3 failed)" in out


def test_each_worker_stops_after_three_failures_in_a_row(study_dir, tmp_path):
    write_study(study_dir, search=ALWAYS_FAILS, sampler='name = "random"')
    code, out, err = hpo("--study", "tiny", "--trials", "10", "--workers", "2", cwd=tmp_path)
    assert code == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"error: 2 worker(s) stopped early (worker 0: error: stopped after 3 failed trials in a row; last: {REASON}"
    ), last
    assert "worker 1: error: stopped after 3 failed trials in a row" in last
    assert "the study got 6 of the 10 trials" in last
    assert re.search(r"resume with: python -m hpo.run --study tiny --trials 4 --workers 2$", last)
    trials = _failed(tmp_path)
    assert len(trials) == 6 and len({t.user_attrs["worker"] for t in trials}) == 2
    assert len(re.findall(r"\[worker [01]\] trial #\d+ fail", err)) == 6
