"""One report across studies: ``python -m hpo.report studies/lenet_lr studies/cnn_schedule``.

Per study: its best trial (val and test accuracy), trials, epochs and time spent, and one line of
what it found; the best trials' learning curves overlaid; the parameters they share, side by side.
The numbers come from each study's own ``hpo.analysis.findings``; this module lays them next to each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline

from hpo.analysis import pages, summary
from hpo.analysis.findings import STATES, Findings, fmt, label
from hpo.analysis.groups import display
from hpo.analysis.pages import Bullets, Figure, Heading, Table
from hpo.errors import counted, reason

FIGURE = "learning_curves"
PNG = f"{FIGURE}.png"


@dataclass(frozen=True)
class Entry:
    folder: str
    findings: Findings
    epochs_trained: int
    seconds: float
    curve: dict[int, float]  # the best trial's validation value per epoch
    line: str  # what the study found, in one line


def _line(f: Findings) -> str:
    """What the study found, in one line: its summary's what to use and what mattered (hpo.analysis.summary)."""
    said = {x.title: x.text for x in summary.lines(f)}
    best = f"best {label(f.metrics[0])} {fmt(f.metrics[0], f.best.values[0])} (trial #{f.best.number})"
    found = said.get("What mattered") or said.get("What did not") or "nothing was searched."
    return f"{best}; {found}"


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


def base(name: str) -> str:
    """A parameter as studies share it: "lr|sgd" and "lr" are both lr."""
    return name.split("|")[0]


def _said(f: Findings, name: str) -> str:
    """One parameter's finding in a study, short: the summary's reading of it (hpo.analysis.summary)."""
    e, basis = summary.primary(f, name)
    if e is None:
        return "not analysed"
    if not e.clear:
        return f"{e.claim.split(' (')[0]} ({counted(e.trials, 'trial')}, {basis})"
    return f"{summary.where(e)} ({fmt(f.metrics[0], e.best.mean)} in {counted(e.best.n, 'trial')}, {basis})"


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
    # shared by base name: lenet_lr's lr and lenet_optimizer's lr|sgd and lr|adam are all lr
    bases = list(dict.fromkeys(base(n) for e in entries for n in e.findings.param_names))
    shared = [b for b in bases if sum(any(base(n) == b for n in e.findings.param_names) for e in entries) >= 2]
    if shared:
        side = []
        for b in shared:
            cells = []
            for e in entries:
                mine = [n for n in e.findings.param_names if base(n) == b]
                cells.append(
                    "; ".join(f"{display(n)}: {_said(e.findings, n)}" for n in mine) if mine else "not searched"
                )
            side.append([display(b), *cells])
        out.append(("Shared parameters, side by side", ["parameter", *names], side))
    return out


def blocks(entries: list[Entry]) -> list:
    """The comparison as page blocks (hpo.analysis.pages), for report.md and index.html alike."""
    out: list = [
        Heading("Comparison: " + " vs ".join(e.findings.study_name for e in entries), 1),
        Heading("What each study found"),
        Bullets(tuple(f"**{e.findings.study_name}** (`{e.folder}`): {e.line}" for e in entries)),
    ]
    for title, header, rows in tables(entries):
        out += [Heading(title), Table(tuple(header), tuple(tuple(r) for r in rows))]
    return out + [Heading("Learning curves"), Figure(FIGURE, "Learning curves of each study's best trial")]


def write(entries: list[Entry], out: Path, png: bool = True) -> tuple[Path, str]:
    """report.md, index.html and the curves' PNG; returns (index path, PNG error or "")."""
    out.mkdir(parents=True, exist_ok=True)
    fig = curves_figure(entries)
    error = ""
    if png:
        try:
            pio.write_images([fig], [out / PNG], width=[900], height=[500], scale=1)
        except Exception as e:  # kaleido/Chromium missing: the pages still get written
            error = reason(e, typed=True, limit=200)
    page = blocks(entries)
    (out / "report.md").write_text(pages.markdown(page, {FIGURE: PNG} if png and not error else {}), encoding="utf-8")
    (out / pages.PLOTLY_JS).write_text(plotly.offline.get_plotlyjs(), encoding="utf-8")
    (out / "index.html").write_text(pages.html_page("Comparison", page, {FIGURE: fig}), encoding="utf-8")
    return out / "index.html", error
