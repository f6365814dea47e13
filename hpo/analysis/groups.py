"""One parameter's trials in groups: the one binning, the one group type and the one permutation
test of the report. Every per-parameter table, every sentence about a parameter, the branches
section and the comparison are views of the groups made here, so a number a sentence states is a
cell of the table beside it.

A group is a choice, a value (a numeric parameter with few distinct values) or a bin [low, high)
of a range (log-spaced for a log range); a merged row (the best region, what lies below or above
it, "the rest") is a group too, with the bins it spans in ``members``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution, IntDistribution

LEVEL = 0.90  # the intervals' coverage
BOOTSTRAP = 1000
PERMUTATIONS = 1000
ALPHA = 0.01  # a difference is claimed only when shuffled labels match it this rarely
MIN_GROUP = 3  # a smaller group is shown but never makes a finding
MAX_VALUES = 6  # a numeric parameter with at most this many distinct values gets a row per value
MAX_BINS = 5
PER_BIN = 6  # trials per bin a range is cut into (2 to MAX_BINS bins)


@dataclass(frozen=True)
class Group:
    """One row of a per-parameter table."""

    label: str
    n: int
    mean: float | None
    lo: float | None = None  # the mean's 90% bootstrap interval
    hi: float | None = None
    best: float | None = None
    worst: float | None = None
    mean_test: float | None = None
    pd: float | None = None  # partial dependence of the surrogate there (joint searches)
    value: Any = None
    low: float | None = None
    high: float | None = None
    ended: tuple[tuple[str, int], ...] = ()  # how its trials ended: (("complete", 3), ("pruned", 5))
    members: tuple[int, ...] = ()  # a merged row: the groups it spans


def edges_text(edges: list[float]) -> list[str]:
    """Bin edges as a reader says them, with the fewest digits that keep every edge distinct."""
    digits = 2
    while digits < 6 and len({f"{e:.{digits}g}" for e in edges}) < len(edges):
        digits += 1
    return [f"{e:.{digits}g}" for e in edges]


def edge(x: float) -> str:
    return f"{x:.2g}" if abs(x) < 1 else f"{x:.3g}"


def value_label(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def bins(dist, xs: list) -> tuple[str, list[int], list[dict]]:
    """Each value's group index (-1: parameter not set), and the groups' labels: choices, values or bins."""
    present = [x for x in xs if x is not None]
    if isinstance(dist, CategoricalDistribution):
        index = [dist.choices.index(x) if x is not None and x in dist.choices else -1 for x in xs]
        return "choice", index, [{"label": value_label(c), "value": c} for c in dist.choices]
    if not present:  # a conditional parameter that none of these trials has (another branch ran)
        return "range", [-1] * len(xs), []
    distinct = sorted(set(float(x) for x in present))
    if len(distinct) <= MAX_VALUES and (
        isinstance(dist, IntDistribution) or getattr(dist, "step", None) is not None or len(present) > 2 * len(distinct)
    ):
        cast = int if isinstance(dist, IntDistribution) else float
        index = [distinct.index(float(x)) if x is not None else -1 for x in xs]
        return "value", index, [{"label": value_label(cast(v)), "value": cast(v)} for v in distinct]
    n_bins = min(MAX_BINS, max(2, len(present) // PER_BIN))
    lo, hi = min(map(float, present)), max(map(float, present))
    log = bool(getattr(dist, "log", False)) and lo > 0
    edges = np.geomspace(lo, hi, n_bins + 1) if log else np.linspace(lo, hi, n_bins + 1)
    index = [
        int(np.clip(np.searchsorted(edges, float(x), side="right") - 1, 0, n_bins - 1)) if x is not None else -1
        for x in xs
    ]
    text = edges_text([float(e) for e in edges])
    groups = [
        {"label": f"{text[i]}–{text[i + 1]}", "low": float(edges[i]), "high": float(edges[i + 1])}
        for i in range(n_bins)
    ]
    return "range", index, groups


def bootstrap_interval(values: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    if len(values) < 2:
        return float(values[0]), float(values[0])
    means = rng.choice(values, size=(BOOTSTRAP, len(values)), replace=True).mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def summarise(
    meta: dict,
    rows: np.ndarray,
    y: np.ndarray,
    maximize: bool,
    rng: np.random.Generator,
    tests: np.ndarray | None = None,
    ended: list[str] | None = None,
) -> Group:
    """The group of the trials where ``rows`` is true: n, mean with its interval, best, worst, test mean."""
    vals = y[rows]
    if not len(vals):
        return Group(n=0, mean=None, **meta)
    lo, hi = bootstrap_interval(vals, rng)
    test = tests[rows] if tests is not None else np.array([])
    test = test[np.isfinite(test)]
    how = Counter(e for e, r in zip(ended or [], rows, strict=False) if r)
    return Group(
        n=int(len(vals)),
        mean=float(vals.mean()),
        lo=lo,
        hi=hi,
        best=float(vals.max() if maximize else vals.min()),
        worst=float(vals.min() if maximize else vals.max()),
        mean_test=float(test.mean()) if len(test) else None,
        ended=tuple(how.most_common()),
        **meta,
    )


def group(
    dist,
    xs: list,
    y: np.ndarray,
    maximize: bool,
    rng: np.random.Generator,
    tests: np.ndarray | None = None,
    ended: list[str] | None = None,
) -> tuple[str, np.ndarray, tuple[Group, ...]]:
    """The parameter's kind, each trial's group index and the groups, for values ``xs`` and results ``y``."""
    kind, index, metas = bins(dist, xs)
    index = np.asarray(index, dtype=int)
    return kind, index, tuple(summarise(m, index == g, y, maximize, rng, tests, ended) for g, m in enumerate(metas))


def merge(
    label: str,
    members: list[int],
    index: np.ndarray,
    y: np.ndarray,
    maximize: bool,
    rng: np.random.Generator,
    tests: np.ndarray | None = None,
    ended: list[str] | None = None,
) -> Group:
    """One row for several groups: the best region, what lies below or above it, the rest."""
    return summarise(
        {"label": label, "members": tuple(members)}, np.isin(index, members), y, maximize, rng, tests, ended
    )


def shuffles(r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """PERMUTATIONS shuffles of ``r`` at once, (PERMUTATIONS, n): every permutation test draws them here."""
    return rng.permuted(np.broadcast_to(r, (PERMUTATIONS, len(r))), axis=1)


def permutation_p(index: np.ndarray, r: np.ndarray, rng: np.random.Generator) -> float:
    """How often shuffled group labels put the groups' means as far apart (between-group sum of
    squares) as ``index`` does; ``index`` holds 0..k-1."""
    k = int(index.max()) + 1
    onehot = np.eye(k)[index]  # (n, k)
    counts = onehot.sum(axis=0)
    keep = counts > 0

    def stat(values: np.ndarray) -> np.ndarray:  # values: (P, n)
        means = values @ onehot / np.where(keep, counts, 1)
        return ((means - values.mean(axis=1, keepdims=True)) ** 2 * counts)[:, keep].sum(axis=1)

    observed = stat(r[None, :].astype(float))[0]
    return float((1 + np.sum(stat(shuffles(r.astype(float), rng)) >= observed - 1e-9)) / (PERMUTATIONS + 1))


def finite(values) -> np.ndarray:
    """Results as floats, a missing one as nan."""
    return np.array(
        [float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan for v in values], dtype=float
    )


def display(name: str) -> str:
    """An Optuna parameter name as a reader says it: "lr|adam/adamw" -> "lr (adam/adamw)", the
    network's "name" -> "model", your own net's "args.width" -> "width"."""
    base, _, branch = name.partition("|")
    base = "model" if base == "name" else base.removeprefix("args.")
    return f"{base} ({branch})" if branch else base
