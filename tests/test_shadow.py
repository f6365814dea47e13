"""Pruning multi-objective studies on validation accuracy (hpo.shadow): the study's own pruner,
asked through a single-objective shadow of the curves; the trial's result stays multi-objective."""
from __future__ import annotations

import optuna
import pytest
from builders import write_study
from optuna.trial import TrialState

from hpo import shadow


def curve(accs: list[float]) -> list[dict]:
    return [{"epoch": e, "val_acc": a} for e, a in enumerate(accs, 1)]


def multi_study(pruner, finished: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], pruner=pruner)
    study.set_user_attr("metrics", ["val_acc", "wall_time"])
    for accs in finished:
        study.add_trial(optuna.create_trial(values=[accs[-1], 10.0], user_attrs={"curve": curve(accs)}))
    return study


@pytest.mark.parametrize("pruner", [optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                                    optuna.pruners.PercentilePruner(25.0, n_startup_trials=2)])
def test_a_trial_behind_the_others_is_pruned_and_one_ahead_is_not(pruner):
    study = multi_study(pruner, [[70, 80, 85], [72, 81, 86], [71, 79, 84]])
    trial = study.ask()
    assert shadow.prunable(study)
    assert shadow.should_prune(trial, curve([40, 50]))
    assert not shadow.should_prune(trial, curve([75, 85]))
    # the study itself is untouched and still multi-objective: no intermediate values were written
    assert study.trials[-1].intermediate_values == {} and len(study.directions) == 2


def test_successive_halving_keeps_its_rungs_on_the_real_trial():
    sh = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2, min_early_stopping_rate=0)
    study = multi_study(sh, [])
    for accs in ([80, 85], [82, 86], [90, 91]):  # each records its rung while running, as hpo.objective does
        t = study.ask()
        for e in range(1, len(accs) + 1):
            assert not shadow.should_prune(t, curve(accs[:e]))
        study.tell(t, [accs[-1], 5.0])
    assert "completed_rung_0" in study.trials[0].system_attrs
    t = study.ask()
    assert shadow.should_prune(t, curve([30]))


def test_a_study_without_val_acc_is_not_prunable():
    study = optuna.create_study(directions=["minimize", "minimize"])
    study.set_user_attr("metrics", ["wall_time", "params"])
    assert not shadow.prunable(study)
    single = optuna.create_study(direction="maximize")
    assert not shadow.prunable(single)
