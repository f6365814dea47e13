"""What the entry points say about a study: the best-trials table, and the command that writes its
report (hpo.runs.plan builds every hpo.run command); trials by state come from hpo.records, so
hpo.run, the supervisor and hpo.report print the same words."""

from __future__ import annotations

import shlex
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import counted
from hpo.records import count_states, counts_text, ranked
from hpo.storage.store import DEFAULT_STORAGE, redact


def summary(study: optuna.Study, spec, added: list[FrozenTrial]) -> str:
    """The end of a run: what it added, and the best trials (the Pareto front when multi-objective)."""
    trials = study.get_trials(deepcopy=False)
    lines = [
        f"{spec.name}: {counted(len(added), 'trial')} added ({counts_text(count_states(added)) or 'none'}); "
        f"{len(trials)} in the study"
    ]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return "\n".join(lines + ["no complete trial yet"])
    multi = len(spec.objective.metrics) > 1
    if multi:
        best = study.best_trials
    else:
        best = ranked(complete, study.direction == optuna.study.StudyDirection.MAXIMIZE)[:5]
    names = sorted({k for t in best for k in t.params})
    table = pd.DataFrame(
        [
            [
                f"#{t.number}",
                *(f"{v:.4g}" for v in t.values),
                _fmt(t.user_attrs.get("test_acc")),
                str(t.user_attrs.get("epochs_run", "")),
                *(_fmt(t.params.get(n)) for n in names),
            ]
            for t in best
        ],
        # "epochs run", not "epochs": a study may search `epochs`, and that column holds its value
        columns=["trial", *spec.objective.metrics, "test_acc", "epochs run", *names],
    )
    lines.append("Pareto front:" if multi else "best trials:")
    widths = {c: 1 + max(len(c), *table[c].str.len()) for c in table.columns[1:]}  # pandas adds one more space
    lines += ["  " + line for line in table.to_string(index=False, col_space=widths).splitlines()]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def storage_args(url: str) -> list[str]:
    """``--storage URL`` (password masked) unless it is the default store."""
    return [] if url == DEFAULT_STORAGE else ["--storage", redact(url)]


def report_command(
    folder: str | Path, storage: str = DEFAULT_STORAGE, study_name: str | None = None, out: str | None = None
) -> str:
    """The ``python -m hpo.report`` command for a study folder."""
    parts = [str(folder), *storage_args(storage)]
    parts += ["--study-name", study_name] if study_name else []
    parts += ["--out", out] if out else []
    return "python -m hpo.report " + shlex.join(parts)
