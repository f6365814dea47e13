"""What the whole study supports, every trial counted: the rung view, importances at the analysis
rung, effects with intervals (at that rung and at the final epoch), early-stop regions, seed
confirmations; and the sentences the findings are built from. Plain data; hpo.analysis.figures draws it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpo.analysis import effects, rungs
from hpo.analysis.confirmations import Confirmations, summarise
from hpo.analysis.groups import Group, display, edge, value_label
from hpo.errors import counted
from hpo.records import STATUS, epoch_values, retried


@dataclass(frozen=True)
class Basis:
    """Which trials a table or a sentence uses."""

    epoch: int
    trials: int
    states: dict[str, int]
    final: bool  # the final epoch of complete trials only

    def text(self) -> str:
        states = ", ".join(f"{n} {s}" for s, n in self.states.items())
        return f"epoch {self.epoch}, {counted(self.trials, 'trial')} ({states})"


@dataclass(frozen=True)
class Evidence:
    trials: int  # finished trials with a searched parameter
    thin: str  # "" or the sentence that says the evidence is thin
    rungs: tuple[rungs.Rung, ...]
    rung: Basis | None  # the analysis rung (all states); None without learning curves
    final: Basis
    rung_importance: dict[str, dict[str, float]]  # evaluator -> {param: importance} at the rung
    rung_importance_note: str
    at_rung: dict[str, effects.Effect]  # per parameter, the values at the analysis rung
    at_final: dict[str, effects.Effect]  # per parameter, the final values of complete trials
    stops: dict[str, rungs.StopRegions]
    confirmations: Confirmations | None
    sentences: dict[str, str]  # per parameter: what the findings say about it
    parts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # the same, one clause per basis
    missing: tuple[tuple[dict, str], ...] = ()  # (params, status) of trials that stopped before the analysis rung


def compute(
    study: optuna.Study,
    trials: list[FrozenTrial],
    complete: list[FrozenTrial],
    space: dict,
    metric: str,
    fmt,
    what: str,
    importances,
) -> Evidence:
    """``importances(study, trials, params, metric, index)`` is hpo.analysis.findings' evaluator runner."""
    gone = retried(trials)  # an interrupted or lost trial and its retry count once: the retry
    trials = [t for t in trials if t.number not in gone]
    direction = study.directions[0]
    maximize = direction == StudyDirection.MAXIMIZE
    single = len(study.directions) == 1
    names = list(space)
    finished = [t for t in trials if t.state.is_finished() and any(n in t.params for n in names)]
    epochs = study.user_attrs.get("epochs")
    # every study gets the epoch table (a multi-objective one from its curves); the analysis at a
    # rung compares one objective, so it is a single-objective study's
    ladder = rungs.ladder([t for t in trials if t.state != TrialState.RUNNING])
    with_curve = sum(1 for t in trials if epoch_values(t) and t.state != TrialState.RUNNING)
    rung = rungs.analysis_rung(ladder, with_curve) if single else None
    final_epoch = epochs if isinstance(epochs, int) else (ladder[-1].epoch if ladder else 0)
    final = Basis(final_epoch, len(complete), {"complete": len(complete)}, True)
    rung_importance, note, at_rung, basis = {}, "", {}, None
    if rung is not None and names:
        rebuilt = rungs.at_rung(trials, rung.epoch)
        basis = Basis(
            rung.epoch, len(rebuilt), dict(rung.states), rung.epoch == final_epoch and len(rebuilt) == len(complete)
        )
        imp = importances(rungs.rung_study(rebuilt, direction), rebuilt, names, metric, 0)
        rung_importance, note = imp.by_evaluator, imp.note
        ended = [t.user_attrs[STATUS] for t in rebuilt]  # rungs.at_rung keeps how each ended (records.ending)
        at_rung = effects.analyse(
            [t.params for t in rebuilt],
            [t.value for t in rebuilt],
            space,
            maximize,
            lambda v: fmt(metric, v),
            what,
            ended=ended,
        )
    at_final = (
        effects.analyse(
            [t.params for t in complete],
            [t.values[0] for t in complete],
            space,
            maximize,
            lambda v: fmt(metric, v),
            what,
            tests=[t.user_attrs.get("test_acc") for t in complete],
        )
        if names
        else {}
    )
    stops = {n: rungs.stop_regions(n, space[n], trials, space=space) for n in names}
    confirmations = summarise(trials, maximize, lambda v: fmt(metric, v)) if single else None
    n_used = max(len(complete), basis.trials if basis else 0)
    thin = ""
    if n_used < effects.MIN_TRIALS:
        thin = (
            f"Thin evidence: {len(finished)} finished trials, {n_used} with comparable values; too few to tell "
            f"any parameter's effect from noise (that takes {effects.MIN_TRIALS} or more). "
            "The tables show what they reached; they are not findings."
        )
    missing = tuple(
        (dict(t.params), rungs.status_of(t))
        for t in finished
        if basis is not None and rungs.stopped_early(t) and basis.epoch not in epoch_values(t)
    )
    ev = Evidence(
        len(finished),
        thin,
        ladder,
        basis,
        final,
        rung_importance,
        note,
        at_rung,
        at_final,
        stops,
        confirmations,
        {},
        missing,
    )
    return _with_sentences(ev)


def missing(ev: Evidence, name: str) -> Group | None:
    """The trials that never reached the analysis epoch, as a row of its table: where they sat in
    ``name`` (the label) and how they ended."""
    at = [(p[name], status) for p, status in ev.missing if name in p]
    if not at:
        return None
    values = sorted(v for v, _ in at)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        where = value_label(values[0]) if len(set(values)) == 1 else f"{edge(values[0])}–{edge(values[-1])}"
    else:
        where = ", ".join(f"{v} ({n})" for v, n in Counter(map(str, values)).most_common())
    ended = tuple(Counter(s for _, s in at).most_common())
    return Group(label=f"stopped before epoch {ev.rung.epoch} (at {where})", n=len(at), mean=None, ended=ended)


def _missing(ev: Evidence, name: str) -> str:
    row = missing(ev, name)
    if row is None:
        return ""
    why = ", ".join(f"{n} {s}" for s, n in row.ended)
    return f"; {row.n} more {'trial' if row.n == 1 else 'trials'} stopped before epoch {ev.rung.epoch} ({why})"


def _with_sentences(ev: Evidence) -> Evidence:
    """One sentence per parameter: where trials stopped early (if anywhere), then its effect at the
    analysis rung (every trial that got there) and at the final epoch (complete trials)."""
    out, clauses = {}, {}
    for name in ev.at_final or ev.at_rung:
        parts = []
        stop = ev.stops.get(name)
        if stop and stop.clear:
            parts.append("early stops: " + stop.sentence.rstrip("."))
        rung, fin = ev.at_rung.get(name), ev.at_final.get(name)
        if rung is not None and ev.rung is not None and not ev.rung.final:
            at = f"at epoch {ev.rung.epoch} ({counted(rung.trials, 'trial')} of all states)"
            parts.append(f"{at} {rung.claim}" + _missing(ev, name))
        if fin is not None:
            parts.append(f"at the final epoch ({counted(fin.trials, 'complete trial')}) {fin.claim}")
        out[name] = f"{display(name)}: " + "; ".join(parts) + "."
        clauses[name] = tuple(f"{x[0].upper()}{x[1:]}." for x in parts)
    return replace(ev, sentences=out, parts=clauses)
