"""Stop adding trials once the study has stopped improving: an Optuna callback (``--patience``).

"Improving" is on the first objective: the best value now against the best before the last
``patience`` finished (complete or pruned) trials. The smallest gain that counts is ``min_delta``;
by default the seed-to-seed noise, measured where trials repeat the same parameters with other
seeds (confirmations), else 0.1 points. The callback reads the store, so every worker sharing a
study sees the same plateau and stops after its own next trial.
"""

from __future__ import annotations

import json
import math

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.records import pooled_sd, ranked

DEFAULT_MIN_DELTA = 0.1  # points of accuracy, where the study has no repeated trials to measure noise


def seed_noise(trials: list[FrozenTrial]) -> float | None:
    """The pooled standard deviation of the first objective over trials that share their parameters
    (the same configuration with other seeds); None when no configuration was run twice."""
    groups: dict[str, list[float]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0]):
            groups.setdefault(json.dumps(t.params, sort_keys=True, default=str), []).append(t.values[0])
    return pooled_sd(groups.values())


def _best(trials: list[FrozenTrial], direction: StudyDirection) -> FrozenTrial | None:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values and math.isfinite(t.values[0])]
    return ranked(done, direction == StudyDirection.MAXIMIZE)[0] if done else None


class Plateau:
    """``study.optimize(..., callbacks=[Plateau(10)])``: ``reason`` says why it stopped the study."""

    def __init__(self, patience: int, min_delta: float | None = None):
        self.patience, self.min_delta, self.reason = patience, min_delta, ""

    def check(self, study: optuna.Study) -> str:
        """Why the study has plateaued, or "" while it is still improving (or too young to tell)."""
        if self.patience <= 0:
            return ""
        trials = study.get_trials(deepcopy=False)
        finished = sorted(
            (t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete),
            key=lambda t: (t.datetime_complete, t.number),
        )
        if len(finished) <= self.patience:
            return ""
        direction = study.directions[0]
        before, now = _best(finished[: -self.patience], direction), _best(finished, direction)
        if before is None:
            return ""
        noise = seed_noise(trials)
        delta = self.min_delta if self.min_delta is not None else (noise if noise is not None else DEFAULT_MIN_DELTA)
        gain = abs(now.values[0] - before.values[0])
        if gain > delta:
            return ""
        where = (
            "--min-delta"
            if self.min_delta is not None
            else "the seed-to-seed noise"
            if noise is not None
            else "the default; no trial was repeated to measure noise"
        )
        return (
            f"stopped on a plateau: the best value ({now.values[0]:.4g}, trial #{now.number}) has improved by "
            f"{gain:.3g} in the last {self.patience} finished trials, not more than min_delta {delta:.3g} ({where})"
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = self.check(study)
        if reason:
            self.reason = reason
            study.stop()
