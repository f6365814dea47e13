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
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, IntDistribution
from scipy.stats import spearmanr
from sklearn.ensemble import RandomForestRegressor
from sklearn.inspection import partial_dependence

LEVEL = 0.90  # the intervals' coverage
BOOTSTRAP = 1000
PERMUTATIONS = 1000
ALPHA = 0.01  # a difference is claimed only when shuffled labels match it this rarely
MIN_GROUP = 3  # a smaller group is shown but never makes a finding
MIN_TRIALS = 8  # below this a study says its evidence is thin before anything else
MAX_VALUES = 6  # a numeric parameter with at most this many values gets a row per value
TREES = 60


@dataclass(frozen=True)
class Band:
    """One group of trials: a choice, a value, or a bin [low, high)."""

    label: str
    n: int
    mean: float | None
    lo: float | None  # the mean's 90% interval
    hi: float | None
    pd: float | None = None  # partial dependence of the surrogate there (joint searches)
    value: Any = None
    low: float | None = None
    high: float | None = None
    ended: tuple[tuple[str, int], ...] = ()  # how its trials ended: (("complete", 3), ("pruned", 5))


@dataclass(frozen=True)
class Effect:
    name: str
    kind: str  # "choice", "value", "range"
    log: bool
    trials: int
    bands: tuple[Band, ...]
    p_value: float | None  # None: not tested (too few trials)
    clear: bool
    claim: str  # what the trials say, without the parameter's name
    raw_trend: str = ""  # numeric: "rises", "falls" or "" (neither) across the bands, by raw mean
    pd_trend: str = ""  # the same by partial dependence
    disagreement: str = ""

    @property
    def sentence(self) -> str:
        return f"{self.name}: {self.claim}."


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    if len(values) < 2:
        return float(values[0]), float(values[0])
    means = rng.choice(values, size=(BOOTSTRAP, len(values)), replace=True).mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def encode(dist, value) -> float:
    """A parameter value as the surrogate sees it: log10 for log ranges, the index of a choice."""
    if value is None:
        return math.nan
    if isinstance(dist, CategoricalDistribution):
        return float(dist.choices.index(value)) if value in dist.choices else math.nan
    return math.log10(value) if getattr(dist, "log", False) and value > 0 else float(value)


def _edge(x: float) -> str:
    return f"{x:.2g}" if abs(x) < 1 else f"{x:.3g}"


