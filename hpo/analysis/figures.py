"""Draw what ``hpo.analysis.findings`` computed: plotly figures (Optuna's own wherever it has one), and the
report's pages: one offline index.html, report.md with PNGs, trials.csv.

The words and tables come from ``Findings``; this module only lays them out. Both pages are
rendered from one list of blocks, so report.md and index.html always say the same thing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
from optuna.trial import TrialState

from hpo.analysis import evidence, pages, summary
from hpo.analysis.findings import STATES, Findings, Importances, TrialRow, fmt, fmt_value, label, trials_table
from hpo.analysis.groups import MIN_GROUP, Group, display
from hpo.analysis.pages import Bullets, Code, Figure, Heading, Para, Table
from hpo.errors import counted, reason
from hpo.records import ending

PLOTLY_JS = pages.PLOTLY_JS
PNG_SIZE = (900, 500)
PNG_SIZES = {"contour_matrix": (900, 900), "parallel_coordinate": (1000, 500)}
PRUNED_STYLE = {"color": "#b0b0b0", "dash": "dash", "width": 1}
CONTOUR_MATRIX_MAX = 4


# ---------------------------------------------------------------- figures


def _target(f: Findings, index: int = 0) -> dict:
    """Optuna's target/target_name for one objective; nothing for a single-objective study."""
    if not f.multi_objective:
        return {"target_name": label(f.metrics[0])}
    return {"target": lambda t, i=index: t.values[i], "target_name": label(f.metrics[index])}


def importance_figure(imp: Importances) -> go.Figure:
    """Both evaluators side by side, from the computed numbers (no second evaluation)."""
    names = list(next(iter(imp.by_evaluator.values())))[::-1]  # most important on top
    fig = go.Figure(
        [
            go.Bar(
                name=e,
                y=[display(n) for n in names],
                x=[v.get(n, 0.0) for n in names],
                orientation="h",
                text=[f"{v.get(n, 0.0):.2f}" for n in names],
                textposition="outside",
            )
            for e, v in imp.by_evaluator.items()
        ]
    )
    fig.update_layout(
        title=f"Parameter importance for {label(imp.metric)}: PED-ANOVA (Optuna's default) and fANOVA",
        barmode="group",
        xaxis={"title": "importance (normalised to sum 1)", "range": [0, 1.1]},
        yaxis={"title": "parameter"},
        legend={"title": "evaluator"},
    )
    return fig


def learning_curves(study: optuna.Study, f: Findings) -> go.Figure:
    """Optuna's intermediate-values plot, with pruned trials gray and dashed and the best one bold."""
    fig = optuna.visualization.plot_intermediate_values(study)
    states = {t.number: t for t in study.get_trials(deepcopy=False)}
    for trace in fig.data:
        number = int(re.sub(r"\D", "", trace.name or "") or -1)
        trial = states.get(number)
        if trial is None:
            continue
        status = ending(trial)
        if trial.state == TrialState.PRUNED:
            trace.update(line=PRUNED_STYLE, marker={"color": PRUNED_STYLE["color"]}, opacity=0.8)
        elif trial.state == TrialState.RUNNING:
            trace.update(line={"dash": "dot"})
        elif number == f.best.number:
            trace.update(line={"width": 4})
            status = "best"
        trace.update(name=f"trial {number} ({status})")
    last = max((max(t.intermediate_values) for t in states.values() if t.intermediate_values), default=0)
    ticks = {"tickmode": "linear", "tick0": 1, "dtick": 1} if last <= 20 else {}  # whole epochs
    fig.update_layout(
        title="Learning curves: validation value per epoch (pruned trials gray, dashed; best bold)",
        xaxis={"title": "epoch", **ticks},
        yaxis={"title": label(f.metrics[0]) if f.metrics[0] == "val_acc" else "intermediate value"},
    )
    return fig


