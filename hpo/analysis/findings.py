"""What a study found, as plain data: counts, the best trial, importances, per-parameter effects.

``compute(study)`` reads the store once and returns a frozen ``Findings``; ``hpo.analysis.figures`` draws it.
Nothing here draws or formats pages, so tests check these numbers and sentences directly.
Only COMPLETE trials enter the tables: a pruned trial's last value is not comparable with a full one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.analysis import evidence
from hpo.analysis.groups import Group
from hpo.config import STUDY_FILE
from hpo.errors import reason
from hpo.records import REASON, STATE_WORDS, epoch_values, own_epochs, ranked, retried, status

# Importance evaluators, the report shows both: PED-ANOVA is Optuna 5's default (and the
# dashboard's); fANOVA (a random forest, needs scikit-learn) is the classic one.
EVALUATORS: dict[str, Callable[[], optuna.importance.BaseImportanceEvaluator]] = {
    "PED-ANOVA": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
    "fANOVA": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
}
TOP_N = 10
PROBLEM_STATUSES = {"diverged", "collapsed", "failed", "interrupted"}
STATES = {state.name: word for state, word in STATE_WORDS.items()}  # by state name, as counts and rows hold them
METRIC_LABELS = {"val_acc": "val acc", "wall_time": "wall time", "params": "params"}


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    values: tuple[float, ...] | None
    params: dict[str, Any]
    status: str = ""
    reason: str = ""
    val_acc: float | None = None
    test_acc: float | None = None
    epochs_run: int | None = None
    duration_s: float | None = None
    class_test_acc: dict | None = None  # class name -> test accuracy (percent), where recorded


@dataclass(frozen=True)
class ParamEffect:
    name: str
    kind: str  # "choice" (categorical), "value" (few numeric values), "range" (binned)
    log: bool
    importance: dict[str, float]  # evaluator -> importance for the first objective
    groups: tuple[Group, ...]  # the final epoch's groups of its complete trials (hpo.analysis.groups)
    sentence: str = ""  # what the words say of it (a branch's own parameter; study-wide: evidence.sentences)


@dataclass(frozen=True)
class Importances:
    metric: str
    by_evaluator: dict[str, dict[str, float]]  # evaluator -> {param: importance}, descending
    note: str = ""  # why some or all are missing, or how to read them


@dataclass(frozen=True)
class Pruning:
    epochs: int  # the budget of one full trial
    trials: int  # finished trials that recorded epochs_run
    budget: int  # trials x epochs
    run: int  # epochs actually trained
    saved: int
    saved_pct: float
    pruned: int  # trials the pruner stopped
    pruned_saved: int  # epochs they did not train
    stopped: int  # trials that stopped early on their own: diverged, collapsed, failed
    stopped_saved: int
    budgets: tuple[int, ...] = ()  # the distinct budgets (several where `epochs` is searched)


@dataclass(frozen=True)
class Reproducibility:
    seed: Any
    study_file: str
    versions: dict[str, str]
    versions_vary: bool
    devices: dict[str, int]
    threads: tuple[int, ...]
    command: str


@dataclass(frozen=True)
class Findings:
    study_name: str
    storage: str
    folder: str
    description: str
    metrics: tuple[str, ...]
    directions: tuple[str, ...]
    counts: dict[str, int]
    best: TrialRow
    best_config: dict
    pareto: tuple[TrialRow, ...]
    top: tuple[TrialRow, ...]
    importances: tuple[Importances, ...]  # one per objective
    params: tuple[ParamEffect, ...]  # most important first
    pruning: Pruning | None
    problems: tuple[TrialRow, ...]
    reproducibility: Reproducibility
    study_toml: str = ""
    # hpo.analysis.branches.Branches for a study with conditional parameters (set by hpo.analysis.branches.extend)
    branches: Any = None
    warm_started: dict = dataclasses.field(default_factory=dict)  # trial number -> "STUDY#N" it was warm-started from
    evidence: Any = None  # hpo.analysis.evidence.Evidence: every trial counted, effects with intervals

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


def label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def fmt(metric: str, value: float | None) -> str:
    """A metric value the way a reader says it: 88.1%, 12.3 s, 61,706 params."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if metric in ("val_acc", "test_acc"):
        return f"{value:.1f}%"
    if metric == "wall_time":
        return f"{value:.1f} s"
    if metric == "params":
        return f"{value:,.0f}"
    return f"{value:.4g}"


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def metric_names(study: optuna.Study) -> tuple[str, ...]:
    names = study.user_attrs.get("metrics") or study.metric_names
    if names and len(names) == len(study.directions):
        return tuple(names)
    return ("value",) if len(study.directions) == 1 else tuple(f"value {i}" for i in range(len(study.directions)))


