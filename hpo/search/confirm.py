"""Is the best trial lucky? ``python -m hpo.run --study NAME --confirm K`` retrains the top
configurations with K new seeds each, as ordinary trials queued in the study; each records the
trial it confirms (user attr ``confirms``). hpo.analysis.confirmations reads them back for the report.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import optuna
from optuna.trial import FrozenTrial

from hpo.config import PrunerSpec, StudySpec
from hpo.errors import HpoError, counted
from hpo.records import CONFIRMS, finite, ranked, recipe, recipe_changes
from hpo.search.space import trial_config, trial_seed
from hpo.search.study import load_existing
from hpo.storage.store import open_storage, will_create

TOP = 3  # configurations confirmed
log = logging.getLogger(__name__)
SEED_STRIDE = 1_000_000  # confirmation seeds sit this far from trial seeds (numbers below it never meet them)


def confirmation_seed(study_seed: int, source: int, k: int) -> int:
    """The k-th confirmation of trial ``source``: never a trial's own seed, never another confirmation's."""
    return (trial_seed(study_seed, source) + SEED_STRIDE * (k + 1)) % 2**31


def top_sources(trials: list[FrozenTrial], maximize: bool, top: int = TOP) -> list[FrozenTrial]:
    """The best searched trials (confirmations are not candidates), one per distinct configuration."""
    out, seen = [], set()
    for t in ranked((t for t in trials if finite(t) and CONFIRMS not in t.user_attrs), maximize):
        key = repr(sorted(t.params.items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
        if len(out) == top:
            break
    return out


def same_recipe(source: FrozenTrial, spec: StudySpec) -> None:
    """A confirmation retrains exactly its trial's recipe, or it confirms nothing: refuse (one
    line) a study file or --set that would train the configuration another way."""
    ran = recipe(source)
    if ran is None:  # a trial stored before configs were recorded: nothing to compare with
        return
    config = trial_config(optuna.trial.FixedTrial(dict(source.params), source.number), spec)
    now = json.loads(json.dumps(config.to_dict()))  # as the store holds it: tuples are lists there
    changes = recipe_changes(ran, {k: v for k, v in now.items() if k != "seed"})
    if changes:
        raise HpoError(
            f"--confirm: trial #{source.number} ran another recipe than this run would retrain it with "
            f"({'; '.join(changes)}): a confirmation retrains its trial exactly; leave out the --set "
            f"(or restore the study file), or search under the new recipe with --study-name NEW"
        )


def _their_threads(spec: StudySpec, sources: list[FrozenTrial]) -> StudySpec:
    """Where the study file leaves the CPU threads to the machine, retrain with the threads the
    trials ran with (a search under --workers auto gives each worker one): the thread count is part
    of a recipe (other threads, other floats), and this one process is free to use it."""
    if spec.base.train.threads:
        return spec
    ran = {(recipe(s) or {}).get("train", {}).get("threads") for s in sources}
    if len(ran) != 1 or not isinstance(threads := ran.pop(), int) or threads <= 0:
        return spec  # several, or none recorded: same_recipe says what differs
    train = dataclasses.replace(spec.base.train, threads=threads)
    return dataclasses.replace(spec, base=dataclasses.replace(spec.base, train=train))


def _not_searched(spec: StudySpec) -> str:
    return f"--confirm: no study {spec.name!r} in the store yet; run the search first"


def retrain_spec(url: str, spec: StudySpec) -> StudySpec:
    """The spec the confirmations train with, before anything is written or any objective built:
    with no store yet, say so before one is created; where the study file leaves the threads to the
    machine, the threads the top trials ran with (``_their_threads``)."""
    if will_create(url):
        raise HpoError(_not_searched(spec))
    study = load_existing(open_storage(url, create=False), spec.name, missing=_not_searched(spec))
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return _their_threads(spec, top_sources(study.get_trials(deepcopy=False), maximize))


def prepare(storage, spec: StudySpec, k: int, top: int = TOP) -> tuple[StudySpec, int]:
    """Queue K new-seed retrainings of each top configuration; the returned spec runs them unpruned
    (a confirmation's full value is the point) and the count is how many trials to run."""
    if k < 1:
        raise HpoError(f"--confirm must be >= 1 seeds per configuration, got {k}")
    if len(spec.objective.metrics) > 1:
        raise HpoError("--confirm needs a single-objective study (a Pareto front has no one best configuration)")
    study = load_existing(storage, spec.name, missing=_not_searched(spec))
    trials = study.get_trials(deepcopy=False)
    sources = top_sources(trials, study.direction == optuna.study.StudyDirection.MAXIMIZE, top)
    if not sources:
        raise HpoError(f"--confirm: study {spec.name!r} has no complete trial to confirm yet")
    if len(sources) < top:
        log.info(
            f"--confirm: study {spec.name!r} holds {counted(len(sources), 'complete configuration')}, "
            f"not the top {top} asked for: retraining {'it' if len(sources) == 1 else 'those'} "
            f"with {counted(k, 'new seed')} each"
        )
    for s in sources:
        same_recipe(s, spec)
    done = {s.number: sum(t.user_attrs.get(CONFIRMS) == s.number for t in trials) for s in sources}
    for s in sources:
        for i in range(k):
            study.enqueue_trial(
                dict(s.params),
                user_attrs={CONFIRMS: s.number, "seed": confirmation_seed(spec.seed, s.number, done[s.number] + i)},
            )
    return dataclasses.replace(spec, pruner=PrunerSpec("none")), k * len(sources)
