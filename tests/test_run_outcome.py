"""How a run ends when it could not do what was asked: an exhausted grid says so; a run whose
every trial failed is an error even below the three-in-a-row guard. In-process hpo.run.main on
a tiny real Fashion-MNIST subset and a real SQLite store."""
from __future__ import annotations

import optuna
import pytest
from builders import write_study

from hpo import run
from hpo.errors import HpoError


def trials():
    return optuna.load_study(study_name="tiny", storage="sqlite:///storage/hpo.db").trials


def test_an_exhausted_grid_says_how_many_trials_it_added(study_dir, capsys):
    write_study(study_dir, search="lr = { choices = [0.05] }", sampler='name = "grid"', pruner='name = "none"')
    assert run.main(["--study", "tiny", "--trials", "3", "--keep", "none", "--quiet", "--set", "data.train_size=300",
                     "--set", "train.epochs=1"]) == 0
    assert len(trials()) == 1
    assert ("note: the grid's 1 points have all run: 1 of the 3 trials asked for were added"
            in capsys.readouterr().err)


def test_a_run_whose_every_trial_failed_is_an_error(study_dir):
    write_study(study_dir, search="val_fraction = { choices = [0.00001] }")  # loads, then fails in the trial
    with pytest.raises(HpoError, match=r"every trial failed \(2\); last: failed: HpoError: data.val_fraction"):
        run.main(["--study", "tiny", "--trials", "2", "--keep", "none", "--quiet"])
    assert [t.state.name for t in trials()] == ["FAIL", "FAIL"]
