"""Is the best trial lucky? The confirmations that ``python -m hpo.run --confirm K`` queued
(hpo.search.confirm), read back: mean ± sd per configuration, and whether the seeds tell them apart."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from hpo.errors import counted
from hpo.records import CONFIRMS, finite, pooled_sd, recipe, recipe_changes


@dataclass(frozen=True)
class Confirmed:
    source: int  # the searched trial
    params: dict
    values: tuple[float, ...]  # the source's value and every complete confirmation's of the same recipe
    stopped: int  # confirmations that did not complete (diverged, collapsed, failed...)
    mean: float
    sd: float | None
    other_recipe: tuple[str, ...] = ()  # how confirmations under another recipe differed; never pooled

    @property
    def retrained(self) -> int:
        """Confirmations that finished, whatever their end, under the source's recipe."""
        return len(self.values) - 1 + self.stopped


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
        if src is None or not finite(src):
            continue
        # A run of another recipe (a changed study file, an older hpo that let --set through) is
        # another experiment: listed, never pooled into this configuration's mean.
        other = [t for t in confirms if recipe(t) is not None and recipe(src) is not None and recipe(t) != recipe(src)]
        same = [t for t in confirms if t not in other and t.state.is_finished()]
        if not same and not other:  # still queued or running: nothing to say yet
            continue
        values = tuple(float(t.values[0]) for t in [src, *(t for t in same if finite(t))])
        differences = sorted({c for t in other for c in recipe_changes(recipe(src), recipe(t))})
        configs.append(
            Confirmed(
                source,
                dict(src.params),
                values,
                sum(not finite(t) for t in same),
                float(np.mean(values)),
                float(np.std(values, ddof=1)) if len(values) > 1 else None,
                tuple(differences),
            )
        )
    if not configs:
        return None
    # A configuration that collapsed under a new seed is not a winner, whatever the mean of the rest.
    configs.sort(key=lambda c: (c.stopped > 0, (-1 if maximize else 1) * c.mean, c.source))
    spread = pooled_sd([c.values for c in configs])
    return Confirmations(tuple(configs), spread, _sentence(configs, spread, fmt))


def _sentence(configs: list[Confirmed], spread: float | None, fmt) -> str:
    each = "; ".join(
        f"#{c.source} {fmt(c.mean)}" + (f" ± {c.sd:.2f}" if c.sd is not None else "") + f" (n {len(c.values)})"
        for c in configs
    )
    text = f"Retrained with new seeds, trial #{configs[0].source}'s configuration wins by its mean: {each}."
    if configs[0].stopped:
        text = f"Retrained with new seeds, every configuration collapsed at least once: {each}."
    for c in configs:
        if c.stopped:
            text += f" #{c.source} collapsed or diverged in {c.stopped} of {counted(c.retrained, 'retraining')}" + (
                ": its mean is the search's own value alone." if len(c.values) == 1 else "."
            )
        if c.other_recipe:
            text += f" Retrainings of #{c.source} under another recipe ({'; '.join(c.other_recipe)}) are not pooled."
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
