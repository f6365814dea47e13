"""Per-parameter effects with their uncertainty, as plain data and words.

Each group (a choice, a value or a bin) gets n, its mean and a 90% bootstrap interval. A parameter
is said to matter only when its groups differ more than shuffled labels make them differ
(a permutation test), after taking out what the other parameters explain (a random forest on them,
out-of-bag): in a joint search a raw group mean mixes in whatever the sampler paired it with.
Where they matter, the words follow the partial dependence of a random forest fitted on all the
parameters, and say so when the raw means point elsewhere.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestRegressor
from sklearn.inspection import partial_dependence

from hpo.analysis.groups import ALPHA, MIN_GROUP, Group, display, finite, group, merge, permutation_p
from hpo.errors import counted

MIN_TRIALS = 8  # below this a study says its evidence is thin before anything else
TREES = 60


@dataclass(frozen=True)
class Effect:
    name: str
    kind: str  # "choice", "value", "range"
    log: bool
    trials: int
    groups: tuple[Group, ...]
    p_value: float | None  # None: not tested (too few trials)
    clear: bool
    claim: str  # what the trials say, without the parameter's name
    raw_trend: str = ""  # numeric: "rises", "falls" or "" (neither) across the groups, by raw mean
    pd_trend: str = ""  # the same by partial dependence
    disagreement: str = ""
    best: Group | None = None  # the row the words call best: a group, or the merged best region
    rest: Group | None = None  # every other trial the comparison used, merged
    merged: tuple[Group, ...] = ()  # the merged rows the words state (best region, below it, above it, the rest)

    @property
    def sentence(self) -> str:
        return f"{display(self.name)}: {self.claim}."

    @property
    def gain(self) -> float | None:
        """The best row's mean less the rest's (points of the metric); None where not both are known."""
        if self.best is None or self.rest is None or self.best.mean is None or self.rest.mean is None:
            return None
        return self.best.mean - self.rest.mean


def encode(dist, value) -> float:
    """A parameter value as the surrogate sees it: log10 for log ranges, the index of a choice."""
    if value is None:
        return math.nan
    if isinstance(dist, CategoricalDistribution):
        return float(dist.choices.index(value)) if value in dist.choices else math.nan
    return math.log10(value) if getattr(dist, "log", False) and value > 0 else float(value)


def _forest(seed: int, oob: bool = False) -> RandomForestRegressor:
    return RandomForestRegressor(n_estimators=TREES, min_samples_leaf=2, random_state=seed, n_jobs=1, oob_score=oob)


def residuals(X: np.ndarray, y: np.ndarray, j: int, seed: int) -> np.ndarray:
    """What the other parameters leave unexplained (out-of-bag, so the forest cannot absorb noise)."""
    others = np.delete(X, j, axis=1)
    if others.shape[1] == 0 or len(y) < 2 * MIN_GROUP:
        return y - y.mean()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rf = _forest(seed, oob=True).fit(others, y)
    pred = np.where(np.isfinite(rf.oob_prediction_), rf.oob_prediction_, y.mean())
    return y - pred


def _trend(values: list[float | None]) -> str:
    """ "rises"/"falls" when the bands' values move one way across the range (rank correlation 0.8 or more)."""
    v = [x for x in values if x is not None]
    if len(v) < 3:
        return ""
    rho = spearmanr(np.arange(len(v)), v).statistic
    return "rises" if rho >= 0.8 else "falls" if rho <= -0.8 else ""


def analyse(
    params: list[dict],
    values: list[float],
    space: dict,
    maximize: bool,
    fmt,
    what: str,
    seed: int = 0,
    ended: list[str] | None = None,
    tests: list | None = None,
) -> dict[str, Effect]:
    """Effects of every parameter in ``space`` on ``values`` (one per trial, with its ``params``).
    ``fmt`` formats a value (88.1%); ``what`` names the metric in the words ("val acc"); ``ended``
    says how each trial ended (complete, pruned, diverged...), for the words about the worse regions;
    ``tests`` holds each trial's test accuracy (None where not recorded), for the tables."""
    names = list(space)
    y = np.asarray(values, dtype=float)
    test = finite(tests) if tests is not None else None
    X = np.array([[encode(space[n], p.get(n)) for n in names] for p in params], dtype=float).reshape(
        len(params), len(names)
    )
    surrogate = None
    if len(names) > 1 and len(y) >= MIN_TRIALS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            surrogate = _forest(seed).fit(X, y)
    out = {}
    for j, name in enumerate(names):
        rng = np.random.default_rng([seed, j])
        kind, index, groups = group(space[name], [p.get(name) for p in params], y, maximize, rng, test, ended)
        if surrogate is not None:
            at = [g for g, b in enumerate(groups) if b.n]
            grid = np.array([float(np.median(X[index == g, j])) for g in at])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pd = partial_dependence(surrogate, X, [j], custom_values={j: grid}, method="brute")["average"][0]
            order = np.argsort(grid, kind="stable")
            groups = list(groups)
            for g, v in zip(np.asarray(at)[order], pd[order], strict=False):
                groups[g] = dataclasses.replace(groups[g], pd=float(v))
            groups = tuple(groups)
        ctx = _Context(
            name, kind, bool(getattr(space[name], "log", False)), groups, index, X, y, j, maximize, fmt, what
        )
        out[name] = _effect(ctx, rng, seed, test, ended)
    return out


