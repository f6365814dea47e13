"""hpo.analysis.findings: the report's numbers, checked against what the trials say directly."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from builders import REPORT_BEST_LR, REPORT_DIVERGED_REASON, REPORT_EPOCHS, REPORT_FAIL_REASON, build_report_study
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hpo.analysis import findings, groups, summary

optuna.logging.set_verbosity(optuna.logging.ERROR)


def load(report_study, kind="full", name="lenet_lr"):
    folder, url = report_study(kind=kind, name=name)
    return optuna.load_study(study_name=name, storage=url)


def complete(study):
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The realistic study and its findings, computed once for the read-only tests below."""
    _, url = build_report_study(tmp_path_factory.mktemp("full"))
    study = optuna.load_study(study_name="lenet_lr", storage=url)
    return study, findings.compute(study, storage="sqlite:///x.db", folder="studies/lenet_lr")


def test_best_and_top_ten(full):
    study, f = full
    done = complete(study)
    best = max(done, key=lambda t: t.value)
    assert (f.best.number, f.best.values[0]) == (best.number, best.value)
    assert f.best.test_acc == best.user_attrs["test_acc"]
    assert f.best_config == best.user_attrs["config"]
    order = [t.number for t in sorted(done, key=lambda t: (-t.value, t.number))][:10]
    assert [r.number for r in f.top] == order
    assert f.counts == {"COMPLETE": 16, "PRUNED": 3, "FAIL": 1}
    assert f.metrics == ("val_acc",) and f.directions == ("maximize",)
    (use,) = [x.text for x in summary.lines(f) if x.title == "What to use"]
    assert use.startswith(f"trial #{best.number} (") and f"val acc {best.value:.1f}%" in use


def test_importances_rank_the_formula_driver_first(full):
    _, f = full
    (imp,) = f.importances
    assert set(imp.by_evaluator) == {"PED-ANOVA", "fANOVA"}
    for evaluator, values in imp.by_evaluator.items():
        assert set(values) == {"lr", "momentum", "batch_size"}, evaluator
        assert next(iter(values)) == "lr", evaluator
        assert math.isclose(sum(values.values()), 1.0)
    assert f.param_names[0] == "lr"
    assert f.params[0].importance == {e: v["lr"] for e, v in imp.by_evaluator.items()}


def test_categorical_table_matches_the_trials(full):
    study, f = full
    momentum = next(p for p in f.params if p.name == "momentum")
    assert momentum.kind == "choice"
    assert [g.value for g in momentum.groups] == [0.5, 0.9, 0.99]
    for g in momentum.groups:
        ts = [t for t in complete(study) if t.params["momentum"] == g.value]
        assert g.n == len(ts)
        assert g.mean == pytest.approx(np.mean([t.value for t in ts]))
        assert g.best == max(t.value for t in ts) and g.worst == min(t.value for t in ts)
        assert g.mean_test == pytest.approx(np.mean([t.user_attrs["test_acc"] for t in ts]))
    # the table is the final-epoch analysis itself, so its sentence is about these very groups
    assert momentum.groups == f.evidence.at_final["momentum"].groups
    assert f.evidence.sentences["momentum"].startswith("momentum: at the final epoch (16 complete trials) ")


