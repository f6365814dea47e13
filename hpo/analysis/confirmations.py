"""Is the best trial lucky? The confirmations that ``python -m hpo.run --confirm K`` queued
(hpo.search.confirm), read back: mean ± sd per configuration, and whether the seeds tell them apart."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from hpo.records import CONFIRMS, finite, pooled_sd


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
        done = [t for t in confirms if finite(t)]
        if not done:  # still queued or running: nothing to say yet
            continue
        runs = ([src] if src is not None and finite(src) else []) + done
        values = tuple(float(t.values[0]) for t in runs)
        configs.append(
            Confirmed(
                source,
                dict(confirms[0].params),
                values,
                sum(t.state.is_finished() and not finite(t) for t in confirms),
                float(np.mean(values)),
                float(np.std(values, ddof=1)) if len(values) > 1 else None,
            )
        )
    if not configs:
        return None
    configs.sort(key=lambda c: ((-1 if maximize else 1) * c.mean, c.source))
    spread = pooled_sd([c.values for c in configs])
    return Confirmations(tuple(configs), spread, _sentence(configs, spread, fmt))


def _sentence(configs: list[Confirmed], spread: float | None, fmt) -> str:
    each = "; ".join(
        f"#{c.source} {fmt(c.mean)}" + (f" ± {c.sd:.2f}" if c.sd is not None else "") + f" (n {len(c.values)})"
        for c in configs
    )
    text = f"Retrained with new seeds, trial #{configs[0].source}'s configuration wins by its mean: {each}."
    if len(configs) > 1 and spread is not None:
        gap = abs(configs[0].mean - configs[1].mean)
        # the gap between two means of n runs each varies by about spread * sqrt(2/n)
        n = min(len(configs[0].values), len(configs[1].values))
        noise = spread * math.sqrt(2 / n)
        verdict = (
            "larger than seed noise explains"
            if gap > 2 * noise
            else "within what the seed-to-seed spread explains: the two are not told apart"
        )
        text += (
            f" The seed-to-seed spread is sd {spread:.2f} points; the gap to #{configs[1].source} "
            f"({gap:.2f} points) is {verdict}."
        )
    return text