@dataclass(frozen=True)
class _Context:
    name: str
    kind: str
    log: bool
    groups: tuple[Group, ...]
    index: np.ndarray
    X: np.ndarray
    y: np.ndarray
    j: int
    maximize: bool
    fmt: Any
    what: str

    @property
    def sign(self) -> float:
        return 1.0 if self.maximize else -1.0


def _effect(c: _Context, rng, seed, test, ended) -> Effect:
    bands, index, y, sign, fmt, kind = c.groups, c.index, c.y, c.sign, c.fmt, c.kind
    name = display(c.name)  # as the words say it
    n = int((index >= 0).sum())
    make = lambda p, clear, claim, **kw: Effect(c.name, kind, c.log, n, bands, p, clear, claim, **kw)  # noqa: E731
    if n < MIN_TRIALS:
        return make(None, False, f"too few trials ({n}) to tell an effect from noise")
    eligible = [g for g, b in enumerate(bands) if b.n >= MIN_GROUP]
    unit = {"choice": "choices", "value": "values", "range": "ranges"}[kind]
    if len(eligible) < 2:
        return make(None, False, f"too few trials to compare its {unit} (fewer than two have enough trials)")
    rows = np.isin(index, eligible)
    r = residuals(c.X, y, c.j, seed)
    remap = {g: i for i, g in enumerate(eligible)}
    labels = np.array([remap[g] for g in index[rows]])
    p = permutation_p(labels, r[rows], rng)
    means = [bands[g].mean for g in eligible]
    has_pd = bands[eligible[0]].pd is not None
    numeric = kind != "choice"
    raw_trend = _trend(means) if numeric else ""
    pd_trend = _trend([bands[g].pd for g in eligible]) if numeric and has_pd else ""
    low, high = min(eligible, key=lambda g: bands[g].mean), max(eligible, key=lambda g: bands[g].mean)
    if p >= ALPHA:
        claim = (
            f"no clear effect (means {fmt(bands[low].mean)} at {bands[low].label} to {fmt(bands[high].mean)} "
            f"at {bands[high].label}, p = {p:.3f})"
        )
        note = ""
        if has_pd and permutation_p(labels, y[rows] - y[rows].mean(), rng) < ALPHA:
            note = (
                f"raw means and partial dependence disagree: the raw means differ across {name}, but not once the "
                "other parameters are accounted for: the difference comes from parameters the sampler paired with it"
            )
            claim += f"; {note}"
        return make(p, False, claim, raw_trend=raw_trend, pd_trend=pd_trend, disagreement=note)
    score = (lambda g: sign * bands[g].pd) if has_pd else (lambda g: sign * bands[g].mean)  # noqa: E731
    by_raw = max(eligible, key=lambda g: sign * bands[g].mean)
    top = max(eligible, key=score)
    worst = bands[min(eligible, key=score)]
    near = _near(bands, eligible, top, sign)
    if kind == "range":
        if has_pd:  # neighbours the surrogate puts nearer the top than the bottom
            mid = (bands[top].pd + worst.pd) / 2
            near = [g for g in near if sign * bands[g].pd >= sign * mid]
        span = _span(near, top)
    else:
        span = [top]
    merge_ = lambda label, members: merge(label, members, index, y, c.maximize, rng, test, ended)  # noqa: E731
    seen = [g for g, b in enumerate(bands) if b.n]
    best = bands[top] if len(span) == 1 else merge_(f"best region {_ends(bands, span)}", span)
    rest = merge_("the rest", [g for g in seen if g not in span])
    merged = [best] if len(span) > 1 else []
    sides = []
    if kind == "range":
        for side, members in (
            ("below", [g for g in seen if g < span[0]]),
            ("above", [g for g in seen if g > span[-1]]),
        ):
            if members:
                sides.append((side, merge_(f"{side} it {_ends(bands, members)}", members)))
        merged += [g for _, g in sides]
    merged.append(rest)
    where = _where(kind, bands[span[0]], bands[span[-1]], bands)
    if has_pd:  # joint search: the words follow the partial dependence, the raw numbers stand beside it
        b = bands[top]
        trend = f"; {c.what} {pd_trend} with {name}" if pd_trend else ""
        claim = (
            f"best {where} by partial dependence ({fmt(b.pd)} at {b.label} vs {fmt(worst.pd)} at {worst.label}; "
            f"raw means {fmt(best.mean)} ({counted(best.n, 'trial')}) there and "
            f"{fmt(worst.mean)} ({counted(worst.n, 'trial')}) at {worst.label}){trend}"
        )
    elif kind == "range":
        interval = f"90% interval {fmt(best.lo)}–{fmt(best.hi)}"
        claim = f"best {where} (mean {c.what} {fmt(best.mean)}, {interval}, {counted(best.n, 'trial')})"
    else:
        ties = [bands[g].label for g in near if g != top]
        claim = (
            f"best {where} (mean {c.what} {fmt(best.mean)}, 90% interval {fmt(best.lo)}–{fmt(best.hi)}, "
            f"{counted(best.n, 'trial')}"
            + (f"; not told apart from {', '.join(ties)}" if ties else "")
            + f"); worst at {worst.label}: {fmt(worst.mean)} ({fmt(worst.lo)}–{fmt(worst.hi)}, "
            f"{counted(worst.n, 'trial')})"
        )
    claim += "".join(f"; {side} it: {_outcome(g, fmt)}" for side, g in sides)
    claim += f", p = {p:.3f}"
    disagreement = ""
    clearly_better = (lambda a, b: bands[a].lo > bands[b].hi) if sign > 0 else (lambda a, b: bands[a].hi < bands[b].lo)  # noqa: E731
    if has_pd and (
        (raw_trend and pd_trend and raw_trend != pd_trend) or (by_raw != top and clearly_better(by_raw, top))
    ):
        raw = (
            f"rise with {name}"
            if raw_trend == "rises"
            else f"fall with {name}"
            if raw_trend == "falls"
            else f"favour {bands[by_raw].label}"
        )
        pd = f"{pd_trend}" if pd_trend else f"favours {bands[top].label}"
        disagreement = (
            f"raw means and partial dependence disagree: the raw means {raw}, the partial dependence "
            f"(a random forest on all parameters) {pd}; the raw means mix in the parameters the sampler paired with it"
        )
        claim += f". {disagreement[0].upper()}{disagreement[1:]}"
    return make(
        p,
        True,
        claim,
        raw_trend=raw_trend,
        pd_trend=pd_trend,
        disagreement=disagreement,
        best=best,
        rest=rest,
        merged=tuple(merged),
    )


