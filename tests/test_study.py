"""hpo.search.study and hpo.search.objective: every sampler and pruner on a tiny real study, in a real SQLite store."""

from __future__ import annotations

import optuna
import pytest
from builders import TINY_STUDY, write_study

from hpo import config, run
from hpo.errors import HpoError
from hpo.search import study as study_mod
from hpo.search.objective import Objective, dominated

STORE = "sqlite:///storage/hpo.db"


def load_trials(name="tiny", url=STORE):
    return optuna.load_study(study_name=name, storage=url).trials


def test_registries_implement_exactly_the_declared_names():
    assert set(study_mod.SAMPLERS) == set(config.declared(config.SamplerSpec, "name"))
    assert set(study_mod.PRUNERS) == set(config.declared(config.PrunerSpec, "name"))


@pytest.mark.parametrize("sampler", sorted(study_mod.SAMPLERS))
def test_every_sampler_runs_a_study(sampler, study_dir):
    search = "lr = { choices = [0.01, 0.05] }" if sampler == "grid" else "lr = { low = 0.02, high = 0.1, log = true }"
    metrics = '["val_acc", "params"]' if sampler == "nsga2" else '["val_acc"]'
    write_study(
        study_dir,
        search=search + '\n"model.name" = { choices = ["lenet5", "simple_cnn"] }',
        sampler=f'name = "{sampler}"',
        pruner='name = "none"',
        objective=f"metrics = {metrics}",
    )
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "2"]) == 0
    trials = load_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
    for t in trials:
        assert set(t.params) == {"lr", "name"}
        assert 10 < t.values[0] <= 100  # validation accuracy in percent
        assert t.user_attrs["config"]["train"]["lr"] == t.params["lr"]
        assert t.user_attrs["status"] == "ok" and t.user_attrs["test_acc"] > 10
        assert [s for s in t.intermediate_values] == ([] if sampler == "nsga2" else [1, 2])


# Each pruner's options, chosen so that it must prune on the grid below (one bracket for Hyperband:
# successive halving with reduction factor 3).
PRUNER_OPTIONS = {
    "median": "n_startup_trials = 1",
    "percentile": "percentile = 50.0\nn_startup_trials = 1",
    "successive_halving": "min_resource = 1\nreduction_factor = 2",
    "hyperband": "min_resource = 1\nmax_resource = 2",
    "patient": "patience = 0",
    "none": "",
}
GOOD_LR, SLOW_LR = 0.05, 0.0001


@pytest.mark.parametrize("pruner", sorted(study_mod.PRUNERS))
def test_every_pruner_prunes_what_it_should_and_records_why(pruner, study_dir):
    # lr 1e-4 barely learns: at epoch 1 it trails any lr 0.05 trial that reached epoch 1 before it.
    # For the patient pruner, lr x 3 after epoch 1 makes some trials worse at epoch 2 (gamma 1: none).
    # Seed 1: the grid runs a slow trial after the good ones (seed 0 runs both slow ones first).
    text = TINY_STUDY.replace("seed = 0", "seed = 1")
    first, values = ("lr", [GOOD_LR, SLOW_LR]) if pruner != "patient" else ("gamma", [1.0, 3.0])
    if pruner == "patient":  # three epochs: hpo never prunes after a trial's last one, which saves nothing
        text = text.replace("momentum = 0.9\n", 'momentum = 0.9\nschedule = "step"\nmilestones = [1]\n')
        text = text.replace("epochs = 2\n", "epochs = 3\n")
    write_study(
        study_dir,
        text=text,
        pruner=f'name = "{pruner}"\n{PRUNER_OPTIONS[pruner]}',
        sampler='name = "grid"',
        search=f"{first} = {{ choices = {values} }}\nmomentum = {{ choices = [0.9, 0.8] }}",
    )
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "4"]) == 0
    trials = load_trials()
    assert sorted((t.params[first], t.params["momentum"]) for t in trials) == sorted(
        (v, m) for v in values for m in (0.9, 0.8)
    )  # the whole grid, each point once
    pruned = {t.number for t in trials if t.user_attrs["status"] == "pruned"}
    for t in trials:
        assert t.user_attrs["epochs_run"] == len(t.intermediate_values)
        if t.number in pruned:
            assert t.state == optuna.trial.TrialState.PRUNED
            assert t.user_attrs["reason"].startswith(f"pruned at epoch {t.user_attrs['epochs_run']}: ")
            assert t.user_attrs["reason"].endswith(f"({pruner} pruner)")
    if pruner == "none":
        assert not pruned
    elif pruner == "patient":  # patience 0: pruned exactly when epoch 2 is worse than epoch 1
        fell = {
            t.number
            for t in trials
            if t.user_attrs["status"] in ("ok", "pruned")
            and len(t.intermediate_values) >= 2
            and t.intermediate_values[2] < t.intermediate_values[1]
        }
        assert pruned and pruned == fell, [(t.params, t.intermediate_values, t.user_attrs["status"]) for t in trials]
    else:
        trailing = {
            t.number
            for t in trials
            if t.params["lr"] == SLOW_LR and any(u.params["lr"] == GOOD_LR and u.number < t.number for u in trials)
        }
        assert trailing, "the grid's order leaves no slow trial after a good one: pick another seed"
        assert trailing <= pruned, [(t.number, t.params, t.user_attrs["status"]) for t in trials]
        assert all(trials[n].user_attrs["epochs_run"] == 1 for n in pruned)