def build(study: optuna.Study, f: Findings) -> dict[str, go.Figure]:
    """Every figure the study supports, in reading order; the names are the PNG files' names."""
    vis = optuna.visualization
    figs: dict[str, go.Figure] = {}
    for i, metric in enumerate(f.metrics):
        suffix = f"_{metric}" if f.multi_objective else ""
        figs["history" + suffix] = vis.plot_optimization_history(study, **_target(f, i))
    if f.multi_objective and len(f.metrics) in (2, 3):
        figs["pareto_front"] = vis.plot_pareto_front(study, target_names=[label(m) for m in f.metrics])
    for imp in f.importances:
        if imp.by_evaluator and any(imp.by_evaluator.values()):
            figs["importance" + (f"_{imp.metric}" if f.multi_objective else "")] = importance_figure(imp)
    names = list(f.param_names)
    if len(names) >= 2:
        figs["contour"] = vis.plot_contour(study, params=names[:2], **_target(f))
    if len(names) >= 3:
        figs["contour_matrix"] = vis.plot_contour(study, params=names[:CONTOUR_MATRIX_MAX], **_target(f))
    if names:
        figs["slice"] = vis.plot_slice(study, params=names, **_target(f))
        figs["parallel_coordinate"] = vis.plot_parallel_coordinate(study, params=names, **_target(f))
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figs["learning_curves"] = learning_curves(study, f)
    figs["timeline"] = vis.plot_timeline(study)
    return figs


def png_size(name: str) -> tuple[int, int]:
    return PNG_SIZES.get(name, PNG_SIZE)


def write_pngs(figs: dict[str, go.Figure], out: Path) -> dict[str, str]:
    """All figures in one kaleido call (one Chromium start, not one per figure): {name: file name}."""
    names = list(figs)
    files = [f"{n}.png" for n in names]
    pio.write_images(
        [figs[n] for n in names],
        [out / p for p in files],
        width=[png_size(n)[0] for n in names],
        height=[png_size(n)[1] for n in names],
        scale=1,
    )
    return dict(zip(names, files, strict=True))


# ---------------------------------------------------------------- the document, as blocks


CAPTIONS = {
    "history": "Optimization history",
    "pareto_front": "Pareto front",
    "importance": "Parameter importance",
    "contour": "Contour of the two most important parameters",
    "contour_matrix": "Contour matrix of the top parameters",
    "slice": "Slice: each parameter against the objective",
    "parallel_coordinate": "Parallel coordinates",
    "learning_curves": "Learning curves (intermediate values)",
    "timeline": "Timeline",
}


def caption(name: str) -> str:
    base, _, metric = name.partition("_") if name.startswith(("history_", "importance_")) else (name, "", "")
    return CAPTIONS.get(base, name) + (f" ({label(metric)})" if metric else "")


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {fmt_value(v)}" for k, v in params.items()) or "none"


def _toml(config: dict, prefix: str = "") -> str:
    """A resolved config as the TOML a study file would hold."""

    def value(v):
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, str):
            return '"' + v.replace('"', '\\"') + '"'
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v) if isinstance(v, float) else str(v)

    plain = [f"{k} = {value(v)}" for k, v in config.items() if not isinstance(v, dict) and v is not None]
    tables = [f"[{prefix}{k}]\n" + _toml(v, f"{prefix}{k}.") for k, v in config.items() if isinstance(v, dict)]
    return "\n\n".join(x for x in ["\n".join(plain), *tables] if x)


def _values(f: Findings, r: TrialRow) -> tuple[str, ...]:
    return tuple(fmt(m, v) for m, v in zip(f.metrics, r.values or (), strict=False))


def _trial_table(f: Findings, rows: tuple[TrialRow, ...], rank: bool = True) -> Table:
    names = list(f.param_names)
    # "epochs run": a study may search `epochs`, and that column holds its value
    header = (("rank",) if rank else ()) + (
        "trial",
        *(label(m) for m in f.metrics),
        "test acc",
        "epochs run",
        *map(display, names),
    )
    return Table(
        header,
        tuple(
            ((str(i),) if rank else ())
            + (
                f"#{r.number}" + (" (warm start)" if r.number in f.warm_started else ""),
                *_values(f, r),
                fmt("test_acc", r.test_acc),
                str(r.epochs_run if r.epochs_run is not None else ""),
                *(fmt_value(r.params[n]) if n in r.params else "" for n in names),
            )
            for i, r in enumerate(rows, 1)
        ),
    )


