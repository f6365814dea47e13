"""hpo.analysis.branches: per-branch findings of a conditional study, built with optuna.create_trial."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo.analysis import branches
from hpo.analysis.figures import render_markdown
from hpo.analysis.findings import compute
from hpo.analysis.groups import display

OPT = CategoricalDistribution(["sgd", "adam"])
MOM = FloatDistribution(0.5, 0.99)
LR_SGD = FloatDistribution(1e-3, 0.3, log=True)
LR_ADAM = FloatDistribution(1e-5, 1e-2, log=True)


def conditional_study(only_adam: bool = False) -> optuna.Study:
    """8 SGD trials whose accuracy falls with momentum's distance from 0.9; 4 Adam trials at 85 + i."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("metrics", ["val_acc"])
    study.set_user_attr(
        "branches",
        {
            "momentum": {"setting": "momentum", "when": {"optimizer": ["sgd"]}},
            "lr|sgd": {"setting": "lr", "when": {"optimizer": ["sgd"]}},
            "lr|adam": {"setting": "lr", "when": {"optimizer": ["adam"]}},
        },
    )
    for i in range(8 if only_adam else 0, 12):
        if i < 8:
            m = 0.5 + 0.06 * i
            params, dists, acc = (
                {"optimizer": "sgd", "momentum": m, "lr|sgd": 0.01 * (i + 1)},
                {"optimizer": OPT, "momentum": MOM, "lr|sgd": LR_SGD},
                90 - 20 * abs(m - 0.9),
            )
        else:
            params, dists, acc = (
                {"optimizer": "adam", "lr|adam": 1e-4 * (i - 7)},
                {"optimizer": OPT, "lr|adam": LR_ADAM},
                85.0 + (i - 8),
            )
        user = {"warm_start": f"old#{i}"} if i < 2 else {}
        study.add_trial(optuna.create_trial(value=acc, params=params, distributions=dists, user_attrs=user))
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.PRUNED, params=params, distributions=dists, intermediate_values={1: 50.0}
        )
    )  # one more Adam trial, pruned
    return study


def test_each_branch_has_its_trials_numbers_and_own_parameters():
    study = conditional_study()
    b = branches.compute(study)
    assert b.by == ("optimizer",) and b.shared == ("optimizer",)
    adam, sgd = b.branches
    assert (adam.label, adam.trials, adam.best_trial, adam.best, adam.mean, adam.pruned) == (
        "optimizer = adam",
        4,
        11,
        88.0,
        86.5,
        1,
    )
    assert (sgd.label, sgd.trials, sgd.pruned) == ("optimizer = sgd", 8, 0)
    assert sgd.best_trial == 7 and abs(sgd.best - (90 - 20 * abs(0.92 - 0.9))) < 1e-9
    assert [p.name for p in adam.params] == ["lr|adam"]
    assert sorted(p.name for p in sgd.params) == ["lr|sgd", "momentum"]
    assert sum(g.n for p in sgd.params if p.name == "momentum" for g in p.groups) == 8  # no Adam trial in SGD's table
    assert set(sgd.importance.by_evaluator["PED-ANOVA"]) == {"momentum", "lr|sgd"}  # within the branch
    assert display("lr|adam/adamw") == "lr (adam/adamw)" and display("name") == "model"


def test_a_branch_parameter_is_a_branch_parameter_even_when_no_other_branch_finished():
    study = conditional_study(only_adam=True)
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.PRUNED,
            params={"optimizer": "sgd", "momentum": 0.6},
            distributions={"optimizer": OPT, "momentum": MOM},
            intermediate_values={1: 20.0},
        )
    )
    b = branches.compute(study)
    assert b.shared == ("optimizer",) and [x.label for x in b.branches] == ["optimizer = adam", "optimizer = sgd"]
    sgd = b.branches[1]
    assert (sgd.trials, sgd.pruned, sgd.best_trial, sgd.params) == (0, 1, None, ())  # all pruned: counted, not ranked
    assert "| optimizer = sgd | 0 | 1 | n/a | n/a | n/a | — |" in render_markdown(
        branches.extend(compute(study), study), {}
    )
    assert b.ranked == ("optimizer", "lr|adam")  # what Optuna's importance sees: every complete trial has both
    assert [p.name for p in b.branches[0].params] == ["lr|adam"]


def test_the_report_shows_the_branches_and_marks_warm_started_trials():
    study = conditional_study()
    f = branches.extend(compute(study), study)
    assert f.warm_started == {0: "old#0", 1: "old#1"}
    md = render_markdown(f, {})
    assert (
        "## Branches" in md
        and "### Branch optimizer = sgd (8 complete trials)" in md
        and "### Branch optimizer = adam (4 complete trials)" in md
    )
    # the words name what the importance table above ranks, not another list
    ranked = list(f.importances[0].by_evaluator["PED-ANOVA"])
    assert f"The importances above rank {', '.join(map(display, ranked))};" in md
    assert "| optimizer = adam | 4 | 1 | 86.5% | 88.0% | 85.0% | #11 |" in md
    assert "#0 from `old#0`" in md


def test_a_study_without_conditions_has_no_branches():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.create_trial(value=1.0, params={"x": 0.5}, distributions={"x": MOM}))
    assert branches.compute(study) is None
    assert "## Branches" not in render_markdown(branches.extend(compute(study), study), {})
