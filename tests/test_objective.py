"""hpo.search.objective on an in-memory study: what the pruner may and may not stop."""

from __future__ import annotations

import optuna
from builders import write_study
from optuna.trial import TrialState

from hpo import config
from hpo.records import CONFIRMS
from hpo.search.objective import Objective


def test_a_confirmation_is_never_pruned_whichever_run_pops_it(study_dir):
    """--confirm runs its queue unpruned; a resumed --confirm run is an ordinary run with the study's
    pruner, and the confirmations it pops must still run to the end."""
    write_study(study_dir, train="epochs = 2\nbatch_size = 64\nlr = 0.05\nthreads = 1")
    spec = config.load(study_dir, ["data.train_size=3000"])
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=101.0))
    study.enqueue_trial({"lr": 0.05}, user_attrs={CONFIRMS: 0, "seed": 1_000_001})
    study.enqueue_trial({"lr": 0.05})
    study.optimize(Objective(spec), n_trials=2)
    confirmation, searched = study.trials
    assert (confirmation.state, confirmation.user_attrs["epochs_run"]) == (TrialState.COMPLETE, 2), (
        confirmation.user_attrs["reason"]
    )
    assert (searched.state, searched.user_attrs["epochs_run"]) == (TrialState.PRUNED, 1)  # the pruner works