def branch_blocks(f: Findings) -> list:
    """Per-branch results of a conditional study (hpo.analysis.branches), and which trials were warm-started."""
    out: list = []
    if f.warm_started:
        out += [
            Heading("Warm start"),
            Para(
                "These trials ran first, with the best configurations of another study: "
                + ", ".join(f"#{n} from `{src}`" for n, src in sorted(f.warm_started.items()))
                + "."
            ),
        ]
    b, m = f.branches, f.metrics[0]
    if not b:
        return out
    ranked = list(dict.fromkeys(n for v in f.importances[0].by_evaluator.values() for n in v))  # what the table shows
    out += [
        Heading("Branches"),
        Para(
            f"The search is conditional on {', '.join(map(display, b.by))}: some parameters exist only in some "
            f"trials. The importances above rank {', '.join(map(display, ranked)) or 'no parameter'}; "
            "each branch below has its own, on its trials alone (complete trials; pruned ones are counted apart)."
        ),
        Table(
            ("branch", "complete", "pruned", f"mean {label(m)}", f"best {label(m)}", f"worst {label(m)}", "best trial"),
            tuple(
                (
                    x.label,
                    str(x.trials),
                    str(x.pruned),
                    fmt(m, x.mean),
                    fmt(m, x.best),
                    fmt(m, x.worst),
                    f"#{x.best_trial}" if x.best_trial is not None else "—",
                )
                for x in b.branches
            ),
        ),
    ]
    for x in (x for x in b.branches if x.trials):
        out.append(Heading(f"Branch {x.label} ({counted(x.trials, 'complete trial')})", 3))
        for p in x.params:
            out.append(Para(p.sentence))
            if sum(1 for g in p.groups if g.n) < 2:  # one value or one bin: the sentence says it all
                continue
            out.append(
                Table(
                    ("value" if p.kind != "range" else "range", "trials", f"mean {label(m)}", f"best {label(m)}"),
                    tuple((g.label, str(g.n), fmt(m, g.mean), fmt(m, g.best)) for g in p.groups),
                )
            )
        imp = x.importance
        if imp.by_evaluator:
            names = list(next(iter(imp.by_evaluator.values())))
            out.append(
                Table(
                    ("parameter (in this branch)", *imp.by_evaluator),
                    tuple(
                        (display(n), *(f"{v[n]:.3f}" if n in v else "—" for v in imp.by_evaluator.values()))
                        for n in names
                    ),
                )
            )
        if imp.note:
            out.append(Para(f"Importance in this branch: {imp.note}."))
    return out


def document(f: Findings, figures: list[str]) -> list:
    """The report as blocks, section by section; a figure appears only when it is in ``figures``."""
    have = set(figures)

    def fig(name: str) -> list:
        return [Figure(name, caption(name))] if name in have else []

    history = [b for name in figures if name.startswith("history") for b in fig(name)]
    return [
        *_overview(f),
        *_best_trial(f, fig),
        *history,
        *_top_trials(f),
        *_confirmation_blocks(f),
        *_importance(f, fig),
        *_parameters(f, fig),
        *branch_blocks(f),
        *_pruning(f, fig),
        *_failures(f, fig),
        *_reproducibility(f),
    ]


def _overview(f: Findings) -> list:
    out: list = [Heading(f"Study {f.study_name}", 1)]
    if f.description:
        out.append(Para(f.description))
    out += [
        Heading("Summary"),
        Bullets(tuple(f"**{x.title}:** {x.text}" for x in summary.lines(f))),
        Para("Each line is read from the tables below, where every number it states is shown with its evidence."),
        Heading("Study"),
    ]
    states = ", ".join(f"{n} {STATES.get(s, s.lower())}" for s, n in f.counts.items())
    objective = ", ".join(f"{m_} ({d})" for m_, d in zip(f.metrics, f.directions, strict=True))
    out.append(
        Table(
            ("", ""),
            (
                ("study", f"`{f.study_name}`"),
                ("study file", f"`{f.reproducibility.study_file}`"),
                *((("network", _network(f.reproducibility)),) if _network(f.reproducibility) else ()),
                ("store", f"`{f.storage}`"),
                ("objective", objective),
                ("trials", f"{sum(f.counts.values())} ({states})"),
            ),
        )
    )
    return out


