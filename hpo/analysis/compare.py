"""One report across studies: ``python -m hpo.report studies/lenet_lr studies/cnn_schedule``.

Per study: its best trial (val and test accuracy), trials, epochs and time spent, and one line of
what it found; the best trials' learning curves overlaid; the parameters they share, side by side.
The numbers come from each study's own ``hpo.analysis.findings``; this module lays them next to each other.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import optuna
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from hpo.analysis.findings import STATES, Findings, fmt, label

PNG = "learning_curves.png"


@dataclass(frozen=True)
class Entry:
    folder: str
    findings: Findings
    epochs_trained: int
    seconds: float
    curve: dict[int, float]  # the best trial's validation value per epoch
    line: str  # what the study found, in one line


def _line(f: Findings) -> str:
    ev = f.evidence
    best = f"best {label(f.metrics[0])} {fmt(f.metrics[0], f.best.values[0])} (trial #{f.best.number})"
    if ev is not None and ev.thin:
        return f"{best}; too few trials to tell any effect from noise."
    for p in f.params:
        for eff in (ev.at_rung.get(p.name), ev.at_final.get(p.name)) if ev is not None else ():
            if eff is not None and eff.clear:
                return f"{best}; {eff.sentence}"
    return f"{best}; no parameter showed a clear effect." if f.params else f"{best}; nothing was searched."


def entry(folder: str, study: optuna.Study, f: Findings) -> Entry:
    trials = study.get_trials(deepcopy=False)
    epochs = sum(t.user_attrs.get("epochs_run", 0) or 0 for t in trials if t.state.is_finished())
    seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete and t.datetime_start
    )
    best = next(t for t in trials if t.number == f.best.number)
    return Entry(folder, f, int(epochs), seconds, dict(sorted(best.intermediate_values.items())), _line(f))


def curves_figure(entries: list[Entry]) -> go.Figure:
    fig = go.Figure(
        [
            go.Scatter(
                x=list(e.curve),
                y=list(e.curve.values()),
                mode="lines+markers",
                name=f"{e.findings.study_name} (trial #{e.findings.best.number})",
            )
            for e in entries
            if e.curve
        ]
    )
    fig.update_layout(
        title="Learning curves of each study's best trial",
        xaxis={"title": "epoch"},
        yaxis={"title": "val acc (%)"},
        legend={"title": "study"},
    )
    return fig


def tables(entries: list[Entry]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for each table of the comparison."""
    best = ["study", "best trial", "val acc", "test acc", "trials", "epochs trained", "time spent"]
    rows = []
    for e in entries:
        f = e.findings
        states = ", ".join(f"{n} {STATES.get(s, s.lower())}" for s, n in f.counts.items())
        rows.append(
            [
                f.study_name,
                f"#{f.best.number}",
                fmt(f.metrics[0], f.best.values[0]),
                fmt("test_acc", f.best.test_acc),
                f"{sum(f.counts.values())} ({states})",
                str(e.epochs_trained),
                f"{e.seconds / 60:.1f} min",
            ]
        )
    out = [("Best per study", best, rows)]
    names = [e.findings.study_name for e in entries]
    shared = [
        p
        for p in dict.fromkeys(n for e in entries for n in e.findings.param_names)
        if sum(p in e.findings.param_names for e in entries) >= 2
    ]
    if shared:
        side = []
        for p in shared:
            cells = []
            for e in entries:
                ev = e.findings.evidence
                text = ev.sentences.get(p, "") if ev is not None else ""
                cells.append(text.removeprefix(f"{p}: ") if text else "not searched")
            side.append([p, *cells])
        out.append(("Shared parameters, side by side", ["parameter", *names], side))
    return out


def markdown(entries: list[Entry], png: bool) -> str:
    lines = ["# Comparison: " + " vs ".join(e.findings.study_name for e in entries), "", "## What each study found", ""]
    lines += [f"- **{e.findings.study_name}** (`{e.folder}`): {e.line}" for e in entries] + [""]
    for title, header, rows in tables(entries):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows] + [""]
    lines += ["## Learning curves", ""]
    lines += (
        [f"![Learning curves of each study's best trial]({PNG})", ""] if png else ["The figure is in `index.html`.", ""]
    )
    return "\n".join(lines)


def page(entries: list[Entry], fig: go.Figure) -> str:
    """index.html: the same words and tables, the figure interactive; plotly.js loaded once, locally."""
    esc = html.escape
    parts = [
        f"<h1>Comparison: {esc(' vs '.join(e.findings.study_name for e in entries))}</h1>",
        "<h2>What each study found</h2><ul>",
    ]
    parts += [
        f"<li><strong>{esc(e.findings.study_name)}</strong> (<code>{esc(e.folder)}</code>): {esc(e.line)}</li>"
        for e in entries
    ]
    parts.append("</ul>")
    for title, header, rows in tables(entries):
        parts.append(
            f"<h2>{esc(title)}</h2><table><thead><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in header)
            + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table>"
        )
    parts.append(
        "<h2>Learning curves</h2>"
        + pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id="fig-learning_curves")
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Comparison</title>'
        '<script src="plotly.min.js"></script></head>\n<body>\n' + "\n".join(parts) + "\n</body></html>\n"
    )


def write(entries: list[Entry], out: Path, png: bool = True) -> tuple[Path, str]:
    """report.md, index.html and the curves' PNG; returns (index path, PNG error or "")."""
    out.mkdir(parents=True, exist_ok=True)
    fig = curves_figure(entries)
    error = ""
    if png:
        try:
            pio.write_images([fig], [out / PNG], width=[900], height=[500], scale=1)
        except Exception as e:  # kaleido/Chromium missing: the pages still get written
            error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    (out / "report.md").write_text(markdown(entries, png=png and not error), encoding="utf-8")
    (out / "plotly.min.js").write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    (out / "index.html").write_text(page(entries, fig), encoding="utf-8")
    return out / "index.html", error
