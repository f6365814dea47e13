"""What pruning saved counts each trial against its own epoch budget (hpo.analysis.findings.pruning): a
study resumed with another train.epochs mixes budgets. Real SQLite store, trials made with
optuna.create_trial."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpo.analysis.findings import pruning


def trial(state, epochs_budget: int, epochs_run: int, value=None):
    attrs = {
        "epochs_run": epochs_run,
        "status": "ok" if state == TrialState.COMPLETE else "pruned",
        "config": {"train": {"epochs": epochs_budget}},
    }
    return optuna.create_trial(
        state=state,
        value=value,
        params={"lr": 0.01},
        distributions={"lr": FloatDistribution(1e-3, 1.0)},
        user_attrs=attrs,
    )


def test_savings_count_each_trial_against_its_own_budget(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'hpo.db'}", direction="maximize")
    study.set_user_attr("epochs", 1)  # the last run's train.epochs; the first run had 3
    study.add_trial(trial(TrialState.COMPLETE, 3, 3, value=80.0))
    study.add_trial(trial(TrialState.PRUNED, 3, 1))
    study.add_trial(trial(TrialState.COMPLETE, 1, 1, value=70.0))
    study.add_trial(trial(TrialState.COMPLETE, 1, 1, value=71.0))
    p = pruning(study, study.get_trials())
    assert (p.budget, p.run, p.saved) == (3 + 3 + 1 + 1, 3 + 1 + 1 + 1, 2)
    assert p.saved_pct == 25.0 and p.pruned == 1 and p.pruned_saved == 2


def test_a_trial_without_a_recorded_config_gets_the_study_budget(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'hpo.db'}", direction="maximize")
    study.set_user_attr("epochs", 4)
    t = trial(TrialState.PRUNED, 4, 2)
    del t.user_attrs["config"]
    study.add_trial(t)
    p = pruning(study, study.get_trials())
    assert (p.budget, p.run, p.saved, p.pruned_saved) == (4, 2, 2, 2)