def _best_trial(f: Findings, fig) -> list:
    m, b = f.metrics[0], f.best
    what = "best by " + label(m) + " (one point of the Pareto front)" if f.multi_objective else "best"
    out: list = [
        Heading("Best trial"),
        Para(
            f"Trial **#{b.number}** is {what}: "
            f"{', '.join(f'{label(x)} {v}' for x, v in zip(f.metrics, _values(f, b), strict=False))}, "
            f"test acc {fmt('test_acc', b.test_acc)}, {counted(b.epochs_run or 0, 'epoch')}"
            + (f", {b.duration_s:.0f} s" if b.duration_s is not None else "")
            + f". Parameters: {_params_text(b.params)}."
        ),
    ]
    if b.class_test_acc:
        out += [
            Para(f"Its test accuracy class by class ({counted(len(b.class_test_acc), 'class', 'classes')}):"),
            Table(
                ("class", "test acc"),
                tuple((name, fmt("test_acc", acc)) for name, acc in b.class_test_acc.items()),
            ),
        ]
    if f.best_config:
        out += [
            Para("Its full configuration, as it ran (with any `--set` overrides given to `hpo.run`):"),
            Code(_toml(f.best_config), "toml"),
        ]
    if f.multi_objective:
        out += [
            Heading("Pareto front", 3),
            Para(f"{counted(len(f.pareto), 'trial')} where no other trial is better on every objective."),
            _trial_table(f, f.pareto, rank=False),
            *fig("pareto_front"),
        ]
    return out


def _top_trials(f: Findings) -> list:
    return [Heading(f"Top {len(f.top)} trials by {label(f.metrics[0])}"), _trial_table(f, f.top)]


def _importance(f: Findings, fig) -> list:
    out: list = [Heading("Parameter importance")]
    if not f.params:
        out.append(Para("No parameter was searched (every setting is fixed), so there is nothing to rank."))
    for imp in f.importances if f.params else ():
        evaluators = list(imp.by_evaluator)
        if evaluators:
            names = list(next(iter(imp.by_evaluator.values())))
            out.append(
                Table(
                    ("parameter", *(f"{e} ({label(imp.metric)})" for e in evaluators)),
                    tuple(
                        (
                            display(n),
                            *(f"{imp.by_evaluator[e][n]:.3f}" if n in imp.by_evaluator[e] else "—" for e in evaluators),
                        )
                        for n in names
                    ),
                )
            )
        if imp.note:
            out.append(Para(f"{label(imp.metric)}: {imp.note}."))
        out += fig("importance" + (f"_{imp.metric}" if f.multi_objective else ""))
    out.append(
        Para(
            "PED-ANOVA (Optuna's default) asks which parameters the top 10% of trials share; fANOVA asks "
            "how much of the variance of the objective each parameter explains."
        )
    )
    return out + _rung_blocks(f) + fig("contour") + fig("contour_matrix")


def _parameters(f: Findings, fig) -> list:
    if not f.params:
        return []
    ev = f.evidence
    out: list = [Heading("Each parameter")]
    for p in f.params:
        scores = ", ".join(f"{e} {v:.2f}" for e, v in p.importance.items())
        out.append(Heading(f"{display(p.name)}" + (f" (importance: {scores})" if scores else ""), 3))
        if ev is None:
            continue
        out.append(Bullets(ev.parts.get(p.name, ())))
        out += _param_evidence(f, p.name)
    return out + fig("slice") + fig("parallel_coordinate")


def _cell_gain(e, g: Group) -> str:
    """The best row's lead over the rest, on that row only."""
    return f"{e.gain:+.1f} points" if e.best is g and e.gain is not None else ""


