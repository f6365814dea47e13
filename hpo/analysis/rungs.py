"""Every trial counts: the rung view and where trials stopped early, as plain data.

A pruned or diverged trial's last value is not comparable with a full run's, but its value at an
epoch it reached is comparable with every other trial's value at that same epoch. So the report
also reads the study rung by rung (a rung = an epoch; its trials = every trial that reached it,
whatever its final state), and asks per parameter where the trials that stopped early concentrate.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.analysis import effects
from hpo.analysis.groups import ALPHA, PERMUTATIONS, display, edge, permutation_p, shuffles, value_label
from hpo.errors import counted
from hpo.records import STATUS, ending, epoch_values, own_epochs

RUNG_SHARE = 0.75  # the analysis rung: the deepest epoch that at least this share of the trials reached
MIN_SIDE = 3  # a region of fewer trials never makes a finding
STOP_STATUSES = ("pruned", "diverged", "collapsed", "failed")


@dataclass(frozen=True)
class Rung:
    epoch: int
    trials: int
    states: dict[str, int]  # "complete" / "pruned" / "diverged" ... -> trials at this rung
    mean: float | None
    best: float | None


@dataclass(frozen=True)
class Region:
    """Trials of one side of a split (numeric) or one choice (categorical) and how many stopped early."""

    label: str  # "momentum ≥ 0.9", "lr < 0.0031", "batch_size = 64"
    trials: int
    stopped: int
    by_epoch: int  # the latest epoch by which its stopped trials had stopped
    statuses: dict[str, int]  # why they stopped: {"diverged": 10, "pruned": 2}

    @property
    def rate(self) -> float:
        return self.stopped / self.trials if self.trials else 0.0


@dataclass(frozen=True)
class StopRegions:
    name: str
    regions: tuple[Region, ...]
    p_value: float | None  # None: not tested (too few trials or no trial stopped)
    clear: bool
    sentence: str


status_of = ending  # how a trial ended, as the report words it (hpo.records)


def stopped_early(t: FrozenTrial) -> bool:
    """Finished before its budget for a reason of its own: interrupted and lost trials say nothing of
    their parameters, and a trial stopped after its last epoch trained it all."""
    run, budget = t.user_attrs.get("epochs_run"), own_epochs(t)
    if isinstance(run, int) and budget is not None and run >= budget:
        return False
    return t.state in (TrialState.PRUNED, TrialState.FAIL) and status_of(t) in STOP_STATUSES


def stop_epoch(t: FrozenTrial) -> int:
    """The epoch a trial stopped in. A diverged epoch records no value, so it is the one after the last recorded."""
    run = t.user_attrs.get("epochs_run")
    run = run if isinstance(run, int) else max(epoch_values(t), default=0)
    return run + 1 if status_of(t) in ("diverged", "failed") else run


def ladder(trials: list[FrozenTrial]) -> tuple[Rung, ...]:
    """Per epoch, every trial that reached it, by its final state, with its validation accuracy there."""
    curves = {t.number: epoch_values(t) for t in trials}
    epochs = sorted({e for c in curves.values() for e in c})
    out = []
    for e in epochs:
        at = [t for t in trials if e in curves[t.number] and math.isfinite(curves[t.number][e])]
        values = [curves[t.number][e] for t in at]
        states = Counter(status_of(t) for t in at)
        out.append(
            Rung(
                e,
                len(at),
                dict(states.most_common()),
                float(np.mean(values)) if values else None,
                float(max(values)) if values else None,
            )
        )
    return tuple(out)


def analysis_rung(rungs: tuple[Rung, ...], n_trials: int) -> Rung | None:
    """The deepest rung that still holds RUNG_SHARE of the trials (all states), else the first."""
    if not rungs:
        return None
    deep = [r for r in rungs if r.trials >= RUNG_SHARE * n_trials]
    return deep[-1] if deep else rungs[0]


def at_rung(trials: list[FrozenTrial], epoch: int) -> list[FrozenTrial]:
    """The trials that reached ``epoch``, rebuilt as COMPLETE trials valued there, for Optuna's evaluators."""
    out = []
    for t in trials:
        v = epoch_values(t).get(epoch)
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or v is None or not math.isfinite(v) or not t.params:
            continue
        rebuilt = optuna.create_trial(
            value=v,
            params=dict(t.params),
            distributions=dict(t.distributions),
            user_attrs={"number": t.number, "state": t.state.name, STATUS: status_of(t)},
        )
        out.append(rebuilt)
    return out