def test_objective_runs_without_a_study(study_dir):
    spec = config.load(study_dir)
    value = Objective(spec)(optuna.trial.FixedTrial({"lr": 0.05}))
    again = Objective(spec)(optuna.trial.FixedTrial({"lr": 0.05}))
    assert 10 < value <= 100 and value == again  # same trial, same seed, same result


def test_diverged_trial_is_pruned_with_its_reason_and_the_study_goes_on(study_dir):
    write_study(study_dir, search="lr = { choices = [1e6, 0.05] }", sampler='name = "grid"', pruner='name = "none"')
    assert run.main(["--study", str(study_dir), "--workers", "1", "--trials", "2"]) == 0
    by_lr = {t.params["lr"]: t for t in load_trials()}
    bad = by_lr[1e6]
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert bad.user_attrs["status"] == "diverged" and bad.user_attrs["reason"].startswith("diverged: ")
    assert by_lr[0.05].state == optuna.trial.TrialState.COMPLETE


def test_chance_level_trial_is_pruned_as_collapsed(study_dir):
    # Sigmoid LeNet at a tiny lr stays at chance: the loss is finite, so only the accuracy tells.
    write_study(
        study_dir,
        search="lr = { choices = [1e-6] }",
        sampler='name = "grid"',
        pruner='name = "none"',
        model='name = "lenet5"\nactivation = "sigmoid"',
    )
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
    models = tmp_path / "models"  # the kept weights; checkpoints/ holds only running trials' checkpoints
    assert len([p for p in models.iterdir() if p.name != "checkpoints"]) == expected


def test_keep_best_stores_each_new_best_and_the_final_best(study_dir, tmp_path):
    write_study(
        study_dir, pruner='name = "none"', search="lr = { choices = [0.0005, 0.05, 0.002] }", sampler='name = "grid"'
    )
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


@pytest.mark.parametrize(
    "section, text, message",
    [
        (
            "sampler",
            'name = "bayes"',
            "unknown sampler.name 'bayes'; choose one of: cmaes, gp, grid, nsga2, qmc, random, tpe",
        ),
        ("pruner", 'name = "medain"', "unknown pruner.name 'medain' (did you mean 'median'?)"),
        ("sampler", 'name = "tpe"\nn_start = 3', "unknown option sampler.n_start for sampler 'tpe'"),
        ("pruner", 'name = "patient"\npatience = -1', "pruner 'patient': patience cannot be negative"),
    ],
)
def test_bad_sampler_or_pruner(section, text, message, study_dir):
    write_study(study_dir, **{section: text})
    with pytest.raises(HpoError) as error:  # names fail as the file is read, options as Optuna gets them
        spec = config.load(study_dir)
        study_mod.make_sampler(spec, 0), study_mod.make_pruner(spec)
    assert message in str(error.value)


def test_sampler_seed_differs_on_resume_and_per_worker():
    # Every study seed, resume point and worker index of a realistic range gets its own sampler seed.
    seeds = [study_mod.sampler_seed(s, n, w) for s in (0, 1, 7) for n in (0, 1, 3, 50) for w in range(16)]
    assert len(set(seeds)) == len(seeds) == 192 and all(0 <= x < 2**31 for x in seeds)


def test_dominated():
    directions = ["maximize", "minimize"]
    assert dominated([80.0, 10.0], [[85.0, 10.0]], directions)
    assert not dominated([80.0, 5.0], [[85.0, 10.0]], directions)
    assert not dominated([80.0, 10.0], [[80.0, 10.0]], directions)
