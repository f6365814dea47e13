"""What a trial records beside its value (docs/records.md): the user-attr names every layer reads,
and how to read them."""

from __future__ import annotations

import math

from optuna.trial import FrozenTrial, TrialState

CONFIRMS = "confirms"  # user attr: the number of the trial whose configuration this trial retrains


def finite(t: FrozenTrial) -> bool:
    """A complete trial whose every value is a number (a diverged value is not)."""
    return t.state == TrialState.COMPLETE and t.values is not None and all(math.isfinite(v) for v in t.values)
