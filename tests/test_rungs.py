"""hpo.analysis.rungs: the rung view and where trials stop early, on trials built as hpo records them."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from hpo.analysis import rungs

D = {"opt": CategoricalDistribution(["sgd", "adam", "bad"])}


def trial(number, opt, values, state=TrialState.COMPLETE, status="ok"):
    t = optuna.create_trial(
        state=state,
        value=values[-1] if state == TrialState.COMPLETE else None,
        params={"opt": opt},
        distributions=D,
        intermediate_values=dict(enumerate(values, 1)),
        user_attrs={"status": status, "epochs_run": len(values)},
    )
    t.number = number
    return t


def study_trials():
    out = []
    for i in range(12):
        out.append(trial(len(out), "sgd", [70, 80, 85 + i % 3]))
        out.append(trial(len(out), "adam", [71, 81, 84 + i % 2]))
    for i in range(6):  # "bad" diverges in epoch 2 (one value) or is pruned at epoch 1
        out.append(trial(len(out), "bad", [10.0], TrialState.PRUNED, "diverged" if i % 2 else "pruned"))
    return out


def test_ladder_counts_every_trial_that_reached_each_epoch():
    ts = study_trials()
    ladder = rungs.ladder(ts)
    assert [(r.epoch, r.trials) for r in ladder] == [(1, 30), (2, 24), (3, 24)]
    assert ladder[0].states == {"complete": 24, "pruned": 3, "diverged": 3}
    assert ladder[0].mean == sum(t.intermediate_values[1] for t in ts) / 30
    assert rungs.analysis_rung(ladder, 30).epoch == 3  # 24 of 30 = 80% reached the last epoch
    assert rungs.analysis_rung(ladder, 40).epoch == 1  # below 75% everywhere: the first rung
    rebuilt = rungs.at_rung(ts, 1)
    assert len(rebuilt) == 30 and {t.user_attrs["state"] for t in rebuilt} == {"COMPLETE", "PRUNED"}


def test_stop_epoch_counts_the_diverged_epoch():
    ts = study_trials()
    assert rungs.stop_epoch(ts[-1]) == 2 and rungs.status_of(ts[-1]) == "diverged"  # its epoch 2 recorded nothing
    assert rungs.stop_epoch(ts[-2]) == 1


def test_a_choice_where_every_trial_stops_is_named_with_its_counts():
    s = rungs.stop_regions("opt", D["opt"], study_trials())
    assert s.clear and s.p_value < 0.01
    assert s.sentence.startswith("opt = bad: 6 of 6 trials stopped by epoch 2 (3 pruned, 3 diverged)")
    assert "opt = sgd: 0 of 12 trials stopped" in s.sentence


def test_no_region_when_stops_are_spread_evenly():
    ts = [
        trial(i, "sgd" if i % 2 else "adam", [50.0], TrialState.PRUNED, "pruned")
        if i % 3 == 0
        else trial(i, "sgd" if i % 2 else "adam", [70, 80])
        for i in range(40)
    ]
    s = rungs.stop_regions("opt", D["opt"], ts)
    assert not s.clear and "stands out" in s.sentence


def test_a_rare_choice_does_not_make_the_others_a_region():
    # "sgd" has two trials (too few to test); "adam" and "bad" stop at the same rate
    ts = [trial(0, "sgd", [70, 80]), trial(1, "sgd", [50.0], TrialState.PRUNED, "pruned")]
    for i in range(2, 42):
        opt = "adam" if i % 2 else "bad"
        ts.append(trial(i, opt, [50.0], TrialState.PRUNED, "pruned") if i % 3 == 0 else trial(i, opt, [70, 80]))
    s = rungs.stop_regions("opt", D["opt"], ts)
    assert not s.clear and s.p_value > 0.1