def group_table(f: Findings, e, final: bool, extra: tuple[Group, ...] = ()) -> Table:
    """One parameter's groups at one epoch, with the merged rows its sentence states (the best region,
    below and above it, the rest) and, in a joint search, the partial dependence at each group."""
    m = f.metrics[0]
    pd = any(g.pd is not None for g in e.groups)
    gain = e.best is not None and e.gain is not None
    first = {"choice": "value", "value": "value", "range": "range" + (" (log bins)" if e.log else "")}[e.kind]
    header = (
        first,
        "trials",
        f"mean {label(m)}",
        "90% interval",
        f"best {label(m)}",
        f"worst {label(m)}",
        "mean test acc" if final else "how they ended",
        *(("partial dependence",) if pd else ()),
        *(("vs the rest",) if gain else ()),
    )
    rows = []
    for g in (*e.groups, *e.merged, *extra):
        merged = g.members or g in extra
        cells = (
            (f"*{g.label}*" if merged else g.label),
            str(g.n),
            fmt(m, g.mean) if g.n and g.mean is not None else "—",
            _interval(m, g.lo, g.hi, g.n) if g.n else "—",
            fmt(m, g.best) if g.best is not None else "—",
            fmt(m, g.worst) if g.worst is not None else "—",
            (fmt("test_acc", g.mean_test) if g.mean_test is not None else "—")
            if final
            else (", ".join(f"{n} {s}" for s, n in g.ended) or "—"),
            *((fmt(m, g.pd) if g.pd is not None else "—",) if pd else ()),
            *((_cell_gain(e, g) or "—",) if gain else ()),
        )
        rows.append(cells)
    return Table(header, tuple(rows))


def _verdict(e) -> str:
    if e.p_value is None:
        return "too few trials"
    return "clear effect" if e.clear else "no clear effect"


def _pruning(f: Findings, fig) -> list:
    out: list = [Heading("Learning curves and pruning")]
    pr = f.pruning
    if pr:
        each = " or ".join(map(str, pr.budgets or (pr.epochs,)))
        each = f"{each} epochs each" + (", as searched" if len(pr.budgets) > 1 else "")
        text = (
            f"{counted(pr.trials, 'finished trial')} had a budget of {pr.budget} epochs ({each}; a trial and its "
            f"resumed retry count once); they trained {pr.run}, so stopping early saved "
            f"**{pr.saved} epochs ({pr.saved_pct:.0f}%)**. "
            f"The pruner stopped {counted(pr.pruned, 'trial')} ({pr.pruned_saved} epochs saved)"
        )
        text += (
            f"; {pr.stopped} more stopped on their own (divergence, collapse, failure: {pr.stopped_saved} epochs)."
            if pr.stopped
            else "."
        )
        out.append(Para(text))
    else:
        out.append(Para("The store does not record the epoch budget or epochs run, so what pruning saved is unknown."))
    return out + fig("learning_curves")


def _failures(f: Findings, fig) -> list:
    out: list = [Heading("Failures, divergences and collapses")]
    if f.problems:
        out.append(
            Table(
                ("trial", "state", "status", "epochs", "reason"),
                tuple(
                    (
                        f"#{r.number}",
                        STATES.get(r.state, r.state.lower()),
                        r.status or "",
                        str(r.epochs_run if r.epochs_run is not None else ""),
                        r.reason or "(no reason recorded)",
                    )
                    for r in f.problems
                ),
            )
        )
    else:
        out.append(Para("None: no trial failed, diverged or collapsed."))
    return out + fig("timeline")


NET_KEYS = ("net_file", "net_sha256")  # the versions hpo.search.objective records for your own net


def _network(rep) -> str:
    """Your own net's file and the start of its sha256, as the best trial recorded them; "" for a built-in net."""
    v = rep.versions
    return f"`{v['net_file']}` (sha256 `{v['net_sha256'][:12]}`)" if all(k in v for k in NET_KEYS) else ""


