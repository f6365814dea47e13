"""When to stop: how much the last trials of a finished study improved its best, against the
seed-to-seed noise, in one sentence a user can act on. Plain data in, plain data out.

The window is the last ``max(10, a third of the study)`` trials. Improvement is the best of the
whole study less the best before the window (in the direction's sense), so it is never negative.
At or below the noise (0.1 where no repeated trial measured it, as ``[stop] min_delta``) more of
the same search is unlikely to help; above it, it may.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MIN_WINDOW = 10
MIN_BEFORE = 5  # trials before the window: fewer, and "the best before it" says little
DEFAULT_NOISE = 0.1  # what `[stop] min_delta` takes when no trial was repeated


@dataclass(frozen=True)
class StoppingAdvice:
    trials: int  # trials in the study, with and without a value
    window: int  # the last trials judged (0: too few to say)
    improvement: float | None  # how much they improved the best (>= 0); None: too few to say
    noise: float | None  # the seed-to-seed noise given, None when unknown
    threshold: float  # the improvement at or below which more trials are unlikely to help
    more_may_help: bool | None  # None: too few to say
    sentence: str


def window_size(trials: int) -> int:
    return max(MIN_WINDOW, math.ceil(trials / 3))


def _best(values: Sequence[float | None], sign: float) -> float | None:
    finite = [sign * v for v in values if v is not None and math.isfinite(v)]
    return max(finite) if finite else None


def _points(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x else "0"


def last_trials_gain(
    values: Sequence[float | None], direction: str = "maximize", noise: float | None = None
) -> StoppingAdvice:
    """``values``: each trial's value in trial order, None (or NaN) for a trial without one
    (pruned, failed); ``direction``: "maximize" or "minimize"; ``noise``: the seed-to-seed
    standard deviation in the values' unit, where repeated trials measured it."""
    if direction not in ("maximize", "minimize"):
        raise ValueError(f"direction must be 'maximize' or 'minimize', not {direction!r}")
    if noise is not None and (not math.isfinite(noise) or noise < 0):
        raise ValueError(f"noise must be a finite number >= 0 or None, not {noise!r}")
    sign = 1.0 if direction == "maximize" else -1.0
    n = len(values)
    threshold = DEFAULT_NOISE if noise is None else noise
    window = window_size(n)
    before = _best(values[: n - window], sign) if n - window >= MIN_BEFORE else None
    if before is None:
        return StoppingAdvice(
            n, 0, None, noise, threshold, None, f"too few trials ({n}) to say whether more would help"
        )
    gain = round(_best(values, sign) - before, 9)  # 89.9 - 89.8 is 0.1, not 0.1000000000000085
    more = gain > threshold
    said_noise = f"seed-to-seed noise {_points(noise)}" if noise is not None else f"noise unknown, {threshold} assumed"
    what = f"improved the best by {_points(gain)} points" if gain > 0 else "did not improve the best"
    verdict = "more trials may still help" if more else "more trials are unlikely to help"
    return StoppingAdvice(
        n, window, gain, noise, threshold, more, f"the last {window} of {n} trials {what} ({said_noise}): {verdict}"
    )
