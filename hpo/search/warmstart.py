"""Warm start: queue the best configurations of another study as this study's first trials.

``--warm-start STUDY`` (a folder, or a study name in the same store) takes that study's best K
complete trials (by its first objective) and enqueues each (``study.enqueue_trial``) with the
parameters this study searches: the other study's value where it searched the same setting, this
study's base setting where it did not; a value outside this study's range or choices is left to
the sampler. Each queued trial carries ``warm_start = "STUDY#N"``; a source trial already queued
into this study is not queued again, so a resumed run counts nothing twice.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.config import ParamSpec, StudySpec, active
from hpo.config import value as setting
from hpo.errors import HpoError
from hpo.records import ranked
from hpo.search.study import load_existing
from hpo.storage.store import open_storage

ATTR = "warm_start"
log = logging.getLogger(__name__)


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
        value = searched.get(p.name, setting(spec.base, p.key))
        if fits(p, value):
            out[p.optuna_name] = int(value) if p.is_int and not p.choices else value
            values[p.key] = value
    return out


def plan(storage_url: str, text: str, spec: StudySpec, k: int) -> list[tuple[str, dict]]:
    """[(tag, params)] for the best ``k`` trials of the source study; reads the store, writes nothing."""
    name = source_name(text)
    if k < 1:
        raise HpoError(f"--warm-start-trials must be >= 1, got {k}")
    if name == spec.name:
        raise HpoError(
            f"--warm-start {text}: that is this study itself, whose best trials are already in it; "
            f"to retrain them with new seeds use --confirm K"
        )
    source = load_existing(open_storage(storage_url, create=False), name, flag="--warm-start: ")
    done = [
        t
        for t in source.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values and math.isfinite(t.values[0])
    ]
    if not done:
        raise HpoError(f"--warm-start: study {name!r} has no complete trial to start from")
    shared = carried(done, spec)
    if not shared:
        theirs = sorted({n.split("|")[0] for t in done for n in t.params})
        raise HpoError(
            f"--warm-start: study {name!r} searched {', '.join(theirs) or 'nothing'} and this study searches "
            f"{', '.join(sorted({p.name for p in spec.search}))}: no setting in common, so nothing to carry over"
        )
    planned, seen = [], []
    for t in ranked(done, source.directions[0] == StudyDirection.MAXIMIZE):
        params = params_for(t, spec)
        theirs = {n.split("|")[0] for n in params} & {n.split("|")[0] for n in t.params}
        # Nothing of its own inside this study's ranges: that would be this study's base setting, not
        # a warm start; two of its best can be one configuration here (what differed is not searched).
        if theirs and params not in seen:
            seen.append(params)
            planned.append((f"{name}#{t.number}", params))
        if len(planned) == k:
            break
    if not planned:
        raise HpoError(
            f"--warm-start: the values study {name!r} found for {', '.join(sorted(shared))} all lie outside "
            f"this study's ranges, so nothing can be carried over"
        )
    rest = sorted({p.name for p in spec.search} - shared)
    log.info(
        f"warm start from {name!r}: {len(planned)} of its best configurations, carrying {', '.join(sorted(shared))}"
        + (f"; {', '.join(rest)} at this study's base settings" if rest else "")
    )
    return planned


def carried(done: list[FrozenTrial], spec: StudySpec) -> set[str]:
    """The settings this study searches that the source's trials drew (per-branch names as their setting)."""
    theirs = {n.split("|")[0] for t in done for n in t.params}
    return {p.name for p in spec.search} & theirs


def enqueue(study: optuna.Study, planned: list[tuple[str, dict]]) -> list[str]:
    """Queue the planned trials not queued before; returns the tags queued now."""
    seen = {t.user_attrs.get(ATTR) for t in study.get_trials(deepcopy=False)}
    queued = []
    for tag, params in planned:
        if tag not in seen:
            study.enqueue_trial(params, user_attrs={ATTR: tag})
            queued.append(tag)
    return queued
