"""Pruning multi-objective studies on validation accuracy (hpo.search.shadow): the study's own pruner,
asked through a single-objective shadow of the curves; the trial's result stays multi-objective."""

from __future__ import annotations

import optuna
import pytest
from builders import write_study
from optuna.trial import TrialState
from processes import hpo

from hpo.search import shadow


def curve(accs: list[float]) -> list[dict]:
    return [{"epoch": e, "val_acc": a} for e, a in enumerate(accs, 1)]


def multi_study(pruner, finished: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], pruner=pruner)
    study.set_user_attr("metrics", ["val_acc", "wall_time"])
    for accs in finished:
        study.add_trial(optuna.create_trial(values=[accs[-1], 10.0], user_attrs={"curve": curve(accs)}))
    return study


@pytest.mark.parametrize(
    "pruner",
    [
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        optuna.pruners.PercentilePruner(25.0, n_startup_trials=2),
    ],
)
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
    for accs in ([80, 85], [82, 86], [90, 91]):  # each records its rung while running, as hpo.search.objective does
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


def test_an_accuracy_vs_time_study_prunes_and_reports_its_pareto_front(tmp_path, monkeypatch, fashion_mnist_system):
    monkeypatch.chdir(tmp_path)
    folder = write_study(
        tmp_path / "studies" / "mo",
        train="epochs = 3\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        search="lr = { low = 1e-4, high = 0.5, log = true }",
        sampler='name = "random"',
        pruner='name = "median"\nn_startup_trials = 2\nn_warmup_steps = 0',
        objective='metrics = ["val_acc", "wall_time"]',
    )
    (folder / "study.toml").write_text(
        (folder / "study.toml").read_text().replace("train_size = 2000", "train_size = 300")
    )
    proc = hpo("--study", "mo", "--trials", "8", "--quiet", "--keep", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    url = f"sqlite:///{tmp_path / 'storage/hpo.db'}"
    study = optuna.load_study(study_name="mo", storage=url)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.user_attrs["status"] == "pruned"]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned, [(t.number, t.state.name, t.user_attrs.get("status")) for t in study.trials]
    assert all(t.user_attrs["epochs_run"] < 3 and "median pruner" in t.user_attrs["reason"] for t in pruned)
    assert all(len(t.values) == 2 for t in complete) and len(study.directions) == 2  # still multi-objective
    assert all(t.intermediate_values == {} for t in study.trials)  # nothing reported to the real study
    report = hpo("studies/mo", "--no-png", module="hpo.report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    md = (folder / "report" / "report.md").read_text()
    front = len(study.best_trials)
    assert front >= 1 and f"one of {front} on the Pareto front)" in md  # the summary's What to use
    assert f"{front} trial{'s' * (front != 1)} where no other trial is better on every objective" in md
    assert 'id="fig-pareto_front"' in (folder / "report" / "index.html").read_text()
    assert f"The pruner stopped {len(pruned)} trials" in md
