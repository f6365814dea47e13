"""What a trial records beside its value (docs/records.md): the user-attr names every layer reads,
and how to read them."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

CONFIRMS = "confirms"  # user attr: the number of the trial whose configuration this trial retrains
STATUS, REASON = "status", "reason"  # user attrs: how a trial ended, in a word and in a sentence

# The one home of trial states as hpo writes them, wherever it prints or reports them.
STATE_WORDS = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
ENDED_WORDS = ("complete", "pruned", "failed")  # the states a trial ends in, in the order they are counted
# Finished: complete or pruned. What --until counts, and what "N trials finished" means everywhere;
# a failed trial is retried (lost, interrupted) or is a mistake to look at, never a result.
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WORKER_ATTR = "worker"  # user attr: the host:pid that runs (or ran, or lost) the trial
CHECKPOINT_OF = "checkpoint_of"  # user attr: whose checkpoint file this trial (and its retries) writes
RETRY_HISTORY = "retry_history"  # system attr: the trials a heartbeat retry retries (Optuna's callback)
# Under a window (hpo.search.window): the trial's logical index, which a retry inherits; the number
# of the trial that took the index (a retry's differs from its own); seconds it waited for the window.
INDEX, INDEX_OF, WINDOW_WAIT = "index", "index_of", "window_wait_s"


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


def state_word(t: FrozenTrial) -> str:
    return STATE_WORDS.get(t.state, t.state.name.lower())


def count_states(trials: Iterable[FrozenTrial]) -> Counter:
    """Trials by state word: ``Counter({"complete": 3, "pruned": 1})``."""
    return Counter(state_word(t) for t in trials)


def counts_text(counts: Counter, words: Sequence[str] = ENDED_WORDS) -> str:
    """``3 complete, 1 pruned`` (states with no trial left out)."""
    return ", ".join(f"{counts[w]} {w}" for w in words if counts[w])


def finished(trials: Iterable[FrozenTrial]) -> int:
    """How many are finished (complete or pruned: ``FINISHED``)."""
    return sum(t.state in FINISHED for t in trials)


def status(t: FrozenTrial) -> str:
    """The status the objective recorded ("ok", "pruned", "diverged", "collapsed", "interrupted",
    "failed", "surplus"), "" where none was (a trial lost with its worker)."""
    return str(t.user_attrs.get(STATUS) or "")


def ending(t: FrozenTrial) -> str:
    """How a trial ended, in the one word a reader is shown: "complete" for a complete one, its
    status for one stopped early ("pruned", "diverged", "collapsed", "interrupted"...), else its state's word."""
    if t.state == TrialState.COMPLETE:
        return "complete"
    return status(t) or state_word(t)


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


def retried(trials: Iterable[FrozenTrial]) -> set[int]:
    """The failed trials whose work a later trial goes on with: an interrupted trial requeued with
    its checkpoint (same ``checkpoint_of``) or its window index (same ``index``), a lost one retried
    by the heartbeat callback. A count of trials, epochs or values takes the retry alone, so nothing
    is counted twice."""
    trials = list(trials)
    out = {n for t in trials for n in t.system_attrs.get(RETRY_HISTORY, ())}
    for key in (CHECKPOINT_OF, INDEX):  # the attrs a retry inherits from the trial it retries
        last: dict[int, int] = {}
        for t in trials:
            if isinstance(t.user_attrs.get(key), int):
                last[t.user_attrs[key]] = max(last.get(t.user_attrs[key], -1), t.number)
        out |= {
            t.number for t in trials if t.state == TrialState.FAIL and last.get(t.user_attrs.get(key), -1) > t.number
        }
    return out


def own_epochs(t: FrozenTrial, default: int | None = None) -> int | None:
    """The epochs a trial was given: its recorded config's (a searched ``epochs`` included), else ``default``."""
    config = t.user_attrs.get("config")
    epochs = config.get("train", {}).get("epochs") if isinstance(config, dict) else None
    return epochs if isinstance(epochs, int) and epochs > 0 else default


def epoch_values(t: FrozenTrial) -> dict[int, float]:
    """A trial's validation accuracy epoch by epoch: what it reported to the pruner or, for a
    multi-objective trial (Optuna lets it report nothing), its recorded curve."""
    if t.intermediate_values:
        return {int(e): float(v) for e, v in t.intermediate_values.items()}
    curve = t.user_attrs.get("curve")
    return {
        int(c["epoch"]): float(c["val_acc"])
        for c in (curve if isinstance(curve, list) else ())
        if isinstance(c, dict) and isinstance(c.get("epoch"), int) and isinstance(c.get("val_acc"), (int, float))
    }
