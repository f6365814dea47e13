"""One analysis, counted once: one binning and one permutation test in the package; a trial and its
resumed retry counted once; budgets of a searched `epochs`; multi-objective studies' epoch-by-epoch
numbers. Studies are built with optuna.create_trial (no training), their user attrs as hpo records them."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from hpo.analysis import findings
from hpo.analysis.figures import render_markdown
from hpo.records import retried

PACKAGE = Path(__file__).resolve().parents[1] / "hpo"


def sources() -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def test_one_binning_and_one_permutation_test_in_the_package():
    found = {
        "binning": [p for p, s in sources().items() if "np.geomspace(" in s or re.search(r"^def bins\(", s, re.M)],
        "shuffles": [p for p, s in sources().items() if ".permutation(" in s or ".permuted(" in s],
        "permutation test": [
            p for p, s in sources().items() if re.search(r"^def \w*(permutation|spread)_p\(", s, re.M)
        ],
        "group type": [p for p, s in sources().items() if re.search(r"^class (Group|Band)\b", s, re.M)],
    }
    assert found == {k: ["analysis/groups.py"] for k in found}, found


def _attrs(epochs: list[float], budget: int, status: str, **more) -> dict:
    return {
        "status": status,
        "val_acc": epochs[-1] if epochs else 0.0,
        "epochs_run": len(epochs),
        "curve": [{"epoch": e, "val_acc": v} for e, v in enumerate(epochs, 1)],
        "config": {"train": {"epochs": budget}, "seed": 0},
        **more,
    }


def _study(directions=("maximize",)) -> optuna.Study:
    study = optuna.create_study(directions=list(directions))
    study.set_user_attr("epochs", 4)
    study.set_user_attr("metrics", ["val_acc", "params"][: len(directions)])
    return study


LR = {"lr": FloatDistribution(1e-4, 1, log=True)}


def test_an_interrupted_trial_and_its_resumed_retry_count_once():
    study = _study()
    for n in range(6):  # complete trials, 4 epochs each
        curve = [50.0 + 5 * e + n for e in range(4)]
        study.add_trial(
            optuna.create_trial(
                value=curve[-1],
                params={"lr": 0.01 * (n + 1)},
                distributions=LR,
                intermediate_values=dict(enumerate(curve, 1)),
                user_attrs=_attrs(curve, 4, "ok", checkpoint_of=n),
            )
        )
    # trial 6 stopped by SIGTERM after 2 epochs; trial 7, its retry, resumed from its checkpoint
    study.add_trial(
        optuna.create_trial(
            state=TrialState.FAIL,
            params={"lr": 0.5},
            distributions=LR,
            intermediate_values={1: 60.0, 2: 65.0},
            user_attrs=_attrs([60.0, 65.0], 4, "interrupted", checkpoint_of=6),
        )
    )
    study.add_trial(
        optuna.create_trial(
            value=75.0,
            params={"lr": 0.5},
            distributions=LR,
            intermediate_values={1: 60.0, 2: 65.0, 3: 70.0, 4: 75.0},
            user_attrs=_attrs([60.0, 65.0, 70.0, 75.0], 4, "ok", checkpoint_of=6, resumed_from_epoch=2),
        )
    )
    f = findings.compute(study)
    p = f.pruning
    # seven trials of four epochs, all trained: nothing was saved, and the resumed epochs are not "saved"
    assert (p.trials, p.budget, p.run, p.saved, p.stopped) == (7, 28, 28, 0, 0)
    assert [(r.epoch, r.trials) for r in f.evidence.rungs] == [(1, 7), (2, 7), (3, 7), (4, 7)]
    md = render_markdown(f, {})
    assert "7 finished trials had a budget of 28 epochs (4 epochs each; a trial and its resumed retry count once)" in md


def test_a_searched_epochs_budget_is_each_trials_own():
    study = _study()
    space = {**LR, "epochs": CategoricalDistribution([2, 4])}
    for n in range(6):
        budget = (2, 4)[n % 2]
        curve = [50.0 + 5 * e for e in range(budget if n < 4 else 1)]
        pruned = n >= 4
        study.add_trial(
            optuna.create_trial(
                state=TrialState.PRUNED if pruned else TrialState.COMPLETE,
                value=None if pruned else curve[-1],
                params={"lr": 0.01 * (n + 1), "epochs": budget},
                distributions=space,
                intermediate_values=dict(enumerate(curve, 1)),
                user_attrs=_attrs(curve, budget, "pruned" if pruned else "ok"),
            )
        )
    p = findings.compute(study).pruning
    assert (p.budget, p.run, p.saved, p.budgets) == (2 + 4 + 2 + 4 + 2 + 4, 2 + 4 + 2 + 4 + 1 + 1, 4, (2, 4))
    md = render_markdown(findings.compute(study), {})
    assert "6 finished trials had a budget of 18 epochs (2 or 4 epochs each, as searched;" in md
    assert "The pruner stopped 2 trials (4 epochs saved)" in md


def test_a_multi_objective_study_has_its_epochs_in_the_csv_and_the_report():
    study = _study(("maximize", "minimize"))
    for n in range(5):
        stopped = n == 4  # stopped after one epoch (hpo prunes multi-objective trials through a shadow study)
        curve = [60.0 + 3 * e + n for e in range(1 if stopped else 4)]
        study.add_trial(
            optuna.create_trial(
                state=TrialState.PRUNED if stopped else TrialState.COMPLETE,
                values=None if stopped else [curve[-1], 1000.0 * (n + 1)],
                params={"lr": 0.01 * (n + 1)},
                distributions=LR,
                user_attrs=_attrs(curve, 4, "pruned" if stopped else "ok"),
            )
        )
    df = findings.trials_table(study)
    assert [c for c in df.columns if c.startswith("intermediate_value_")] == [
        f"intermediate_value_{e}" for e in (1, 2, 3, 4)
    ]
    assert df.loc[df["number"] == 4, "intermediate_value_1"].item() == 64.0  # the stopped trial's one epoch
    md = render_markdown(findings.compute(study), {})
    assert "| 1 | 5 | 4 complete, 1 pruned | " in md and "| 4 | 4 | 4 complete | " in md


def test_a_trial_interrupted_while_waiting_for_the_window_and_its_retry_count_once():
    """Under a window a retry inherits its trial's index (hpo.search.window), with or without a checkpoint."""
    waited = optuna.create_trial(state=TrialState.FAIL, user_attrs={"status": "interrupted", "index": 3})
    retry = optuna.create_trial(value=80.0, params={"lr": 0.1}, distributions=LR, user_attrs={"index": 3})
    other = optuna.create_trial(state=TrialState.FAIL, user_attrs={"status": "failed", "index": 4})
    for number, t in enumerate((waited, retry, other)):
        t.number = number
    assert retried([waited, retry, other]) == {0}