def rung_study(trials: list[FrozenTrial], direction) -> optuna.Study:
    """An in-memory study of rebuilt trials: what optuna.importance needs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(direction=direction)
        study.add_trials(trials)
    return study


# ---------------------------------------------------------------- where trials stop early


def _gap(n1: np.ndarray, s1: np.ndarray, n: int, s: int) -> np.ndarray:
    """How much the early-stop rate differs between the two sides, for every cut at once, weighted by
    sqrt(n1 n2 / n) as a two-sample z is: three lucky trials alone should not outweigh a real region."""
    return np.abs(s1 / n1 - (s - s1) / (n - n1)) * np.sqrt(n1 * (n - n1) / n)


def _split_p(r: np.ndarray, observed: float, valid: np.ndarray, rng: np.random.Generator) -> float:
    """How often shuffled stop labels split as far apart somewhere: the search over cuts is paid for."""
    n, s = len(r), float(r.sum())
    cuts = np.arange(MIN_SIDE, n - MIN_SIDE + 1)
    cuts = cuts[valid[cuts - 1]]
    perms = shuffles(r, rng)
    cum = np.cumsum(perms, axis=1)[:, cuts - 1]
    chi = _gap(cuts[None, :].astype(float), cum.astype(float), n, s).max(axis=1)
    return float((1 + np.sum(chi >= observed - 1e-9)) / (PERMUTATIONS + 1))


def _region(label: str, ts: list[FrozenTrial]) -> Region:
    stopped = [t for t in ts if stopped_early(t)]
    return Region(
        label,
        len(ts),
        len(stopped),
        max((stop_epoch(t) for t in stopped), default=0),
        dict(Counter(status_of(t) for t in stopped).most_common()),
    )


def _cut_value(a: float, b: float, log: bool) -> float:
    return math.sqrt(a * b) if log and a > 0 and b > 0 else (a + b) / 2


def _numeric_split(
    name: str, ts: list[FrozenTrial], log: bool, rng, resid: dict[int, float]
) -> tuple[float | None, float, list]:
    """The cut between sorted values where the stop residuals differ most, with its permutation p-value."""
    ts = sorted(ts, key=lambda t: float(t.params[name]))
    xs = np.array([float(t.params[name]) for t in ts])
    stops = np.array([stopped_early(t) for t in ts], dtype=np.int64)
    r = np.array([resid[t.number] for t in ts])
    valid = np.r_[xs[1:] > xs[:-1], False]  # never cut between equal values
    n, s = len(stops), int(stops.sum())
    cuts = np.arange(MIN_SIDE, n - MIN_SIDE + 1)
    cuts = cuts[valid[cuts - 1]] if len(cuts) else cuts
    if not len(cuts) or s in (0, n):
        return None, 1.0, ts
    gap = _gap(cuts.astype(float), np.cumsum(r)[cuts - 1], n, float(r.sum()))
    cut = int(cuts[int(np.argmax(gap))])
    raw = stops.astype(float)
    raw_gap = float(_gap(cuts.astype(float), np.cumsum(raw)[cuts - 1], n, float(s)).max())
    # the residuals pick the cut; the raw stop rates must differ beyond chance too
    p = max(_split_p(r, float(gap.max()), valid, rng), _split_p(raw, raw_gap, valid, rng))
    return _cut_value(xs[cut - 1], xs[cut], log), p, ts


def _phrase(r: Region) -> str:
    why = ", ".join(f"{n} {s}" for s, n in r.statuses.items())
    by = f" by epoch {r.by_epoch}" if r.stopped else ""
    few = "; too few trials" if r.trials < MIN_SIDE else ""
    return f"{r.label}: {r.stopped} of {counted(r.trials, 'trial')} stopped{by}" + (
        f" ({why}{few})" if why else f" ({few[2:]})" if few else ""
    )


def stop_residuals(name: str, space: dict, ts: list[FrozenTrial], seed: int) -> dict[int, float]:
    """Each trial's early stop (0/1) less what the other parameters predict of it (out-of-bag), so a
    parameter is not blamed for stops that the sampler's pairing with another one explains."""
    names = [name] + [n for n in space if n != name]
    X = np.array([[effects.encode(space[n], t.params.get(n)) for n in names] for t in ts], dtype=float)
    y = np.array([float(stopped_early(t)) for t in ts])
    return dict(zip((t.number for t in ts), effects.residuals(X, y, 0, seed), strict=False))