def test_log_bins_find_the_best_range(full):
    study, f = full
    lr = f.params[0]
    assert (lr.kind, lr.log) == ("range", True)
    assert len(lr.groups) == min(groups.MAX_BINS, max(2, len(complete(study)) // groups.PER_BIN))  # the one binning
    assert sum(g.n for g in lr.groups) == len(complete(study))
    edges = [g.low for g in lr.groups] + [lr.groups[-1].high]
    assert np.allclose(np.diff(np.log(edges)), np.log(edges[1] / edges[0]))  # log-spaced
    for i, g in enumerate(lr.groups):
        last = i == len(lr.groups) - 1
        ts = [t for t in complete(study) if g.low <= t.params["lr"] < g.high or (last and t.params["lr"] == g.high)]
        assert g.n == len(ts)
        if ts:
            assert g.mean == pytest.approx(np.mean([t.value for t in ts]))
    best = max((g for g in lr.groups if g.n), key=lambda g: g.mean)
    assert best.low <= REPORT_BEST_LR <= best.high


def test_pruning_savings_and_problems(full):
    _, f = full
    p = f.pruning
    assert (p.epochs, p.trials, p.budget) == (REPORT_EPOCHS, 20, 200)
    assert p.run == 16 * 10 + 3 + 2 + 3 + 2  # complete; pruned #3, #8; diverged #13; failed #17
    assert (p.saved, p.saved_pct) == (30, 15.0)
    assert (p.pruned, p.pruned_saved, p.stopped, p.stopped_saved) == (2, 15, 2, 15)
    assert [(r.number, r.state, r.reason) for r in f.problems] == [
        (13, "PRUNED", REPORT_DIVERGED_REASON),
        (17, "FAIL", REPORT_FAIL_REASON),
    ]


def test_reproducibility(full):
    _, f = full
    r = f.reproducibility
    assert r.seed == 7 and r.devices == {"cpu": 20} and r.threads == (2,)
    assert r.versions["optuna"] == "5.0.0" and not r.versions_vary
    assert r.study_file.endswith("studies/lenet_lr/study.toml")
    assert "[search]" in f.study_toml


def test_one_parameter(report_study):
    f = findings.compute(load(report_study, "one"))
    assert f.param_names == ("lr",)
    assert f.importances[0].by_evaluator == {"PED-ANOVA": {"lr": 1.0}, "fANOVA": {"lr": 1.0}}
    assert "trivially 1.0" in f.importances[0].note


def test_categorical_only(report_study):
    f = findings.compute(load(report_study, "categorical"))
    assert {p.kind for p in f.params} == {"choice"}
    assert set(f.importances[0].by_evaluator["fANOVA"]) == {"momentum", "batch_size"}


def test_no_searched_parameter(report_study):
    f = findings.compute(load(report_study, "fixed"))
    assert f.params == () and f.importances[0].by_evaluator == {}
    assert f.importances[0].note == "no searched parameters"


def test_multi_objective(report_study):
    study = load(report_study, "multi")
    f = findings.compute(study)
    assert f.metrics == ("val_acc", "wall_time") and f.directions == ("maximize", "minimize")
    assert [r.number for r in f.pareto] == sorted(t.number for t in study.best_trials)
    assert [i.metric for i in f.importances] == ["val_acc", "wall_time"]
    assert all(set(i.by_evaluator) == {"PED-ANOVA", "fANOVA"} for i in f.importances)
    assert f.best.number == max(complete(study), key=lambda t: t.values[0]).number


def _memory_study(values_params):
    study = optuna.create_study(direction="maximize")
    dist = {"lr": FloatDistribution(1e-4, 1.0, log=True), "momentum": CategoricalDistribution([0.5, 0.9])}
    for value, params in values_params:
        study.add_trial(optuna.create_trial(value=value, params=params, distributions=dist))
    return study


def test_too_few_trials_for_importance():
    one = findings.compute(_memory_study([(80.0, {"lr": 0.01, "momentum": 0.9})]))
    assert one.importances[0].by_evaluator == {}
    assert one.importances[0].note.startswith("not enough trials for importance")
    same = findings.compute(_memory_study([(80.0, {"lr": 0.01, "momentum": 0.9})] * 3))
    assert same.importances[0].note.startswith("not enough trials for importance")
    assert "too few trials (3) to tell an effect from noise" in same.evidence.sentences["lr"]


def test_few_integer_values_get_one_row_each():
    dist = IntDistribution(1, 8)
    trials = [
        optuna.create_trial(value=float(v), params={"layers": v}, distributions={"layers": dist}) for v in (1, 2, 2, 8)
    ]
    y = np.array([t.value for t in trials])
    kind, _, rows = groups.group(dist, [t.params["layers"] for t in trials], y, True, np.random.default_rng(0))
    assert kind == "value" and [(g.value, g.n) for g in rows] == [(1, 1), (2, 2), (8, 1)]


def test_compute_needs_a_complete_trial():
    study = optuna.create_study()
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED))
    with pytest.raises(ValueError):
        findings.compute(study)


def test_trials_table(full):
    study, _ = full
    df = findings.trials_table(study)
    assert list(df["number"]) == list(range(20))
    assert "user_attrs_curve" not in df and "user_attrs_config" not in df
    assert {"params_lr", "params_momentum", "user_attrs_reason", "duration", "datetime_start"} <= set(df.columns)
    assert df["user_attrs_versions"].iloc[0].startswith("{")
