"""What the replayed studies say, per combination: epochs and seconds until the best is within
``GAP`` points of the space's best, the final best after the trial budget, each as the median and
the 10th/90th percentiles over seeds; as rows, a Markdown table and an anytime plot."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

GAP = 0.5  # points below the space's best that count as "there"


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """p10, median, p90, each an observed value (inverted CDF), so a seed that never got there
    (inf) is counted as what it is rather than averaged into a finite number."""
    a = np.asarray(xs, float)
    return tuple(float(np.quantile(a, q, method="inverted_cdf")) for q in (0.1, 0.5, 0.9))


@dataclass(frozen=True)
class Row:
    name: str
    workers: int
    seeds: int
    reached: int  # seeds whose best got within GAP of the space's best
    epochs: tuple[float, float, float]  # to within GAP: p10, median, p90 (inf: not reached)
    seconds: tuple[float, float, float]
    final: tuple[float, float, float]  # the final best: p10, median, p90
    spent: float  # median epochs the whole budget took
    clock: float = 0.0  # median clock seconds the whole budget took
    waited: float = 0.0  # median seconds workers waited for the window (all workers together)


def row(name: str, workers: int, traces: list, space_best: float) -> Row:
    reach = [t.reach(space_best - GAP) for t in traces]
    return Row(
        name,
        workers,
        len(traces),
        sum(math.isfinite(e) for e, _ in reach),
        quantiles([e for e, _ in reach]),
        quantiles([s for _, s in reach]),
        quantiles([t.final for t in traces]),
        float(np.median([t.epochs[-1] for t in traces])),
        clock=float(np.median([t.seconds[-1] for t in traces])),
        waited=float(np.median([t.waited for t in traces])),
    )


def _n(x: float, digits: int = 0) -> str:
    return "never" if math.isinf(x) else f"{x:,.{digits}f}"


def markdown(rows: list[Row], windows: bool = False) -> str:
    """The rows as a Markdown table. ``windows``: the window's table (bench/search.py --windows),
    which gives what the whole budget took on the clock and in waits instead of the clock to the target."""

    def cells(r: Row) -> list[str]:
        to_it = [f"{_n(r.seconds[1])} ({_n(r.seconds[0])}-{_n(r.seconds[2])})"] if not windows else []
        whole = [f"{r.clock:,.0f}", f"{r.waited:,.0f}"] if windows else []
        return [
            r.name,
            str(r.workers),
            str(r.seeds),
            f"{r.reached}/{r.seeds}",
            f"**{_n(r.epochs[1])}** ({_n(r.epochs[0])}-{_n(r.epochs[2])})",
            *to_it,
            f"{r.final[1]:.2f} ({r.final[0]:.2f}-{r.final[2]:.2f})",
            f"{r.spent:.0f}",
            *whole,
        ]

    names = [
        "setting" if windows else "combination",
        "workers",
        "seeds",
        f"within {GAP} of the best",
        "epochs to it: median (p10-p90)",
        *([] if windows else ["clock s to it: median (p10-p90)"]),
        "final best %: median (p10-p90)",
        "epochs spent",
        *(["study clock s", "waited s"] if windows else []),
    ]
    lines = [names, ["---"] * len(names), *map(cells, rows)]
    return "".join(f"| {' | '.join(line)} |\n" for line in lines)


def anytime(traces: list, until: int) -> tuple[np.ndarray, np.ndarray]:
    """The best so far after each epoch spent (0..until), per seed: a (seeds, until + 1) array."""
    grid = np.arange(until + 1)
    out = np.full((len(traces), len(grid)), np.nan)
    for i, t in enumerate(traces):
        e, b = np.asarray(t.epochs), np.asarray(t.best, float)
        idx = np.searchsorted(e, grid, side="right") - 1
        vals = np.where(idx >= 0, b[np.clip(idx, 0, None)], -np.inf)
        out[i] = np.where(np.isfinite(vals), vals, np.nan)
    return grid, out


def plot(series: dict[str, list], space_best: float, title: str, path, until: int) -> None:
    """Median best-so-far against epochs spent, a 10th-90th percentile band, for each combination."""
    import plotly.graph_objects as go

    fig = go.Figure()
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]
    for (name, traces), colour in zip(series.items(), colours, strict=False):
        grid, best = anytime(traces, until)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # epochs before any trial completed: all NaN
            lo, mid, hi = (np.nanquantile(best, q, axis=0) for q in (0.1, 0.5, 0.9))
        fig.add_trace(go.Scatter(x=grid, y=hi, line={"width": 0}, showlegend=False, hoverinfo="skip"))
        fig.add_trace(
            go.Scatter(
                x=grid,
                y=lo,
                fill="tonexty",
                line={"width": 0},
                fillcolor=_alpha(colour),
                showlegend=False,
                hoverinfo="skip",
            )
        )
        fig.add_trace(go.Scatter(x=grid, y=mid, name=name, line={"color": colour, "width": 2}))
    fig.add_hline(y=space_best - GAP, line_dash="dash", annotation_text=f"space's best - {GAP}")
    fig.update_layout(
        title=title,
        xaxis_title="epochs spent (all trials)",
        yaxis_title="best validation accuracy so far, % (median; band: p10-p90 over seeds)",
        width=1000,
        height=560,
        template="plotly_white",
    )
    fig.update_yaxes(range=[space_best - 6, space_best + 1])
    fig.update_xaxes(range=[0, until / 2])  # the budget's second half only repeats the plateau
    fig.write_image(str(path))


def _alpha(hex_colour: str, a: float = 0.15) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{a})"
