"""Run a study: ``python -m hpo.run --study lenet_lr --trials 50``.

Adds trials to the study named after the folder, in the store (SQLite under storage/ by default);
running again resumes it.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import os
import signal

import optuna

from hpo import cli
from hpo import config as config_mod
from hpo import confirm
from hpo.errors import HpoError, reason
from hpo.objective import KEEP, Objective
from hpo.progress import StudyProgress
from hpo.study import create_or_resume, make_pruner, make_sampler
from hpo.store import DEFAULT_STORAGE, GRACE_ENV, GRACE_S, artifact_store, env_seconds, open_storage, redact, store_error

MAX_FAILS_IN_A_ROW = 3  # the same crash every trial is a setup problem, not bad luck: stop
EXIT_STORE_LOST = 75  # sysexits' EX_TEMPFAIL: the store went away mid-run; hpo.workers starts the worker again
INDEX_ENV = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # Slurm arrays, Kubernetes indexed Jobs


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpo.run", description="Add trials to a study (creating it on the first run).")
    cli.add_study_arguments(p)
    p.add_argument("--trials", type=int, default=None, help="trials this command adds (default: the study file's `trials`, else 20)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting new trials after this many seconds (default: none)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default: {DEFAULT_STORAGE})")
    p.add_argument("--keep", choices=KEEP, default="best",
                   help="weights to save in models/: best (each new best trial), all, none (default: best)")
    p.add_argument("--workers", default="1",
                   help="worker processes on this machine sharing the study and the --trials between them: a number, "
                        "or auto (CPU: one per core for small nets, one for ResNet-18; GPU: two small trials per GPU "
                        "or one large) (default: 1)")
    p.add_argument("--worker-index", type=int, default=None, metavar="I",
                   help="this process's index among those sharing the study, mixed into the sampler seed so that "
                        "they propose different parameters (default: $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX, "
                        "else 0; --workers sets it for its own workers)")
    p.add_argument("--quiet", action="store_true",
                   help="one line per finished trial instead of a progress bar, for logs (default: off)")
    p.add_argument("--confirm", type=int, default=None, metavar="K",
                   help=f"instead of searching, retrain the top {confirm.TOP} configurations with K new seeds each, "
                        "recorded as confirmations of their trial (default: off)")
    p.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)  # a worker of hpo.workers: quiet, and
    # the supervisor, not the worker, says how to resume
    return p


class FailureGuard:
    """Stops the study when trials keep failing the same way, keeping the last reason."""

    def __init__(self):
        self.in_a_row, self.reason = 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            self.in_a_row += 1
            self.reason = trial.user_attrs.get("reason", "see the log above")
            if self.in_a_row >= MAX_FAILS_IN_A_ROW:
                study.stop()
        else:
            self.in_a_row = 0


def _not_an_interrupt(record) -> bool:
    """Optuna logs a failed trial with its traceback: right for a crash, noise for Ctrl-C."""
    return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


class Interrupts:
    """SIGINT and SIGTERM (Ctrl-C, docker stop, Slurm, kill, hpo.workers) stop the run without
    leaving a trial RUNNING. While a network trains, the signal raises KeyboardInterrupt at once
    and the objective marks the trial FAIL (status "interrupted"). Anywhere else (asking for a
    trial, writing an epoch's records, telling the result) it is only noted and acted on at the
    next safe point, so no store write is cut in half; and no new trial starts after it. A second
    signal is not a second interrupt: under a supervisor one may come from the terminal and one
    forwarded, and a KeyboardInterrupt inside the first one's clean-up would undo it."""

    def __init__(self):
        self.requested = False
        self._armed = False

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.requested:
            return
        self.requested = True
        if self._armed:
            self._armed = False
            raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def armed(self):
        """Around the training: a signal stops it at once."""
        self.check()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    @contextlib.contextmanager
    def held(self):
        """Around store writes inside the training: a signal waits until they are done."""
        outer, self._armed = self._armed, False
        try:
            yield
        finally:
            self._armed = outer
        if outer:
            self.check()

    def stop_study(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """An Optuna callback: no new trial after a signal."""
        if self.requested:
            study.stop()


def worker_index(args) -> int:
    if args.worker_index is not None:
        return args.worker_index
    for name in INDEX_ENV:
        text = os.environ.get(name, "").strip()
        if text:
            if not text.isdigit():
                raise HpoError(f"${name} = {text!r} is not a worker index; pass --worker-index")
            return int(text)
    return 0


def _lost_trial(e: Exception) -> bool:
    """Telling a trial that is already finished: the store was out of reach for longer than the
    grace period and another worker failed the trial as lost (and queued its retry)."""
    return isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(e, ValueError) and str(e).startswith("Cannot tell a "))


def resume_command(args) -> str:
    """The command that goes on where this one stopped, with the same overrides and store."""
    parts = ["python -m hpo.run", "--study", shlex.quote(str(args.study)), "--trials", "N"]
    parts += [f"--set {shlex.quote(s)}" for s in args.set]
    if args.storage != DEFAULT_STORAGE:
        parts += ["--storage", shlex.quote(redact(args.storage))]
    return " ".join(parts)


def summary(study: optuna.Study, spec, added: list[optuna.trial.FrozenTrial]) -> str:
    states = [t.state.name.lower() for t in added]
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail") if states.count(s))
    lines = [f"{spec.name}: {len(added)} trials added ({counts or 'none'}); {len(study.trials)} in the study"]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return "\n".join(lines + ["no complete trial yet"])
    multi = len(spec.objective.metrics) > 1
    best = study.best_trials if multi else sorted(complete, key=lambda t: t.value, reverse=study.direction.name == "MAXIMIZE")[:5]
    names = sorted({k for t in best for k in t.params})
    header = ["trial", *spec.objective.metrics, "test_acc", "epochs", *names]
    rows = [[f"#{t.number}", *(f"{v:.4g}" for v in t.values), _fmt(t.user_attrs.get("test_acc")),
             str(t.user_attrs.get("epochs_run", "")), *(_fmt(t.params.get(n)) for n in names)] for t in best]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines.append("Pareto front:" if multi else "best trials:")
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def run(args) -> int:
    spec = config_mod.load(args.study, args.set)
    trials = spec.trials if args.trials is None else args.trials
    if trials < 1:
        raise HpoError(f"--trials must be >= 1, got {trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise HpoError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.confirm is not None and args.confirm < 1:
        raise HpoError(f"--confirm must be >= 1 seeds per configuration, got {args.confirm}")
    if args.confirm is not None and args.workers != "1":
        raise HpoError("--confirm runs in one process: leave out --workers")
    if args.workers != "1":
        from hpo.workers import run_workers

        return run_workers(args, spec, trials)
    # Everything that can be wrong with the input fails here, before the store is touched.
    make_sampler(spec, 0), make_pruner(spec)
    objective = Objective(spec, args.data_dir, args.keep, artifact_store())
    objective.data(spec.base.data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it shorter
    for handler in logging.getLogger("optuna").handlers:  # handler filters see the child loggers' records too
        handler.addFilter(_not_an_interrupt)
    index = worker_index(args)
    storage = open_storage(args.storage, create=True)
    if args.confirm is not None:  # queued retrainings of the best configurations, run unpruned
        spec, trials = confirm.prepare(storage, spec, args.confirm)
    study = create_or_resume(spec, storage, worker=index)
    before = {t.number for t in study.trials if t.state != optuna.trial.TrialState.WAITING}  # queued ones run now
    guard = FailureGuard()
    interrupts = Interrupts()
    interrupts.install()
    objective.interrupts = interrupts
    cli.say(f"study {spec.name!r} in {redact(args.storage)}: {len(before)} trials so far, adding {trials}")
    progress = StudyProgress(trials, spec.base.train.epochs, len(spec.objective.metrics) > 1,
                             worker=f"worker {index} " if index else "", quiet=args.quiet or args.supervised)
    objective.progress = progress.on_epoch
    try:
        interrupts.check()  # a signal before the first trial
        study.optimize(objective, n_trials=trials, timeout=args.timeout, callbacks=[progress, guard, interrupts.stop_study],
                       catch=(Exception,))
        interrupts.check()
    except KeyboardInterrupt:
        progress.close()
        running = [t.number for t in study.trials if t.number not in before and t.user_attrs.get("status") == "interrupted"]
        cli.say(f"interrupted: {'trial ' + ', '.join(f'#{n}' for n in running) + ' marked FAIL' if running else 'between trials'}"
                + ("" if args.supervised else f", the store is consistent; resume with: {resume_command(args)}"))
        return 130
    except Exception as e:
        if not (store_error(e) or _lost_trial(e)):
            raise
        progress.close()  # a trial in hand stays RUNNING; its heartbeats stopped, so it is failed and retried
        cli.say(f"error: lost the store {redact(args.storage)} ({reason(e)}); a trial it leaves RUNNING is failed as "
                f"lost {env_seconds(GRACE_ENV, GRACE_S)} s after its last heartbeat and retried with the same parameters"
                + ("" if args.supervised else f"; resume with: {resume_command(args)}"))
        return EXIT_STORE_LOST
    progress.close()
    added = [t for t in study.trials if t.number not in before]
    if args.quiet or args.supervised:  # other workers may share the study: say what this one did
        cli.say(progress.done_line())
    else:
        print(summary(study, spec, added))
    if guard.in_a_row >= MAX_FAILS_IN_A_ROW:
        raise HpoError(f"stopped after {guard.in_a_row} failed trials in a row; last: {guard.reason}")
    if not (args.quiet or args.supervised):
        print(f"report: python -m hpo.report {spec.folder}" + ("" if args.storage == DEFAULT_STORAGE else f" --storage {redact(args.storage)}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    cli.run_main(main)
