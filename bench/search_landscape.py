"""The replay's objective: recorded learning curves, looked up for any configuration of the space.

A ``Landscape`` answers ``draw(params, seed)`` with the curve one training seed would give that
configuration: its validation accuracy and CPU seconds per epoch, and how hpo's objective would
end it early ("diverged", "collapsed") if it would. One continuous parameter (lenet_lr) is a grid:
each epoch's accuracy is interpolated in the parameter's (log) scale between the two grid points
around it, for the same seed, and the nearer point decides whether and when the run stops early.
A larger space is a surrogate fitted on the recorded runs, one per seed: a
random forest on encoded configurations (each epoch's accuracy, its seconds, whether it stops early).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from sklearn.ensemble import RandomForestRegressor

from hpo.config import StudySpec
from hpo.errors import HpoError
from hpo.search.space import trial_config

TREES = 50


@dataclass(frozen=True)
class Run:
    values: tuple[float, ...]  # validation accuracy (%) after each epoch the run reaches
    seconds: tuple[float, ...]  # CPU seconds of each of those epochs
    stopped: str = ""  # "", "diverged" (one more epoch is spent, then it ends) or "collapsed"


def read_curves(path: Path) -> tuple[dict, list[dict]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise HpoError(f"cannot read the curves file {path}: {e.strerror}") from None
    try:
        meta, runs = json.loads(lines[0]), [json.loads(line) for line in lines[1:] if line.strip()]
    except (IndexError, json.JSONDecodeError):
        raise HpoError(f"{path} is not a curves file (a metadata line, then one JSON run a line)") from None
    if not runs:
        raise HpoError(f"{path} holds no runs yet")
    return meta, runs


def complete_configs(runs: list[dict], seeds: list[int]) -> list[dict]:
    """Runs of the configurations recorded with every seed (a recording in progress has a last one with fewer)."""
    by = {}
    for r in runs:
        by.setdefault(r["config"], {})[r["seed"]] = r
    return [by[c][s] for c in sorted(by) if all(s in by[c] for s in seeds) for s in seeds]


def _run(r: dict) -> Run:
    stopped = "" if r["status"] == "ok" else r["status"]
    return Run(tuple(r["val_acc"]), tuple(r["cpu_seconds"]), stopped)


class Grid:
    """One continuous parameter, recorded on a grid."""

    def __init__(self, spec: StudySpec, runs: list[dict], seeds: list[int]):
        (self.param,) = spec.search
        self.name, self.seeds = self.param.optuna_name, seeds
        points = sorted({r["params"][self.name] for r in runs})
        self.x = [self._scale(v) for v in points]
        self.runs = {s: [None] * len(points) for s in seeds}
        for r in runs:
            self.runs[r["seed"]][points.index(r["params"][self.name])] = _run(r)
        ok = [s for s in (r for per in self.runs.values() for r in per) if not s.stopped]
        self.epoch_seconds = float(np.mean([x for r in ok for x in r.seconds]))
        finals = [
            np.mean([self.runs[s][i].values[-1] for s in seeds])
            for i in range(len(points))
            if all(not self.runs[s][i].stopped for s in seeds)
        ]
        self.best = float(max(finals))  # linear interpolation never exceeds its grid points

    def _scale(self, v: float) -> float:
        return math.log(v) if self.param.log else v

    def draw(self, params: dict, seed: int) -> Run:
        x = self._scale(params[self.name])
        i = min(max(bisect.bisect_right(self.x, x) - 1, 0), len(self.x) - 2)
        w = min(max((x - self.x[i]) / (self.x[i + 1] - self.x[i]), 0.0), 1.0)
        a, b = self.runs[seed][i], self.runs[seed][i + 1]
        near = a if w < 0.5 else b
        values = [
            (1 - w) * a.values[e] + w * b.values[e] if e < len(a.values) and e < len(b.values) else near.values[e]
            for e in range(len(near.values))
        ]
        return Run(tuple(values), near.seconds, near.stopped)


def encoder(spec: StudySpec):
    """A configuration's params -> a feature vector: each range in its (log) scale, standardised
    to [0, 1], -1 when its branch is not taken; each choice one-hot."""
    parts = []
    for p in spec.search:
        if p.choices:
            parts.append((p.optuna_name, list(p.choices)))
        else:
            lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
            parts.append((p.optuna_name, (p.log, lo, hi)))

    def encode(params: dict) -> list[float]:
        out = []
        for name, how in parts:
            v = params.get(name)
            if isinstance(how, list):
                out += [1.0 if v is not None and v == c and type(v) is type(c) else 0.0 for c in how]
            elif v is None:
                out.append(-1.0)
            else:
                log, lo, hi = how
                out.append(((math.log(v) if log else v) - lo) / (hi - lo))
        return out

    return encode


class Surrogate:
    """A conditional or many-parameter space: per seed, one random forest fitted on that seed's
    recorded runs, predicting each epoch's accuracy, the epoch's CPU seconds and whether the run
    stops early (a run that stopped early counts its missing epochs at chance accuracy). A
    configuration predicted to stop early collapses at epoch 2, as most recorded early stops did
    (or diverges in its first epoch, where most of those diverged). A k-NN regressor was tried
    first: on the joint recording its held-out error was worse than predicting the mean."""

    def __init__(self, spec: StudySpec, runs: list[dict], seeds: list[int], epochs: int, candidates: int = 4000):
        self.spec, self.seeds, self.epochs, self.encode = spec, seeds, epochs, encoder(spec)
        stopped = [r for r in runs if r["status"] != "ok"]
        self.early = "diverged" if sum(r["status"] == "diverged" for r in stopped) > len(stopped) / 2 else "collapsed"
        self.chance = float(np.median([min(r["val_acc"][:2]) for r in runs if r["status"] == "collapsed"] or [10.0]))
        self.epoch_seconds = float(np.mean([x for r in runs if r["status"] == "ok" for x in r["cpu_seconds"]]))
        self.models = {s: self._fit([r for r in runs if r["seed"] == s]) for s in seeds}
        self.best = self._space_best(runs, candidates)

    def _targets(self, r: dict) -> list[float]:
        values = list(r["val_acc"][: self.epochs]) + [self.chance] * (self.epochs - len(r["val_acc"]))
        secs = float(np.mean(r["cpu_seconds"])) if r["cpu_seconds"] else self.epoch_seconds
        return [*values, secs, float(r["status"] != "ok")]

    def _fit(self, runs: list[dict]):
        x = np.array([self.encode(r["params"]) for r in runs])
        y = np.array([self._targets(r) for r in runs])
        return RandomForestRegressor(TREES, min_samples_leaf=2, random_state=0).fit(x, y)

    def predict(self, xs: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        y = self.models[seed].predict(xs)
        return y[:, : self.epochs], y[:, self.epochs], y[:, self.epochs + 1] > 0.5

    def draw(self, params: dict, seed: int) -> Run:
        values, secs, stops = (a[0] for a in self.predict(np.array([self.encode(params)]), seed))
        if stops:
            n = 0 if self.early == "diverged" else 2
            return Run((self.chance,) * n, (float(secs),) * n, self.early)
        return Run(tuple(float(v) for v in values), (float(secs),) * self.epochs)

    def _space_best(self, runs: list[dict], n: int) -> float:
        """The best seed-mean final accuracy the surrogate gives: over the recorded configurations
        and ``n`` more from the random sampler."""
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=12345))
        params = [r["params"] for r in runs]
        for _ in range(n):
            trial = study.ask()
            trial_config(trial, self.spec)
            params.append(dict(trial.params))
            study.tell(trial, 0.0)
        xs = np.array([self.encode(p) for p in params])
        finals, stopped = [], np.zeros(len(xs), bool)
        for s in self.seeds:
            v, _, stops = self.predict(xs, s)
            finals.append(v[:, -1])
            stopped |= stops.astype(bool)
        mean = np.mean(finals, axis=0)
        return float(mean[~stopped].max())

    def held_out_error(self, runs: list[dict], folds: int = 5) -> dict:
        """Mean absolute error of the final epoch's accuracy on configurations left out (k folds by
        configuration, per seed), against the seed-to-seed difference of the same runs."""
        configs = sorted({r["config"] for r in runs})
        rng = np.random.default_rng(0)
        rng.shuffle(configs)
        errors, baseline, wrong, total = [], [], 0, 0
        for k in range(folds):
            out = set(configs[k::folds])
            for s in self.seeds:
                train = [r for r in runs if r["seed"] == s and r["config"] not in out]
                test = [r for r in runs if r["seed"] == s and r["config"] in out]
                model = self._fit(train)
                y = model.predict(np.array([self.encode(r["params"]) for r in test]))
                stops = y[:, self.epochs + 1] > 0.5
                wrong += int(sum(bool(p) != (r["status"] != "ok") for p, r in zip(stops, test, strict=True)))
                total += len(test)
                errors += [
                    abs(y[i, self.epochs - 1] - r["val_acc"][-1]) for i, r in enumerate(test) if r["status"] == "ok"
                ]
                mean = np.mean([r["val_acc"][-1] for r in train if r["status"] == "ok"])
                baseline += [abs(mean - r["val_acc"][-1]) for r in test if r["status"] == "ok"]
        by = {}
        for r in runs:
            if r["status"] == "ok":
                by.setdefault(r["config"], []).append(r["val_acc"][-1])
        seed_gap = [abs(v[0] - v[1]) for v in by.values() if len(v) == 2]
        return {
            "mae": float(np.mean(errors)),
            "mae_of_the_mean": float(np.mean(baseline)),  # what predicting the training runs' mean scores
            "early_stop_misclassified": wrong / total,
            "seed_gap": float(np.mean(seed_gap)) if seed_gap else float("nan"),
        }


def landscape(spec: StudySpec, path: Path):
    meta, runs = read_curves(path)
    runs = complete_configs(runs, meta["seeds"])
    if not runs:
        raise HpoError(f"{path} holds no configuration recorded with every seed yet")
    if len(spec.search) == 1 and not spec.search[0].choices:
        return meta, runs, Grid(spec, runs, meta["seeds"])
    return meta, runs, Surrogate(spec, runs, meta["seeds"], meta["epochs"])