def _label(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def bins(dist, xs: list) -> tuple[str, list[int], list[dict]]:
    """Each value's group index (-1: parameter not set), and the groups: choices, values or ~2-5 bins."""
    present = [x for x in xs if x is not None]
    if isinstance(dist, CategoricalDistribution):
        index = [dist.choices.index(x) if x is not None and x in dist.choices else -1 for x in xs]
        return "choice", index, [{"label": _label(c), "value": c} for c in dist.choices]
    if not present:  # a conditional parameter that none of these trials has (another branch ran)
        return "range", [-1] * len(xs), []
    distinct = sorted(set(float(x) for x in present))
    if len(distinct) <= MAX_VALUES and (
        isinstance(dist, IntDistribution) or getattr(dist, "step", None) is not None or len(present) > 2 * len(distinct)
    ):
        cast = int if isinstance(dist, IntDistribution) else float
        index = [distinct.index(float(x)) if x is not None else -1 for x in xs]
        return "value", index, [{"label": _label(cast(v)), "value": cast(v)} for v in distinct]
    n_bins = min(5, max(2, len(present) // 6))
    lo, hi = min(map(float, present)), max(map(float, present))
    log = bool(getattr(dist, "log", False)) and lo > 0
    edges = np.geomspace(lo, hi, n_bins + 1) if log else np.linspace(lo, hi, n_bins + 1)
    index = [
        int(np.clip(np.searchsorted(edges, float(x), side="right") - 1, 0, n_bins - 1)) if x is not None else -1
        for x in xs
    ]
    groups = [
        {"label": f"{_edge(edges[i])}–{_edge(edges[i + 1])}", "low": float(edges[i]), "high": float(edges[i + 1])}
        for i in range(n_bins)
    ]
    return "range", index, groups


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


def permutation_p(index: np.ndarray, r: np.ndarray, rng: np.random.Generator) -> float:
    """How often shuffled group labels give group means as far apart (between-group sum of squares)."""
    k = int(index.max()) + 1
    onehot = np.eye(k)[index]  # (n, k)
    counts = onehot.sum(axis=0)
    keep = counts > 0

    def stat(values: np.ndarray) -> np.ndarray:  # values: (P, n)
        means = values @ onehot / np.where(keep, counts, 1)
        return ((means - values.mean(axis=1, keepdims=True)) ** 2 * counts)[:, keep].sum(axis=1)

    observed = stat(r[None, :])[0]
    shuffled = np.array([rng.permutation(r) for _ in range(PERMUTATIONS)])
    return float((1 + np.sum(stat(shuffled) >= observed - 1e-9)) / (PERMUTATIONS + 1))


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
) -> dict[str, Effect]:
    """Effects of every parameter in ``space`` on ``values`` (one per trial, with its ``params``).
    ``fmt`` formats a value (88.1%); ``what`` names the metric in the words ("val acc"); ``ended``
    says how each trial ended (complete, pruned, diverged...), for the words about the worse regions."""
    names = list(space)
    y = np.asarray(values, dtype=float)
    X = np.array([[encode(space[n], p.get(n)) for n in names] for p in params], dtype=float).reshape(
        len(params), len(names)
    )
    sign = 1.0 if maximize else -1.0
    surrogate = None
    if len(names) > 1 and len(y) >= MIN_TRIALS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            surrogate = _forest(seed).fit(X, y)
    out = {}
    for j, name in enumerate(names):
        rng = np.random.default_rng([seed, j])
        kind, index, groups = bins(space[name], [p.get(name) for p in params])
        index = np.asarray(index, dtype=int)
        bands = []
        for g, meta in enumerate(groups):
            vals = y[index == g]
            lo, hi = bootstrap_interval(vals, rng) if len(vals) else (None, None)
            how = Counter(e for e, k in zip(ended or [], index, strict=False) if k == g)
            bands.append(
                dict(
                    meta,
                    n=int(len(vals)),
                    mean=float(vals.mean()) if len(vals) else None,
                    lo=lo,
                    hi=hi,
                    ended=tuple(how.most_common()),
                )
            )
        if surrogate is not None:
            at = [j_ for j_, b in enumerate(bands) if b["n"]]
            grid = np.array([float(np.median(X[index == g, j])) for g in at])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pd = partial_dependence(surrogate, X, [j], custom_values={j: grid}, method="brute")["average"][0]
            order = np.argsort(grid, kind="stable")
            for g, v in zip(np.asarray(at)[order], pd[order], strict=False):
                bands[g]["pd"] = float(v)
        bands = tuple(Band(**b) for b in bands)
        out[name] = _effect(
            name, kind, bool(getattr(space[name], "log", False)), bands, index, X, y, j, sign, fmt, what, rng, seed
        )
    return out


def _effect(name, kind, log, bands, index, X, y, j, sign, fmt, what, rng, seed) -> Effect:
    n = int((index >= 0).sum())
    make = lambda p, clear, claim, **kw: Effect(name, kind, log, n, bands, p, clear, claim, **kw)  # noqa: E731
    if n < MIN_TRIALS:
        return make(None, False, f"too few trials ({n}) to tell an effect from noise")
    eligible = [g for g, b in enumerate(bands) if b.n >= MIN_GROUP]
    unit = {"choice": "choices", "value": "values", "range": "ranges"}[kind]
    if len(eligible) < 2:
        return make(
            None,
            False,
            f"too few trials to compare its {unit} (only {len(eligible)} of {len(bands)} has {MIN_GROUP} or more)",
        )
    rows = np.isin(index, eligible)
    r = residuals(X, y, j, seed)
    remap = {g: i for i, g in enumerate(eligible)}
    p = permutation_p(np.array([remap[g] for g in index[rows]]), r[rows], rng)
    means = [bands[g].mean for g in eligible]
    has_pd = bands[eligible[0]].pd is not None
    numeric = kind != "choice"
    raw_trend = _trend(means) if numeric else ""
    pd_trend = _trend([bands[g].pd for g in eligible]) if numeric and has_pd else ""
    if p >= ALPHA:
        claim = f"no clear effect (means {fmt(min(means))}–{fmt(max(means))} across its {unit}, p = {p:.2f})"
        note = ""
        if has_pd and permutation_p(np.array([remap[g] for g in index[rows]]), y[rows] - y[rows].mean(), rng) < ALPHA:
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
    if has_pd:  # joint search: the words follow the partial dependence, the raw numbers stand beside it
        b = bands[top]
        if (
            kind == "range"
        ):  # neighbours the raw intervals cannot tell apart and the surrogate puts nearer the top than the bottom
            mid = (b.pd + worst.pd) / 2
            span = _span(bands, [g for g in _near(bands, eligible, top, sign) if sign * bands[g].pd >= sign * mid], top)
            vals = y[np.isin(index, span)]
            b = dataclasses.replace(b, mean=float(vals.mean()), n=int(len(vals)))
            where = _where(kind, bands[span[0]], bands[span[-1]], bands)
        else:
            where = _where(kind, b, b, bands)
        trend = f"; {what} {pd_trend} with {name}" if pd_trend else ""
        claim = (
            f"best {where} by partial dependence ({fmt(b.pd)} there vs {fmt(worst.pd)} "
            f"{_where(kind, worst, worst, bands)}; raw means {fmt(b.mean)} ({b.n} trials) "
            f"and {fmt(worst.mean)} ({worst.n} trials)){trend}"
        )
        if kind == "range":
            claim += _outside(bands, span, fmt)
        claim += f", p = {p:.3f}"
    else:
        claim = _raw_claim(kind, bands, eligible, top, worst, index, y, sign, fmt, what) + f", p = {p:.3f}"
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
    return make(p, True, claim, raw_trend=raw_trend, pd_trend=pd_trend, disagreement=disagreement)


def _span(bands, near: list[int], top: int) -> list[int]:
    """The top band and the contiguous neighbours among ``near``."""
    span = [top]
    for step in (-1, 1):
        g = top + step
        while g in near:
            span.append(g)
            g += step
    return sorted(span)


def _near(bands, eligible, top, sign) -> list[int]:
    """Bands whose 90% interval reaches the top band's: the trials cannot tell them from it."""
    return [g for g in eligible if (bands[g].hi >= bands[top].lo if sign > 0 else bands[g].lo <= bands[top].hi)]


def _raw_claim(kind, bands, eligible, top, worst, index, y, sign, fmt, what) -> str:
    """The best region (the top band and the neighbours its interval cannot tell from it) and the worst band."""
    near = _near(bands, eligible, top, sign)
    if kind == "range":
        span = _span(bands, near, top)
        first, last = bands[span[0]], bands[span[-1]]
        vals = y[np.isin(index, span)]
        best = f"best {_where(kind, first, last, bands)} (mean {what} {fmt(float(vals.mean()))}, {len(vals)} trials"
        best += f", 90% interval {fmt(first.lo)}–{fmt(first.hi)})" if len(span) == 1 else ")"
        return best + _outside(bands, span, fmt)
    else:
        b = bands[top]
        ties = [bands[g].label for g in near if g != top]
        best = (
            f"best at {b.label} (mean {what} {fmt(b.mean)}, 90% interval {fmt(b.lo)}–{fmt(b.hi)}, {b.n} trials"
            + (f"; not told apart from {', '.join(ties)}" if ties else "")
            + ")"
        )
    return (
        f"{best}; worst {_where(kind, worst, worst, bands)}: "
        f"{fmt(worst.mean)} ({fmt(worst.lo)}–{fmt(worst.hi)}, {worst.n} trials)"
    )


def _outside(bands: tuple[Band, ...], span: list[int], fmt) -> str:
    """Below and above the best region, band by band: what too small and too large values did."""
    parts, sides = [], set()
    for g, b in enumerate(bands):
        if g in span or not b.n:
            continue
        side = "below it" if g < span[0] else "above it"
        lead = f"{side}: " if side not in sides else ""
        sides.add(side)
        how = dict(b.ended)
        ends = ", ".join(f"{n} {e}" for e, n in b.ended) if set(how) - {"complete"} else ""
        interval = f"{fmt(b.lo)}–{fmt(b.hi)}, " if b.n >= MIN_GROUP else ""
        few = "; too few trials" if b.n < MIN_GROUP else ""
        parts.append(
            f"{lead}{b.label} {fmt(b.mean)} ({interval}{b.n} trials" + (f": {ends}" if ends else "") + few + ")"
        )
    return ("; " + "; ".join(parts)) if parts else ""


def _where(kind: str, first: Band, last: Band, bands: tuple[Band, ...]) -> str:
    if kind != "range":
        return f"at {first.label}"
    if first is bands[0] and last is bands[-1]:
        return "across the range"
    if first is bands[0]:
        return f"below {_edge(last.high)}"
    if last is bands[-1]:
        return f"above {_edge(first.low)}"
    return f"between {_edge(first.low)} and {_edge(last.high)}"