def complete_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials the tables use: COMPLETE, with finite values."""
    return [
        t for t in trials if t.state == TrialState.COMPLETE and t.values and all(math.isfinite(v) for v in t.values)
    ]


def counts_by_state(trials: list[FrozenTrial]) -> dict[str, int]:
    seen = Counter(t.state.name for t in trials)
    return {s: seen[s] for s in STATES if seen[s]} | {s: n for s, n in seen.items() if s not in STATES}


def searched_params(trials: list[FrozenTrial]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Parameters that actually vary in the search space (a fixed, single-value one is not searched)."""
    out = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if not dist.single():
                out.setdefault(name, dist)
    return out


def row(t: FrozenTrial) -> TrialRow:
    a = t.user_attrs
    duration = (
        (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
    )
    return TrialRow(
        number=t.number,
        state=t.state.name,
        values=tuple(t.values) if t.values else None,
        params=dict(t.params),
        status=status(t),
        reason=str(a.get(REASON, "") or ""),
        val_acc=a.get("val_acc"),
        test_acc=a.get("test_acc"),
        epochs_run=a.get("epochs_run"),
        duration_s=duration,
        class_test_acc=a.get("class_test_acc") if isinstance(a.get("class_test_acc"), dict) else None,
    )


def _sign(direction: StudyDirection) -> float:
    """Multiply by this and smaller is better."""
    return -1.0 if direction == StudyDirection.MAXIMIZE else 1.0


def importances(
    study: optuna.Study, complete: list[FrozenTrial], params: list[str], metric: str, index: int
) -> Importances:
    """Both evaluators on one objective; a note instead of numbers where the trials cannot support them."""
    if not params:
        return Importances(metric, {}, "no searched parameters")
    if len(complete) < 2:
        return Importances(metric, {}, f"not enough trials for importance ({len(complete)} complete)")
    if all(len({repr(t.params.get(p)) for t in complete}) < 2 for p in params):
        return Importances(
            metric, {}, "not enough trials for importance (no parameter varied across the complete trials)"
        )
    multi = len(study.directions) > 1
    sign = _sign(study.directions[index])
    out, notes = {}, []
    for name, make in EVALUATORS.items():
        if not multi:
            target = None
        elif name == "PED-ANOVA":  # PED-ANOVA ranks by "lower is better" when given a target
            target = lambda t: sign * t.values[index]  # noqa: E731
        else:
            target = lambda t: t.values[index]  # noqa: E731
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = optuna.importance.get_param_importances(study, evaluator=make(), target=target)
        except (ValueError, RuntimeError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError) as e:
            notes.append(f"{name}: not enough trials for importance ({reason(e, limit=120)})")
            continue
        result = {p: float(v) for p, v in result.items() if p in params}
        if len(result) > 1 and len(set(round(v, 12) for v in result.values())) == 1:
            notes.append(f"{name}: all parameters equal, not enough trials to tell them apart")
        out[name] = dict(sorted(result.items(), key=lambda kv: -kv[1]))
    if len(params) == 1:
        notes.append("only one searched parameter, so its importance is trivially 1.0")
    return Importances(metric, out, "; ".join(notes))


def pruning(study: optuna.Study, trials: list[FrozenTrial]) -> Pruning | None:
    """Epochs trained vs the full budget of every finished trial; None where the store lacks either.
    A trial and its retry count once: the retry (records.retried), whose epochs run include those
    it resumed from its checkpoint."""
    gone = retried(trials)
    finished = [
        t
        for t in trials
        if t.state.is_finished() and t.number not in gone and isinstance(t.user_attrs.get("epochs_run"), int)
    ]
    epochs = study.user_attrs.get("epochs")
    if not isinstance(epochs, int) or epochs <= 0 or not finished:
        return None
    # Each trial against its own budget: a searched `epochs`, or a study resumed with another train.epochs.
    own = {t.number: own_epochs(t, epochs) for t in finished}
    run = sum(min(t.user_attrs["epochs_run"], own[t.number]) for t in finished)
    budget = sum(own.values())
    problem = [t for t in finished if t.state == TrialState.FAIL or status(t) in PROBLEM_STATUSES]
    pruned = [t for t in finished if t.state == TrialState.PRUNED and t.number not in {p.number for p in problem}]
    short = lambda ts: sum(max(0, own[t.number] - t.user_attrs["epochs_run"]) for t in ts)  # noqa: E731
    return Pruning(
        epochs=epochs,
        trials=len(finished),
        budget=budget,
        run=run,
        saved=budget - run,
        saved_pct=100.0 * (budget - run) / budget,
        pruned=len(pruned),
        pruned_saved=short(pruned),
        stopped=sum(1 for t in problem if t.user_attrs["epochs_run"] < own[t.number]),
        stopped_saved=short(problem),
        budgets=tuple(sorted(set(own.values()))),
    )


def reproducibility(
    study: optuna.Study, trials: list[FrozenTrial], best: FrozenTrial, folder: str, command: str
) -> Reproducibility:
    versions = [t.user_attrs["versions"] for t in trials if isinstance(t.user_attrs.get("versions"), dict)]
    devices = Counter(str(t.user_attrs["device"]) for t in trials if t.user_attrs.get("device"))
    threads = sorted({t.user_attrs["threads"] for t in trials if isinstance(t.user_attrs.get("threads"), int)})
    study_file = study.user_attrs.get("study_file") or (str(Path(folder) / STUDY_FILE) if folder else "unknown")
    return Reproducibility(
        seed=study.user_attrs.get("seed"),
        study_file=str(study_file),
        versions={k: str(v) for k, v in (best.user_attrs.get("versions") or (versions[0] if versions else {})).items()},
        versions_vary=len({json.dumps(v, sort_keys=True) for v in versions}) > 1,
        devices=dict(devices.most_common()),
        threads=tuple(threads),
        command=command,
    )


def compute(
    study: optuna.Study, *, storage: str = "", folder: str = "", command: str = "", study_toml: str = ""
) -> Findings:
    """Everything the report says about ``study``. Needs at least one COMPLETE trial (the caller checks)."""
    trials = study.get_trials(deepcopy=False)
    complete = complete_trials(trials)
    if not complete:
        raise ValueError("compute needs at least one complete trial")
    metrics, directions = metric_names(study), study.directions
    top = ranked(complete, directions[0] == StudyDirection.MAXIMIZE)
    best = top[0]
    space = searched_params(complete)
    imps = tuple(importances(study, complete, list(space), m, i) for i, m in enumerate(metrics))
    first = imps[0].by_evaluator
    ped = first.get("PED-ANOVA", {})
    order = sorted(space, key=lambda p: (-ped.get(p, 0.0), -first.get("fANOVA", {}).get(p, 0.0), p))
    ev = evidence.compute(
        study, trials, complete, {n: space[n] for n in order}, metrics[0], fmt, label(metrics[0]), importances
    )
    effects = [
        ParamEffect(
            name=name,
            kind=ev.at_final[name].kind,
            log=ev.at_final[name].log,
            importance={e: v[name] for e, v in first.items() if name in v},
            groups=ev.at_final[name].groups,
        )
        for name in order
    ]
    counts = counts_by_state(trials)
    problems = tuple(row(t) for t in trials if t.state == TrialState.FAIL or status(t) in PROBLEM_STATUSES)
    pareto = tuple(row(t) for t in sorted(study.best_trials, key=lambda t: t.number)) if len(directions) > 1 else ()
    return Findings(
        study_name=study.study_name,
        storage=storage,
        folder=folder,
        description=str(study.user_attrs.get("description", "")),
        metrics=metrics,
        directions=tuple(d.name.lower() for d in directions),
        counts=counts,
        best=row(best),
        best_config=dict(best.user_attrs.get("config") or {}),
        pareto=pareto,
        top=tuple(row(t) for t in top[:TOP_N]),
        importances=imps,
        params=tuple(effects),
        pruning=pruning(study, trials),
        problems=problems,
        reproducibility=reproducibility(study, trials, best, folder, command),
        study_toml=str(study.user_attrs.get("study_toml") or study_toml),
        evidence=ev,
    )


def trials_table(study: optuna.Study):
    """One row per trial for trials.csv: Optuna's dataframe, big user attrs left out, the rest as JSON."""
    df = study.trials_dataframe(
        attrs=("number", "state", "value", "datetime_start", "datetime_complete", "duration", "params", "user_attrs"),
        multi_index=False,
    )
    big = [c for c in df.columns if c in ("user_attrs_curve", "user_attrs_config")]
    df = df.drop(columns=big)
    for column in df.columns:
        if df[column].map(lambda v: isinstance(v, (dict, list, tuple))).any():
            df[column] = df[column].map(
                lambda v: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v
            )
    if "duration" in df.columns:
        df["duration"] = df["duration"].map(lambda d: d.total_seconds() if hasattr(d, "total_seconds") else d)
    # the learning curve, one column per epoch: what the report's epoch-by-epoch numbers are made of
    # (a multi-objective trial reports nothing to Optuna: its recorded curve gives the same columns)
    curves = {t.number: epoch_values(t) for t in study.get_trials(deepcopy=False)}
    for e in sorted({e for c in curves.values() for e in c}):
        df[f"intermediate_value_{e}"] = df["number"].map(lambda n, e=e: curves[n].get(e))
    return df
