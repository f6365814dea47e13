"""Is the best trial lucky? ``python -m hpo.run --study NAME --confirm K`` retrains the top
configurations with K new seeds each, as ordinary trials queued in the study; each records the
trial it confirms (user attr ``confirms``). ``summarise`` reads them back for the report.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.config import PrunerSpec, StudySpec
from hpo import schema
from hpo.errors import HpoError
from hpo.space import trial_seed

CONFIRMS = "confirms"  # user attr: the number of the trial whose configuration this trial retrains
TOP = 3  # configurations confirmed
SEED_STRIDE = 1_000_000  # confirmation seeds sit this far from trial seeds (numbers below it never meet them)


def confirmation_seed(study_seed: int, source: int, k: int) -> int:
    """The k-th confirmation of trial ``source``: never a trial's own seed, never another confirmation's."""
    return (trial_seed(study_seed, source) + SEED_STRIDE * (k + 1)) % 2**31


def _finite(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and t.values is not None and all(math.isfinite(v) for v in t.values)


def top_sources(trials: list[FrozenTrial], maximize: bool, top: int = TOP) -> list[FrozenTrial]:
    """The best searched trials (confirmations are not candidates), one per distinct configuration."""
    ranked = sorted((t for t in trials if _finite(t) and CONFIRMS not in t.user_attrs),
                    key=lambda t: ((-1 if maximize else 1) * t.values[0], t.number))
    out, seen = [], set()
    for t in ranked:
        key = repr(sorted(t.params.items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
        if len(out) == top:
            break
    return out


def require_store(url: str, spec: StudySpec) -> None:
    """Confirmations retrain what a search found: with no store yet, say so before one is created."""
    if schema.check(url, create=True):
        raise HpoError(f"--confirm: no study {spec.name!r} in the store yet; run the search first")


def prepare(storage, spec: StudySpec, k: int, top: int = TOP) -> tuple[StudySpec, int]:
    """Queue K new-seed retrainings of each top configuration; the returned spec runs them unpruned
    (a confirmation's full value is the point) and the count is how many trials to run."""
    if k < 1:
        raise HpoError(f"--confirm must be >= 1 seeds per configuration, got {k}")
    if len(spec.objective.metrics) > 1:
        raise HpoError("--confirm needs a single-objective study (a Pareto front has no one best configuration)")
    if spec.name not in optuna.get_all_study_names(storage):
        raise HpoError(f"--confirm: no study {spec.name!r} in the store yet; run the search first")
    study = optuna.load_study(study_name=spec.name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    sources = top_sources(trials, study.direction == optuna.study.StudyDirection.MAXIMIZE, top)
    if not sources:
        raise HpoError(f"--confirm: study {spec.name!r} has no complete trial to confirm yet")
    done = {s.number: sum(t.user_attrs.get(CONFIRMS) == s.number for t in trials) for s in sources}
    for s in sources:
        for i in range(k):
            study.enqueue_trial(dict(s.params), user_attrs={CONFIRMS: s.number,
                                                             "seed": confirmation_seed(spec.seed, s.number, done[s.number] + i)})
    return dataclasses.replace(spec, pruner=PrunerSpec("none")), k * len(sources)


@dataclass(frozen=True)
class Confirmed:
    source: int  # the searched trial
    params: dict
    values: tuple[float, ...]  # the source's value and every complete confirmation's
    stopped: int  # confirmations that did not complete (diverged, failed...)
    mean: float
    sd: float | None


@dataclass(frozen=True)
class Confirmations:
    configs: tuple[Confirmed, ...]  # best mean first
    spread: float | None  # pooled seed-to-seed standard deviation
    sentence: str


def summarise(trials: list[FrozenTrial], maximize: bool, fmt) -> Confirmations | None:
    """Mean ± sd per confirmed configuration, the winner by its mean, and whether the seeds tell them apart."""
    by_source: dict[int, list[FrozenTrial]] = {}
    for t in trials:
        if isinstance(t.user_attrs.get(CONFIRMS), int):
            by_source.setdefault(t.user_attrs[CONFIRMS], []).append(t)
    if not by_source:
        return None
    numbers = {t.number: t for t in trials}
    configs = []
    for source, confirms in by_source.items():
        src = numbers.get(source)
        done = [t for t in confirms if _finite(t)]
        if not done:  # still queued or running: nothing to say yet
            continue
        runs = ([src] if src is not None and _finite(src) else []) + done
        values = tuple(float(t.values[0]) for t in runs)
        configs.append(Confirmed(source, dict(confirms[0].params), values,
                                 sum(t.state.is_finished() and not _finite(t) for t in confirms),
                                 float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None))
    if not configs:
        return None
    configs.sort(key=lambda c: ((-1 if maximize else 1) * c.mean, c.source))
    squares = [(len(c.values) - 1, c.sd ** 2) for c in configs if c.sd is not None]
    dof = sum(d for d, _ in squares)
    spread = math.sqrt(sum(d * v for d, v in squares) / dof) if dof else None
    return Confirmations(tuple(configs), spread, _sentence(configs, spread, fmt))


def _sentence(configs: list[Confirmed], spread: float | None, fmt) -> str:
    each = "; ".join(f"#{c.source} {fmt(c.mean)}" + (f" ± {c.sd:.2f}" if c.sd is not None else "") + f" (n {len(c.values)})"
                     for c in configs)
    text = f"Retrained with new seeds, trial #{configs[0].source}'s configuration wins by its mean: {each}."
    if len(configs) > 1 and spread is not None:
        gap = abs(configs[0].mean - configs[1].mean)
        # the gap between two means of n runs each varies by about spread * sqrt(2/n)
        n = min(len(configs[0].values), len(configs[1].values))
        noise = spread * math.sqrt(2 / n)
        verdict = ("larger than seed noise explains" if gap > 2 * noise
                   else "within what the seed-to-seed spread explains: the two are not told apart")
        text += (f" The seed-to-seed spread is sd {spread:.2f} points; the gap to #{configs[1].source} "
                 f"({gap:.2f} points) is {verdict}.")
    return text
