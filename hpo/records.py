"""What a trial records beside its value (docs/records.md): the user-attr names every layer reads,
and how to read them."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

CONFIRMS = "confirms"  # user attr: the number of the trial whose configuration this trial retrains
WORKER_ATTR = "worker"  # user attr: the host:pid that runs (or ran, or lost) the trial


def recipe(t: FrozenTrial) -> dict | None:
    """What a trial trained with, but for its seed (the recorded config, hpo.search.objective):
    runs are comparable, and may be pooled, only where this is equal. None: not recorded."""
    config = t.user_attrs.get("config")
    return {k: v for k, v in config.items() if k != "seed"} if isinstance(config, dict) else None


def recipe_changes(old: dict, new: dict) -> list[str]:
    """ "train.epochs 2 -> 3", one per setting that differs between two recipes."""
    out = []
    for section in sorted(old.keys() | new.keys()):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{section}.{k} {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(a.keys() | b.keys())
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            out.append(f"{section} {a!r} -> {b!r}")
    return out


def finite(t: FrozenTrial) -> bool:
    """A complete trial whose every value is a number (a diverged value is not)."""
    return t.state == TrialState.COMPLETE and t.values is not None and all(math.isfinite(v) for v in t.values)


def ranked(trials: Iterable[FrozenTrial], maximize: bool, index: int = 0) -> list[FrozenTrial]:
    """Best first by objective ``index``. Equal values keep the order given (a study's trials come
    by number), so the best of tied trials is the first of them."""
    sign = -1.0 if maximize else 1.0
    return sorted(trials, key=lambda t: sign * t.values[index])


def pooled_sd(groups: Iterable[Sequence[float]]) -> float | None:
    """The pooled standard deviation of groups of values (each the same configuration's runs with
    other seeds): the seed-to-seed noise. None when no group holds two values."""
    repeated = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in repeated)
    if not dof:
        return None
    return float(math.sqrt(sum(np.var(g, ddof=1) * (len(g) - 1) for g in repeated) / dof))
