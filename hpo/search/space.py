"""The search space: ``trial.suggest_*`` for each searched setting -> a concrete TrainConfig."""

from __future__ import annotations

import dataclasses

import optuna

from hpo.config import ParamSpec, StudySpec, TrainConfig, active, with_values
from hpo.records import INDEX


def suggest(trial: optuna.Trial, param: ParamSpec):
    """One value for one parameter. Optuna's parameter name is the bare field name ("lr"), which
    is what the dashboard, importances and the report show; a setting with a range per branch has
    one name per branch ("lr|sgd", "lr|adam/adamw")."""
    name = param.optuna_name
    if param.choices:
        return trial.suggest_categorical(name, list(param.choices))
    if param.is_int:
        return trial.suggest_int(name, param.low, param.high, step=param.step or 1, log=param.log)
    return trial.suggest_float(name, param.low, param.high, step=param.step, log=param.log)


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Each trial's own seed (model init, batch order, augmentation), derived from the study seed:
    the same trial of the same study trains the same way every time."""
    return (study_seed * 1_000_003 + trial_number) % 2**31


def trial_config(trial: optuna.Trial, spec: StudySpec) -> TrainConfig:
    values: dict = {}
    for p in spec.search:  # define-by-run: a conditional setting after the ones it reads (config orders them)
        if active(p, values):
            values[p.key] = suggest(trial, p)
    # A trial re-queued after its worker died inherits the user attrs, seed included, of the
    # trial it retries, so the retry trains exactly as the original would have. Under a window the
    # seed follows the trial's logical index, not the store's number (hpo.search.window).
    seed = trial.user_attrs.get("seed", trial_seed(spec.seed, trial.user_attrs.get(INDEX, trial.number)))
    config = dataclasses.replace(with_values(spec.base, values), seed=seed)
    if config.data.split_seed < 0:  # the split is the study seed's: name it, so the recorded config reruns alone
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, split_seed=spec.seed))
    return config