def _span(near: list[int], top: int) -> list[int]:
    """The top group and its contiguous neighbours among ``near``."""
    span = [top]
    for step in (-1, 1):
        g = top + step
        while g in near:
            span.append(g)
            g += step
    return sorted(span)


def _near(bands, eligible, top, sign) -> list[int]:
    """Groups whose 90% interval reaches the top group's: the trials cannot tell them from it."""
    return [g for g in eligible if (bands[g].hi >= bands[top].lo if sign > 0 else bands[g].lo <= bands[top].hi)]


def _ends(bands: tuple[Group, ...], members: list[int]) -> str:
    """The span of range groups, as their labels write its ends: "0.0054–0.16"."""
    return f"{bands[members[0]].label.split('–')[0]}–{bands[members[-1]].label.split('–')[-1]}"


def _outcome(g: Group, fmt) -> str:
    """A merged row in words: its mean, trials and how they ended."""
    how = dict(g.ended)
    ends = ", ".join(f"{n} {e}" for e, n in g.ended) if set(how) - {"complete"} else ""
    few = "; too few trials" if g.n < MIN_GROUP else ""
    return f"{fmt(g.mean)} ({counted(g.n, 'trial')}" + (f": {ends}" if ends else "") + few + ")"


def _where(kind: str, first: Group, last: Group, bands: tuple[Group, ...]) -> str:
    if kind != "range":
        return f"at {first.label}"
    low, high = first.label.split("–")[0], last.label.split("–")[-1]
    if first is bands[0] and last is bands[-1]:
        return "across the range"
    if first is bands[0]:
        return f"below {high}"
    if last is bands[-1]:
        return f"above {low}"
    return f"between {low} and {high}"
