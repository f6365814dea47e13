"""What a conditional study found per branch, as plain data (``hpo.analysis.figures`` draws it).

A study with conditional parameters (``when`` in its [search]) has trials that carry different
parameters: momentum only where optimizer = sgd, "lr|adam/adamw" only under Adam and AdamW.
Optuna's importance evaluators rank the parameters every trial shares (its intersection search
space), so the study-wide ranking says nothing of a branch's own parameters. Here the complete
trials are grouped by the settings the conditions read, and each branch gets its own numbers, its
own per-parameter tables and its own importances, computed on a study of that branch's trials only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from hpo.analysis import effects
from hpo.analysis.findings import (
    Findings,
    Importances,
    ParamEffect,
    complete_trials,
    fmt,
    importances,
    label,
    metric_names,
    searched_params,
)
from hpo.analysis.groups import display, summarise


@dataclass(frozen=True)
class Branch:
    label: str  # "optimizer = sgd"
    values: dict  # {"optimizer": "sgd"}
    trials: int
    mean: float | None
    best: float | None
    worst: float | None
    best_trial: int | None
    params: tuple[ParamEffect, ...]  # the parameters only this branch searches
    importance: Importances  # within the branch, on every parameter its trials share
    pruned: int = 0  # trials of this branch the pruner stopped (not in the numbers above)


@dataclass(frozen=True)
class Branches:
    by: tuple[str, ...]  # the settings the conditions read, e.g. ("optimizer",)
    branches: tuple[Branch, ...]
    shared: tuple[str, ...]  # parameters no condition restricts
    ranked: tuple[str, ...] = ()  # parameters every complete trial has: all Optuna's study-wide importance can rank


def _base_params(t: FrozenTrial) -> dict:
    return {n.split("|")[0]: v for n, v in t.params.items()}


def _branch_study(trials: list[FrozenTrial], directions) -> optuna.Study:
    study = optuna.create_study(directions=directions)
    for t in trials:
        study.add_trial(optuna.create_trial(values=t.values, params=t.params, distributions=t.distributions))
    return study


def compute(study: optuna.Study) -> Branches | None:
    """Per-branch findings for a study with conditional parameters; None for any other study."""
    conditions: dict = study.user_attrs.get("branches") or {}
    by = tuple(dict.fromkeys(k for c in conditions.values() for k in c.get("when", {})))
    complete = complete_trials(study.get_trials(deepcopy=False))
    if not by or not complete:
        return None
    metric, direction = metric_names(study)[0], study.directions[0]
    space = searched_params(complete)
    shared = tuple(n for n in space if n not in conditions)  # by the study's conditions, not by who happened to finish
    branch_of = lambda t: tuple(_base_params(t).get(k) for k in by)  # noqa: E731
    keyed: dict[tuple, list[FrozenTrial]] = {}
    for t in complete:
        keyed.setdefault(branch_of(t), []).append(t)
    pruned = [branch_of(t) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))]
    for key in pruned:
        keyed.setdefault(key, [])
    out = []
    for key, trials in sorted(keyed.items(), key=lambda kv: [str(v) for v in kv[0]]):
        values = {k: v for k, v in zip(by, key, strict=True) if v is not None}
        text = ", ".join(f"{display(k)} = {v}" for k, v in values.items()) or "none of the conditions set"
        if not trials:  # every trial of this branch was pruned
            out.append(
                Branch(
                    label=text,
                    values=values,
                    trials=0,
                    mean=None,
                    best=None,
                    worst=None,
                    best_trial=None,
                    params=(),
                    importance=Importances(metric, {}, "no complete trial"),
                    pruned=pruned.count(key),
                )
            )
            continue
        own = {n: space[n] for n in space if n not in shared and any(n in t.params for t in trials)}
        maximize = direction == optuna.study.StudyDirection.MAXIMIZE
        # the same analysis as the study-wide one (hpo.analysis.effects), on this branch's trials alone
        found = effects.analyse(
            [t.params for t in trials],
            [t.values[0] for t in trials],
            own,
            maximize,
            lambda v: fmt(metric, v),
            label(metric),
            tests=[t.user_attrs.get("test_acc") for t in trials],
        )
        params = tuple(
            ParamEffect(name=n, kind=e.kind, log=e.log, importance={}, groups=e.groups, sentence=e.sentence)
            for n, e in found.items()
        )
        names = [n for n in searched_params(trials) if all(n in t.params for t in trials) and n not in by]
        imp = importances(_branch_study(trials, study.directions), trials, names, metric, 0)
        y = np.array([t.values[0] for t in trials], dtype=float)
        stats = summarise({"label": text}, np.ones(len(y), dtype=bool), y, maximize, np.random.default_rng(0))
        best = min((t for t in trials if t.values[0] == stats.best), key=lambda t: t.number)
        out.append(
            Branch(
                label=text,
                values=values,
                trials=stats.n,
                mean=stats.mean,
                best=stats.best,
                worst=stats.worst,
                best_trial=best.number,
                params=params,
                importance=imp,
                pruned=pruned.count(key),
            )
        )
    ranked = tuple(n for n in space if all(n in t.params for t in complete))
    return Branches(by=by, branches=tuple(out), shared=shared, ranked=ranked)


def warm_started(study: optuna.Study) -> dict[int, str]:
    """Trial number -> the source trial it was warm-started from ("STUDY#N")."""
    return {
        t.number: str(t.user_attrs["warm_start"])
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("warm_start")
    }


def extend(f: Findings, study: optuna.Study) -> Findings:
    """The report's findings with the per-branch results and the warm-started trials."""
    return dataclasses.replace(f, branches=compute(study), warm_started=warm_started(study))
