"""The report's first block, read in a minute: what to use, what mattered, what did not, what broke,
and how sure the study is. Every line is a view of the objects the sections below hold
(hpo.analysis.evidence, hpo.analysis.confirmations, findings' counts), so each number it states is
in a table further down; the detail (epochs, intervals, p-values) stays there.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpo.analysis.effects import MIN_TRIALS, Effect
from hpo.analysis.findings import STATES, Findings, fmt, fmt_value, label
from hpo.analysis.groups import display
from hpo.errors import counted

BROKE = ("diverged", "collapsed", "failed", "interrupted")  # how a trial ends when something went wrong


@dataclass(frozen=True)
class Line:
    title: str  # "What to use"
    text: str


def primary(f: Findings, name: str) -> tuple[Effect | None, str]:
    """The effect the summary states for ``name`` and where it was read: at the final epoch
    (complete trials: the values a user gets) where it shows an effect, else at the analysis epoch
    (every trial that reached it, pruned ones too) where that shows one, else the final epoch's."""
    ev = f.evidence
    if ev is None:
        return None, ""
    final, rung = ev.at_final.get(name), ev.at_rung.get(name)
    if (final is None or not final.clear) and rung is not None and rung.clear and ev.rung and not ev.rung.final:
        return rung, f"at epoch {ev.rung.epoch}"
    return final, "at the final epoch"


def lines(f: Findings) -> tuple[Line, ...]:
    return tuple(x for x in (_use(f), _mattered(f), _did_not(f), _broke(f), _sure(f)) if x is not None)


def _params(params: dict) -> str:
    return ", ".join(f"{display(k)} {fmt_value(v)}" for k, v in params.items()) or "the fixed settings"


def _test_of(f: Findings, number: int) -> float | None:
    return next((r.test_acc for r in (f.best, *f.top) if r.number == number), None)


def _use(f: Findings) -> Line:
    m, b = f.metrics[0], f.best
    c = f.evidence.confirmations if f.evidence is not None else None
    if c is not None and c.configs and not c.configs[0].stopped and len(c.configs[0].values) > 1:
        w = c.configs[0]
        test = _test_of(f, w.source)
        text = (
            f"the configuration of trial #{w.source} ({_params(w.params)}): {label(m)} {fmt(m, w.mean)}"
            + (f" ± {w.sd:.2f}" if w.sd is not None else "")
            + f" over {counted(len(w.values), 'seed')}"
            + (f"; test acc {fmt('test_acc', test)} (trial #{w.source})" if test is not None else "")
        )
        return Line("What to use", text)
    front = f" (best by {label(m)}, one of {len(f.pareto)} on the Pareto front)" if f.multi_objective else ""
    test = f", test acc {fmt('test_acc', b.test_acc)}" if b.test_acc is not None else ""
    return Line(
        "What to use", f"trial #{b.number}{front} ({_params(b.params)}): {label(m)} {fmt(m, b.values[0])}{test}"
    )


def _mattered(f: Findings) -> Line | None:
    if f.evidence is None or f.evidence.thin:
        return None
    m, up = f.metrics[0], _up(f)
    parts = []
    for p in f.params:
        e, basis = primary(f, p.name)
        if e is None or not e.clear or e.best is None:
            continue
        scored = [g for g in e.groups if g.pd is not None]
        if scored:  # a joint search: the words follow the partial dependence (a forest on all parameters)
            top = max(scored, key=lambda g: g.pd if up else -g.pd)
            low = min(scored, key=lambda g: g.pd if up else -g.pd)
            text = (
                f"{display(p.name)} {where(e)} by partial dependence, {basis} "
                f"({fmt(m, top.pd)} at {top.label} vs {fmt(m, low.pd)} at {low.label})"
            )
        else:
            text = (
                f"{display(p.name)} {where(e)}, {basis} ({fmt(m, e.best.mean)} in {counted(e.best.n, 'trial')}, "
                f"{_gain(e)} points over the rest)"
            )
        if not e.disagreement:  # where the raw means mislead, the words keep to the partial dependence
            for g in e.merged:
                if g.label.startswith(("below it", "above it")):
                    side = "smaller" if g.label.startswith("below") else "larger"
                    how = ", ".join(f"{n} {s}" for s, n in g.ended if s != "complete")
                    text += f"; {side}: {fmt(m, g.mean)} ({counted(g.n, 'trial')}" + (f", {how}" if how else "") + ")"
                    far = e.groups[g.members[0] if side == "smaller" else g.members[-1]]  # the far end of that side
                    if len(g.members) > 1 and far.n and far.mean is not None:
                        text += f", {fmt(m, far.mean)} at {far.label}"
        parts.append(text)
    return Line("What mattered", "; ".join(parts) + ".") if parts else None