def _reproducibility(f: Findings) -> list:
    rep = f.reproducibility
    versions = ", ".join(f"{k} {v}" for k, v in rep.versions.items() if k not in NET_KEYS) or "not recorded"
    out: list = [
        Heading("Reproducibility"),
        Bullets(
            (
                f"seed: {rep.seed if rep.seed is not None else 'not recorded'}",
                f"study file: `{rep.study_file}`",
                *((f"network file: {_network(rep)}",) if _network(rep) else ()),
                f"versions (best trial): {versions}"
                + ("; **trials ran on different versions**" if rep.versions_vary else ""),
                "devices: "
                + (", ".join(f"{d} ({counted(n, 'trial')})" for d, n in rep.devices.items()) or "not recorded")
                + (f"; CPU threads: {', '.join(map(str, rep.threads))}" if rep.threads else ""),
            )
        ),
    ]
    if rep.command:
        out += [Para("To rerun the study, and this report:"), Code(rep.command, "sh")]
    if f.study_toml:
        out += [Para("The study file it ran from:"), Code(f.study_toml.rstrip(), "toml")]
    return out


# ---------------------------------------------------------------- every trial counted (hpo.analysis.evidence)


def _interval(metric: str, lo, hi, n: int) -> str:
    if lo is None or hi is None:
        return "—"
    return f"{fmt(metric, lo)}–{fmt(metric, hi)}" + (" (too few trials)" if n < MIN_GROUP else "")


def _rung_blocks(f: Findings) -> list:
    """Every epoch with the trials that reached it, and the importances where all states still count."""
    ev = f.evidence
    if ev is None or not ev.rungs:
        return []
    m = "val_acc"  # what every trial records each epoch (hpo.records.epoch_values), whatever the objectives
    out = [
        Heading("Every trial, epoch by epoch", 3),
        Para(
            "A pruned or diverged trial's last value is not comparable with a full run's, "
            "but its value at an epoch it reached is comparable with every other trial's value there. "
            "Trials that reached each epoch, by how they ended:"
        ),
        Table(
            ("epoch", "trials", "of which", f"mean {label(m)}", f"best {label(m)}"),
            tuple(
                (
                    str(r.epoch),
                    str(r.trials),
                    ", ".join(f"{n} {s}" for s, n in r.states.items()),
                    fmt(m, r.mean),
                    fmt(m, r.best),
                )
                for r in ev.rungs
            ),
        ),
    ]
    if ev.rung is None:
        return out
    if ev.rung.final:
        out.append(
            Para(
                f"Every trial with a value reached the final epoch, "
                f"so the importances above already use them all ({ev.rung.text()})."
            )
        )
        return out
    out.append(
        Para(
            f"Importances at epoch {ev.rung.epoch}, the deepest epoch that at least 75% of the trials reached "
            f"({ev.rung.text()}), beside those above (final epoch, {ev.final.trials} complete trials):"
        )
    )
    if ev.rung_importance:
        names = list(next(iter(ev.rung_importance.values())))
        final = f.importances[0].by_evaluator
        out.append(
            Table(
                (
                    "parameter",
                    *(f"{e} at epoch {ev.rung.epoch}" for e in ev.rung_importance),
                    *(f"{e} final" for e in final),
                ),
                tuple(
                    (
                        display(n),
                        *(f"{v[n]:.3f}" if n in v else "—" for v in ev.rung_importance.values()),
                        *(f"{v[n]:.3f}" if n in v else "—" for v in final.values()),
                    )
                    for n in names
                ),
            )
        )
    if ev.rung_importance_note:
        out.append(Para(f"At epoch {ev.rung.epoch}: {ev.rung_importance_note}."))
    return out