def stop_regions(name: str, dist, trials: list[FrozenTrial], seed: int = 0, space: dict | None = None) -> StopRegions:
    """Where the early stops of ``name`` concentrate: the best split of a numeric parameter (on a
    log scale where the search is log; the side with fewer stops is split once more, so a middle
    band between too small and too large shows), or each choice of a categorical one. The test
    runs on what the other parameters in ``space`` leave unexplained; the counts are the raw ones."""
    ts = [
        t
        for t in trials
        if name in t.params and t.state.is_finished() and (t.state == TrialState.COMPLETE or stopped_early(t))
    ]
    rng = np.random.default_rng(seed)
    shown = display(name)
    total = sum(stopped_early(t) for t in ts)
    if not total or len(ts) < 2 * MIN_SIDE:
        return StopRegions(name, (_region(f"{shown} (all)", ts),), None, False, "")
    resid = stop_residuals(name, space or {name: dist}, ts, seed)
    if isinstance(dist, CategoricalDistribution):
        return _categorical(name, dist, ts, rng, resid)
    log = bool(getattr(dist, "log", False))
    cut, p, ordered = _numeric_split(name, ts, log, rng, resid)
    if cut is None or p >= ALPHA:
        region = _region(f"{shown} (all)", ts)
        return StopRegions(
            name,
            (region,),
            p if cut is not None else None,
            False,
            f"{shown}: no region where trials stop early stands out ({region.stopped} of {region.trials} stopped early"
            + (f", p = {p:.2f}" if cut is not None else "")
            + ").",
        )
    low = [t for t in ordered if float(t.params[name]) < cut]
    high = [t for t in ordered if float(t.params[name]) >= cut]
    parts = [(f"{shown} < {edge(cut)}", low), (f"{shown} ≥ {edge(cut)}", high)]
    calm_low = _region("", low).rate <= _region("", high).rate
    calm = low if calm_low else high
    cut2, p2, calm_sorted = _numeric_split(name, calm, log, rng, resid)
    if cut2 is not None and p2 < ALPHA:
        a = [t for t in calm_sorted if float(t.params[name]) < cut2]
        b = [t for t in calm_sorted if float(t.params[name]) >= cut2]
        if calm_low:
            parts = [(f"{shown} < {edge(cut2)}", a), (f"{edge(cut2)} ≤ {shown} < {edge(cut)}", b), parts[1]]
        else:
            parts = [parts[0], (f"{edge(cut)} ≤ {shown} < {edge(cut2)}", a), (f"{shown} ≥ {edge(cut2)}", b)]
    regions = tuple(_region(label, group) for label, group in parts)
    # the regions where trials stopped most come first: they are the finding
    order = sorted(regions, key=lambda r: -r.rate)
    text = "; ".join(_phrase(r) for r in order) + "."
    return StopRegions(name, regions, p, True, text)


def _categorical(
    name: str, dist: CategoricalDistribution, ts: list[FrozenTrial], rng, resid: dict[int, float]
) -> StopRegions:
    shown = display(name)
    groups = [(f"{shown} = {value_label(c)}", [t for t in ts if t.params[name] == c]) for c in dist.choices]
    groups = [(label, g) for label, g in groups if g]
    regions = tuple(_region(label, g) for label, g in groups)
    eligible = [i for i, r in enumerate(regions) if r.trials >= MIN_SIDE]
    if len(eligible) < 2:
        return StopRegions(name, regions, None, False, "")
    index = np.concatenate([[k] * regions[i].trials for k, i in enumerate(eligible)])  # 0..k-1: no empty group
    r = np.concatenate([[resid[t.number] for t in groups[i][1]] for i in eligible]).astype(float)
    raw = np.concatenate([[float(stopped_early(t)) for t in groups[i][1]] for i in eligible])
    # the raw rates must differ too, not only the residuals
    p = max(permutation_p(index, r, rng), permutation_p(index, raw, rng))
    if p >= ALPHA:
        rates = [regions[i].rate for i in eligible]
        return StopRegions(
            name,
            regions,
            p,
            False,
            f"{shown}: no choice where trials stop early stands out ({min(rates):.0%}–{max(rates):.0%} "
            f"stopped early per choice, p = {p:.2f}).",
        )
    order = sorted(regions, key=lambda r: -r.rate)
    return StopRegions(name, regions, p, True, "; ".join(_phrase(r) for r in order) + ".")