def _up(f: Findings) -> bool:
    return f.directions[0] == "maximize"


def _gain(e: Effect) -> str:
    return f"{e.gain:+.1f}"


def where(e: Effect) -> str:
    """Where the best row lies: "best at 64", "best between 0.0054 and 0.16"."""
    b = e.best
    if e.kind != "range":
        return f"best at {b.label}"
    low, high = b.label.removeprefix("best region ").split("–")
    first, last = e.groups[0].label.split("–")[0], e.groups[-1].label.split("–")[-1]
    if low == first and high == last:
        return "best across the range"
    if low == first:
        return f"best below {high}"
    if high == last:
        return f"best above {low}"
    return f"best between {low} and {high}"


def _did_not(f: Findings) -> Line | None:
    ev = f.evidence
    if ev is None:
        return None
    if ev.thin:
        return Line("What did not", ev.thin)
    none, few, thin = [], [], []
    for p in f.params:
        e, _ = primary(f, p.name)
        if e is None or e.clear:
            continue
        if e.p_value is not None:
            none.append((display(p.name), e.trials))
        elif e.trials < MIN_TRIALS:
            few.append((display(p.name), e.trials))
        else:  # enough trials, but fewer than two of its groups hold enough of them to compare
            thin.append((display(p.name), e.trials))
    out = []
    if none:
        n = max(t for _, t in none)
        out.append(f"no clear effect of {', '.join(x for x, _ in none)} (tested on up to {counted(n, 'trial')})")
    if few:
        out.append("too few trials to say for " + ", ".join(f"{x} ({counted(t, 'trial')})" for x, t in few))
    if thin:
        out.append(
            "too few trials in all but one of its groups to compare, for "
            + ", ".join(f"{x} ({counted(t, 'trial')} in all)" for x, t in thin)
        )
    return Line("What did not", "; ".join(out) + ".") if out else None


def _broke(f: Findings) -> Line:
    ev = f.evidence
    ends: dict[str, int] = {}
    for r in f.problems:
        word = r.status if r.status in BROKE else STATES.get(r.state, r.state.lower())
        ends[word] = ends.get(word, 0) + 1
    pruned = f.pruning.pruned if f.pruning else 0
    parts = [", ".join(f"{n} {s}" for s, n in ends.items())] if ends else []
    if pruned:
        parts.append(f"the pruner stopped {counted(pruned, 'trial')}")
    regions = []
    for stop in ev.stops.values() if ev is not None else ():
        if stop.clear:
            worst = max(stop.regions, key=lambda r: r.rate)
            why = ", ".join(f"{n} {s}" for s, n in worst.statuses.items())
            regions.append(f"{worst.label}: {worst.stopped} of {worst.trials} stopped early ({why})")
    text = "; ".join(parts) if parts else "no trial diverged, collapsed or failed"
    if regions:
        text += "; where they concentrate: " + "; ".join(regions)
    return Line("What broke", text + ".")


def _sure(f: Findings) -> Line:
    ev = f.evidence
    states = ", ".join(f"{n} {STATES.get(s, s.lower())}" for s, n in f.counts.items())
    parts = [f"{counted(sum(f.counts.values()), 'trial')} ({states})"]
    c = ev.confirmations if ev is not None else None
    if c is not None and c.spread is not None:
        parts.append(f"seed-to-seed sd {c.spread:.2f} points (from the retrainings)")
        if len(c.configs) > 1 and "not told apart" in c.sentence:
            parts.append(f"#{c.configs[0].source} and #{c.configs[1].source} are not told apart by their seeds")
    elif not f.multi_objective:
        parts.append(
            "the seed-to-seed spread is unknown: `--confirm 3` retrains the top 3 with new seeds to measure it"
        )
    if len(f.top) > 1 and not f.multi_objective:
        gap = abs(f.top[0].values[0] - f.top[1].values[0])
        parts.append(f"the top two trials (#{f.top[0].number}, #{f.top[1].number}) are {gap:.2f} points apart")
    if f.counts.get("RUNNING"):
        parts.append(f"{counted(f.counts['RUNNING'], 'trial')} still running, left out")
    return Line("How sure", "; ".join(parts) + ".")
