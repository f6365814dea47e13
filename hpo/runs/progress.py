"""Study progress on stderr: trial n/N, epoch, current and best value, pruned count, ETA (tqdm);
or, quiet (workers, batch logs), one line per finished trial."""

from __future__ import annotations

import sys

import optuna
from tqdm import tqdm

from hpo.errors import counted
from hpo.records import ENDED_WORDS, REASON, state_word, status
from hpo.training.loop import EpochStats


class StudyProgress:
    """One tqdm bar over the trials this command adds; tqdm supplies rate and ETA. Also an Optuna
    callback (called after each trial) and the objective's per-epoch hook. ``quiet``: no bar, one
    line per finished trial instead (a bar per worker would interleave; a log file wants lines)."""

    def __init__(self, total: int | None, epochs: int, multi: bool, worker: str = "", quiet: bool = False):
        self.epochs, self.multi, self.quiet, self.total = epochs, multi, quiet, total
        self.worker = worker
        self.counts = dict.fromkeys(ENDED_WORDS, 0)
        self.bar: tqdm | None = None
        self.best = ""

    def start(self) -> None:
        """Show the bar (0/N); separate from __init__ so that lines printed before the first trial come first."""
        self.bar = tqdm(
            total=self.total,
            desc=f"{self.worker}trials",
            unit="trial",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=self.quiet,
            mininterval=1.0,
            bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}<{remaining} {postfix}",
        )

    def on_epoch(self, trial: optuna.Trial, stats: EpochStats) -> None:
        self.bar.set_postfix_str(
            f"#{trial.number} epoch {stats.epoch}/{self.epochs} val {stats.val_acc:.2f}%"
            f"{self.best}  pruned {self.counts['pruned']}",
            refresh=False,
        )
        self.bar.refresh()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = trial.state
        self.counts[state_word(trial)] += 1
        if not self.multi:
            try:
                best = study.best_trial
                self.best = f"  best {best.value:.2f}% (#{best.number})"
            except ValueError:  # no complete trial yet
                pass
        if self.quiet:
            print(self.line(trial), file=sys.stderr, flush=True)
        elif state != optuna.trial.TrialState.COMPLETE:
            reason = trial.user_attrs.get(REASON, "")
            if state == optuna.trial.TrialState.FAIL or status(trial) in ("diverged", "collapsed"):
                self.bar.write(
                    f"trial #{trial.number} {state.name.lower()}: {reason or 'see the log above'}", file=sys.stderr
                )
        self.bar.update(1)
        self.bar.set_postfix_str(f"{self.best.strip()}  pruned {self.counts['pruned']}  failed {self.counts['failed']}")

    def line(self, trial: optuna.trial.FrozenTrial) -> str:
        """``trial #4 complete 59.17  (3/3; best 59.17% (#4))``, with the reason when it has one."""
        what = state_word(trial)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            what += " " + " ".join(f"{v:.4g}" for v in trial.values)
        reason = trial.user_attrs.get(REASON, "")
        done = f"{sum(self.counts.values())}/{self.total or '?'}" + (f"; {self.best.strip()}" if self.best else "")
        return f"trial #{trial.number} {what}{': ' + reason if reason else ''}  ({done})"

    def done_line(self) -> str:
        """What this process added, for logs: ``done: 3 trials (2 complete, 1 pruned)``."""
        n = sum(self.counts.values())
        parts = ", ".join(f"{v} {k}" for k, v in self.counts.items() if v)
        return f"done: {counted(n, 'trial')}" + (f" ({parts})" if parts else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
