"""hpo.study and hpo.objective: every sampler and pruner on a tiny real study, in a real SQLite store."""
from __future__ import annotations

import optuna
import pytest
from conftest import write_study

from hpo import config, run, study as study_mod
from hpo.errors import HpoError
from hpo.objective import Objective, dominated

STORE = "sqlite:///storage/hpo.db"


def load_trials(name="tiny", url=STORE):
    return optuna.load_study(study_name=name, storage=url).trials


@pytest.mark.parametrize("sampler", sorted(study_mod.SAMPLERS))
def test_every_sampler_runs_a_study(sampler, study_dir):
    search = 'lr = { choices = [0.01, 0.05] }' if sampler == "grid" else 'lr = { low = 0.02, high = 0.1, log = true }'
    metrics = '["val_acc", "params"]' if sampler == "nsga2" else '["val_acc"]'
    write_study(study_dir, search=search + '\n"model.name" = { choices = ["lenet5", "simple_cnn"] }',
                sampler=f'name = "{sampler}"', pruner='name = "none"', objective=f"metrics = {metrics}")
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "2"]) == 0
    trials = load_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        assert set(t.params) == {"lr", "name"}
        assert 10 < t.values[0] <= 100  # validation accuracy in percent
        assert t.user_attrs["config"]["train"]["lr"] == t.params["lr"]
        assert t.user_attrs["status"] == "ok" and t.user_attrs["test_acc"] > 10
        assert [s for s in t.intermediate_values] == ([] if sampler == "nsga2" else [1, 2])


@pytest.mark.parametrize("pruner", sorted(study_mod.PRUNERS))
def test_every_pruner_runs_and_records_why(pruner, study_dir):
    options = {"median": "n_startup_trials = 1", "percentile": "percentile = 50.0\nn_startup_trials = 1",
               "successive_halving": "", "hyperband": "min_resource = 1\nmax_resource = 2", "patient": "patience = 0",
               "none": ""}[pruner]
    write_study(study_dir, pruner=f'name = "{pruner}"\n{options}',
                search='lr = { choices = [0.05, 0.0001, 0.05, 0.0001] }', sampler='name = "grid"')
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "4"]) == 0
    trials = load_trials()
    assert len(trials) == 4
    for t in trials:
        assert t.user_attrs["epochs_run"] == len(t.intermediate_values)
        if t.user_attrs["status"] == "pruned":
            assert t.state == optuna.trial.TrialState.PRUNED and "pruned at epoch" in t.user_attrs["reason"]
    statuses = [t.user_attrs["status"] for t in trials]
    if pruner == "none":
        assert "pruned" not in statuses
    if pruner in ("median", "percentile"):  # lr 1e-4 trails lr 0.05 at epoch 1
        assert statuses[1] == "pruned" and trials[1].user_attrs["epochs_run"] == 1


def test_objective_runs_without_a_study(study_dir):
    spec = config.load(study_dir)
    value = Objective(spec)(optuna.trial.FixedTrial({"lr": 0.05}))
    again = Objective(spec)(optuna.trial.FixedTrial({"lr": 0.05}))
    assert 10 < value <= 100 and value == again  # same trial, same seed, same result


def test_diverged_trial_is_pruned_with_its_reason_and_the_study_goes_on(study_dir):
    write_study(study_dir, search='lr = { choices = [1e6, 0.05] }', sampler='name = "grid"', pruner='name = "none"')
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "2"]) == 0
    by_lr = {t.params["lr"]: t for t in load_trials()}
    bad = by_lr[1e6]
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.user_attrs["status"] == "diverged" and bad.user_attrs["reason"].startswith("diverged: ")
    assert by_lr[0.05].state == optuna.trial.TrialState.COMPLETE


def test_chance_level_trial_is_pruned_as_collapsed(study_dir):
    # Sigmoid LeNet at a tiny lr stays at chance: the loss is finite, so only the accuracy tells.
    write_study(study_dir, search='lr = { choices = [1e-6] }', sampler='name = "grid"', pruner='name = "none"',
                model='name = "lenet5"\nactivation = "sigmoid"')
    run.main(["--study", str(study_dir), "--workers", "1", "--trials", "1"])
    (t,) = load_trials()
    assert t.state == optuna.trial.TrialState.PRUNED
    assert t.user_attrs["status"] == "collapsed" and "chance level" in t.user_attrs["reason"]


@pytest.mark.parametrize("keep, expected", [("all", 3), ("none", 0)])
def test_keep_policy_decides_which_weights_are_stored(keep, expected, study_dir, tmp_path):
    write_study(study_dir, pruner='name = "none"')
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "3", "--keep", keep]) == 0
    kept = [t for t in load_trials() if "weights_artifact_id" in t.user_attrs]
    assert len(kept) == expected
    assert len([p for p in (tmp_path / "models").iterdir()]) == expected


def test_keep_best_stores_each_new_best_and_the_final_best(study_dir, tmp_path):
    write_study(study_dir, pruner='name = "none"', search='lr = { choices = [0.0005, 0.05, 0.002] }', sampler='name = "grid"')
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "3"]) == 0
    trials = load_trials()
    best = max(trials, key=lambda t: t.value)
    assert "weights_artifact_id" in best.user_attrs
    store = optuna.artifacts.FileSystemArtifactStore(tmp_path / "models")
    import torch
    with store.open_reader(best.user_attrs["weights_artifact_id"]) as f:
        state = torch.load(f, weights_only=True)
    assert "features.0.weight" in state
    records, top = [], -1.0
    for t in trials:  # a trial keeps weights exactly when it beat every earlier one
        records.append("weights_artifact_id" in t.user_attrs)
        assert records[-1] == (t.value > top)
        top = max(top, t.value)


def test_grid_over_a_continuous_range_is_refused(study_dir):
    write_study(study_dir, sampler='name = "grid"')
    spec = config.load(study_dir)
    with pytest.raises(HpoError, match=r"grid.*search.lr is a continuous range; list the values"):
        study_mod.make_sampler(spec, 0)


@pytest.mark.parametrize("section, text, message", [
    ("sampler", 'name = "bayes"', "unknown sampler.name 'bayes'; choose one of: cmaes, gp, grid, nsga2, qmc, random, tpe"),
    ("pruner", 'name = "medain"', "unknown pruner.name 'medain' (did you mean 'median'?)"),
    ("sampler", 'name = "tpe"\nn_start = 3', "unknown option sampler.n_start for sampler 'tpe'"),
    ("pruner", 'name = "patient"\npatience = -1', "pruner 'patient': patience cannot be negative"),
])
def test_bad_sampler_or_pruner(section, text, message, study_dir):
    write_study(study_dir, **{section: text})
    spec = config.load(study_dir)
    with pytest.raises(HpoError) as error:
        study_mod.make_sampler(spec, 0), study_mod.make_pruner(spec)
    assert message in str(error.value)


def test_sampler_seed_differs_on_resume_and_per_worker():
    seeds = {study_mod.sampler_seed(0, n, w) for n in (0, 3) for w in (0, 1)}
    assert len(seeds) == 4 and study_mod.sampler_seed(0, 0, 0) == study_mod.sampler_seed(0, 0, 0)


def test_dominated():
    directions = ["maximize", "minimize"]
    assert dominated([80.0, 10.0], [[85.0, 10.0]], directions)
    assert not dominated([80.0, 5.0], [[85.0, 10.0]], directions)
    assert not dominated([80.0, 10.0], [[80.0, 10.0]], directions)