def _param_evidence(f: Findings, name: str) -> list:
    """The tables behind a parameter's sentence: the tests, the final epoch's groups, the groups at
    the analysis epoch (all states) and where its trials stopped early."""
    ev = f.evidence
    rung, fin = ev.at_rung.get(name), ev.at_final.get(name)
    at_rung = rung is not None and ev.rung is not None and not ev.rung.final
    tests = []
    if at_rung:
        tests.append((f"epoch {ev.rung.epoch}, every trial that reached it", rung))
    if fin is not None:
        tests.append(("final epoch, complete trials", fin))
    out: list = [
        Table(
            ("read at", "trials", "p-value", "verdict"),
            tuple(
                (where, str(e.trials), f"{e.p_value:.3f}" if e.p_value is not None else "—", _verdict(e))
                for where, e in tests
            ),
        )
    ]
    if fin is not None:
        out += [Para(f"Final epoch, the {counted(fin.trials, 'complete trial')}:"), group_table(f, fin, final=True)]
    if at_rung:
        missing = evidence.missing(ev, name)
        out += [
            Para(f"At epoch {ev.rung.epoch}, every trial that reached it ({ev.rung.text()}):"),
            group_table(f, rung, final=False, extra=(missing,) if missing is not None else ()),
        ]
    stop = ev.stops.get(name)
    if stop is not None and stop.regions and sum(r.stopped for r in stop.regions):
        out.append(
            Para(
                "Where its trials stopped early"
                + (f" (p = {stop.p_value:.3f})" if stop.p_value is not None else "")
                + ":"
            )
        )
        out.append(
            Table(
                ("region", "trials", "stopped early", "by epoch", "why"),
                tuple(
                    (
                        r.label,
                        str(r.trials),
                        str(r.stopped),
                        str(r.by_epoch) if r.stopped else "—",
                        ", ".join(f"{n} {s}" for s, n in r.statuses.items()) or "—",
                    )
                    for r in stop.regions
                ),
            )
        )
    return out


def _confirmation_blocks(f: Findings) -> list:
    ev = f.evidence
    c = ev.confirmations if ev is not None else None
    if c is None:
        return []
    m = f.metrics[0]
    return [
        Heading("Is the best trial lucky? Seed confirmations", 3),
        Para(c.sentence),
        Table(
            ("configuration of trial", "runs", f"mean {label(m)}", "sd", "each run", "did not complete", "not pooled"),
            tuple(
                (
                    f"#{x.source}",
                    str(len(x.values)),
                    fmt(m, x.mean),
                    f"{x.sd:.2f}" if x.sd is not None else "—",
                    ", ".join(fmt(m, v) for v in x.values),
                    str(x.stopped),
                    "; ".join(x.other_recipe) or "—",  # another recipe's runs: another experiment
                )
                for x in c.configs
            ),
        ),
    ]


# ---------------------------------------------------------------- rendering


def render_markdown(f: Findings, pngs: dict[str, str]) -> str:
    """report.md: the blocks, each figure as its PNG ({figure name: file name}); no PNGs, no figures."""
    return pages.markdown(document(f, list(pngs)), pngs)


def render_html(f: Findings, figs: dict[str, go.Figure]) -> str:
    """index.html: the same blocks, each figure as an interactive div; plotly.js loaded once, locally."""
    return pages.html_page(f"Study {f.study_name}", document(f, list(figs)), figs, png_size)


@dataclass
class Written:
    index: Path
    markdown: Path
    csv: Path
    pngs: list[Path] = field(default_factory=list)
    png_error: str = ""  # why there are no PNGs, when export was asked for and failed


def write_report(study: optuna.Study, f: Findings, out: Path, *, png: bool = True) -> Written:
    out.mkdir(parents=True, exist_ok=True)
    figs = build(study, f)
    pngs, error = {}, ""
    if png:
        try:
            pngs = write_pngs(figs, out)
        except Exception as e:  # kaleido/Chromium missing or broken: the pages still get written
            error = reason(e, typed=True, limit=200)
    written = Written(
        index=out / "index.html",
        markdown=out / "report.md",
        csv=out / "trials.csv",
        pngs=[out / p for p in pngs.values()],
        png_error=error,
    )
    written.markdown.write_text(render_markdown(f, pngs), encoding="utf-8")
    (out / PLOTLY_JS).write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    written.index.write_text(render_html(f, figs), encoding="utf-8")
    trials_table(study).to_csv(written.csv, index=False)
    return written
