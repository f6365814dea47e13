"""Pruning for multi-objective studies: ask the study's own pruner about validation accuracy.

Optuna prunes single-objective studies only (``trial.report`` raises NotImplementedError in a
multi-objective one, optuna#3450). Each trial already keeps its per-epoch validation accuracy in
its ``curve`` user attr; here those curves become a single-objective shadow study in memory (same
study name and trial numbers, so Hyperband draws the same brackets; each finished trial's value its
final val_acc), and the real pruner is asked about the running trial there. The trial's own result
stays multi-objective. Rung records a pruner writes (successive halving's ``completed_rung_N``) go
back to the real trial's system attrs, so the next shadow sees them.
"""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.search.window import WindowPruner

METRIC = "val_acc"  # the metric the shadow prunes on; the study must optimise it


def curve_values(curve: list[dict]) -> dict[int, float]:
    """A curve user attr as intermediate values: epoch -> validation accuracy."""
    return {int(c["epoch"]): float(c[METRIC]) for c in curve if c.get(METRIC) is not None}


PARAM = ("_", FloatDistribution(0.0, 1.0))  # a shadow trial needs no parameters; one fixed placeholder


def _finished(t: FrozenTrial) -> FrozenTrial:
    """A finished (or waiting) trial of the real study as a single-objective one: COMPLETE with its
    final val_acc, PRUNED with its curve, anything else a FAIL that only keeps the numbering."""
    values = curve_values(t.user_attrs.get("curve") or [])
    state, value = t.state, None
    if state == TrialState.COMPLETE and values:
        value = values[max(values)]
    elif state != TrialState.PRUNED:
        state, values = TrialState.FAIL, {}
    return optuna.create_trial(
        state=state,
        value=value,
        params={PARAM[0]: 0.0},
        distributions={PARAM[0]: PARAM[1]},
        system_attrs=dict(t.system_attrs),
        intermediate_values=values,
    )


def _add_running(shadow: optuna.Study, t: FrozenTrial, values: dict[int, float]) -> int:
    """add_trial takes finished trials only: a running one is created in the storage directly."""
    storage = shadow._storage
    trial_id = storage.create_new_trial(shadow._study_id)
    storage.set_trial_param(trial_id, PARAM[0], 0.0, PARAM[1])
    for key, value in t.system_attrs.items():
        storage.set_trial_system_attr(trial_id, key, value)
    for step, value in values.items():
        storage.set_trial_intermediate_value(trial_id, step, value)
    return trial_id


def prunable(study: optuna.Study) -> bool:
    """Multi-objective with val_acc among its metrics: the shadow can prune it."""
    return len(study.directions) > 1 and METRIC in _metrics(study)


def _metrics(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get("metrics") or study.metric_names or [])


def should_prune(trial: optuna.Trial, curve: list[dict]) -> bool:
    """What the study's pruner says about ``trial``, given its curve so far, on validation accuracy."""
    study = trial.study
    direction = study.directions[_metrics(study).index(METRIC)]
    pruner, trials, number = study.pruner, study.get_trials(deepcopy=False), trial.number
    if isinstance(pruner, WindowPruner):  # the window's trials only, numbered by index (hpo.search.window)
        seen = study.sampler.seen(study, study._storage.get_trial(trial._trial_id))
        gap = optuna.create_trial(state=TrialState.FAIL)  # indices it may not see keep the numbering
        current = seen.trial(study._storage.get_trial(trial._trial_id))
        pruner, number = seen.pruner, seen.index
        trials = [*seen.visible, *[gap] * (seen.index - len(seen.visible)), current]
    shadow = optuna.create_study(study_name=study.study_name, direction=direction, pruner=pruner)
    current = None
    for t in trials:  # in number order, so the shadow's numbers match
        if t.number == number:
            current = _add_running(shadow, t, curve_values(curve))
        elif t.state == TrialState.RUNNING:
            _add_running(shadow, t, curve_values(t.user_attrs.get("curve") or []))
        else:
            shadow.add_trial(_finished(t))
    if current is None:
        return False
    frozen = shadow._storage.get_trial(current)
    prune = pruner.prune(shadow, frozen)
    for key, value in shadow._storage.get_trial(current).system_attrs.items():  # rung records, for the next epoch
        if frozen.system_attrs.get(key) != value:
            study._storage.set_trial_system_attr(trial._trial_id, key, value)
    return prune
