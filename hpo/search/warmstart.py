"""Warm start: queue the best configurations of another study as this study's first trials.

``--warm-start STUDY`` (a folder, or a study name in the same store) takes that study's best K
complete trials (by its first objective) and enqueues each (``study.enqueue_trial``) with the
parameters this study searches: the other study's value where it searched the same setting, this
study's base setting where it did not; a value outside this study's range or choices is left to
the sampler. Each queued trial carries ``warm_start = "STUDY#N"``; a source trial already queued
into this study is not queued again, so a resumed run counts nothing twice.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.config import ParamSpec, StudySpec, active
from hpo.errors import HpoError
from hpo.records import ranked
from hpo.search.study import load_existing
from hpo.storage.store import open_storage

ATTR = "warm_start"


def source_name(text: str) -> str:
    """A study folder's name (the study it holds), or the text itself as a study name."""
    path = Path(text)
    return path.resolve().name if path.is_dir() else text


def fits(p: ParamSpec, value) -> bool:
    if p.choices:
        return value in p.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (p.is_int and not float(value).is_integer()):
        return False
    return p.low <= value <= p.high


def params_for(source: FrozenTrial, spec: StudySpec) -> dict:
    """The source trial's configuration in this study's Optuna parameter names (define-by-run order)."""
    searched = {name.split("|")[0]: value for name, value in source.params.items()}  # "lr|sgd" -> lr
    values, out = {}, {}
    for p in spec.search:
        if not active(p, values):
            continue
        value = searched.get(p.name, getattr(getattr(spec.base, p.section), p.name))
        if fits(p, value):
            out[p.optuna_name] = int(value) if p.is_int and not p.choices else value
            values[p.key] = value
    return out


def plan(storage_url: str, text: str, spec: StudySpec, k: int) -> list[tuple[str, dict]]:
    """[(tag, params)] for the best ``k`` trials of the source study; reads the store, writes nothing."""
    name = source_name(text)
    if k < 1:
        raise HpoError(f"--warm-start-trials must be >= 1, got {k}")
    source = load_existing(open_storage(storage_url, create=False), name, flag="--warm-start: ")
    done = [
        t
        for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    if not done:
        raise HpoError(f"--warm-start: study {name!r} has no complete trial to start from")
    best = ranked(done, source.directions[0] == StudyDirection.MAXIMIZE)[:k]
    return [(f"{name}#{t.number}", params_for(t, spec)) for t in best]


def enqueue(study: optuna.Study, planned: list[tuple[str, dict]]) -> list[str]:
    """Queue the planned trials not queued before; returns the tags queued now."""
    seen = {t.user_attrs.get(ATTR) for t in study.get_trials(deepcopy=False)}
    queued = []
    for tag, params in planned:
        if tag not in seen:
            study.enqueue_trial(params, user_attrs={ATTR: tag})
            queued.append(tag)
    return queued
