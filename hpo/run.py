"""Run a study: ``python -m hpo.run --study lenet_lr --trials 50``.

Adds trials to the study named after the folder, in the store (SQLite under storage/ by default);
running again resumes it. The worker count is settled first: one worker runs here, in this
process (``run_single``); more are worker processes under hpo.workers' supervisor.
"""
from __future__ import annotations

import argparse
import logging

import optuna

from hpo import cli
from hpo import config as config_mod
from hpo import faults
from hpo.errors import EXIT_INTERRUPTED, EXIT_STORE_LOST, HpoError, reason
from hpo.interrupts import Interrupts
from hpo.objective import KEEP, Objective
from hpo.outcome import report_command, run_command, summary
from hpo.progress import StudyProgress
from hpo.study import create_or_resume, make_pruner, make_sampler
from hpo.store import DEFAULT_STORAGE, GRACE_ENV, GRACE_S, artifact_store, env_seconds, open_storage, redact, store_error
from hpo.workers import run_workers, worker_count

MAX_FAILS_IN_A_ROW = 3  # the same crash every trial is a setup problem, not bad luck: stop


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


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it shorter
    for handler in logging.getLogger("optuna").handlers:  # handler filters see the child loggers' records too
        handler.addFilter(_not_an_interrupt)


def _lost_trial(e: Exception) -> bool:
    """Telling a trial that is already finished: the store was out of reach for longer than the
    grace period and another worker failed the trial as lost (and queued its retry)."""
    return isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(e, ValueError) and str(e).startswith("Cannot tell a "))


def resume_command(args) -> str:
    """The command that goes on where this one stopped, with the same overrides and store."""
    return run_command(args.study, "N", args.set, args.storage)


def run_single(args, spec, trials: int) -> int:
    """This process adds ``trials`` trials to the study."""
    # Everything that can be wrong with the input fails here, before the store is touched.
    make_sampler(spec, 0), make_pruner(spec)
    index, quiet = cli.worker_index(args), args.quiet or args.supervised
    progress = StudyProgress(trials, spec.base.train.epochs, len(spec.objective.metrics) > 1,
                             worker=f"worker {index} " if index else "", quiet=quiet)
    interrupts = Interrupts()
    objective = Objective(spec, args.data_dir, args.keep, artifact_store(), on_epoch=progress.on_epoch, guard=interrupts)
    objective.data(spec.base.data)
    _quiet_optuna()
    storage = open_storage(args.storage, create=True)
    storage.stop_when_lost = True  # once the wait is over, every later call fails at once: exit 75 now
    study = create_or_resume(spec, storage, worker=index)
    before = {t.number for t in study.get_trials(deepcopy=False)}
    interrupts.install()
    cli.say(f"study {spec.name!r} in {redact(args.storage)}: {len(before)} trials so far, adding {trials}")
    progress.start()
    guard = FailureGuard()
    try:
        interrupts.check()  # a signal before the first trial
        study.optimize(objective, n_trials=trials, timeout=args.timeout, callbacks=[progress, guard, interrupts.stop_study],
                       catch=(Exception,))
        interrupts.check()
    except KeyboardInterrupt:
        progress.close()
        cli.say(_interrupted(args, study, before))
        return EXIT_INTERRUPTED
    except Exception as e:
        if not (store_error(e) or _lost_trial(e)):
            raise
        progress.close()  # a trial in hand stays RUNNING; its heartbeats stopped, so it is failed and retried
        if faults.kind(e) == faults.SETUP:  # the store answered, and waiting will not change the answer
            raise HpoError(f"the store {redact(args.storage)} refused a write: {reason(e)}") from None
        lost = faults.store_lost(e) or f"lost the store {redact(args.storage)} ({reason(e)})"
        cli.say(f"error: {lost}; a trial it leaves RUNNING is failed as "
                f"lost {env_seconds(GRACE_ENV, GRACE_S)} s after its last heartbeat and retried with the same parameters"
                + ("" if args.supervised else f"; resume with: {resume_command(args)}"))
        return EXIT_STORE_LOST
    progress.close()
    return _finish(args, spec, study, before, progress, guard)


def _interrupted(args, study: optuna.Study, before: set[int]) -> str:
    marked = [t.number for t in study.get_trials(deepcopy=False)
              if t.number not in before and t.user_attrs.get("status") == "interrupted"]
    return (f"interrupted: {'trial ' + ', '.join(f'#{n}' for n in marked) + ' marked FAIL' if marked else 'between trials'}"
            + ("" if args.supervised else f", the store is consistent; resume with: {resume_command(args)}"))


def _finish(args, spec, study: optuna.Study, before: set[int], progress: StudyProgress, guard: FailureGuard) -> int:
    added = [t for t in study.get_trials(deepcopy=False) if t.number not in before]
    quiet = args.quiet or args.supervised
    if quiet:  # other workers may share the study: say what this one did
        cli.say(progress.done_line())
    else:
        print(summary(study, spec, added))
    if guard.in_a_row >= MAX_FAILS_IN_A_ROW:
        raise HpoError(f"stopped after {guard.in_a_row} failed trials in a row; last: {guard.reason}")
    if not quiet:
        print("report: " + report_command(spec.folder, args.storage))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    spec = config_mod.load(args.study, args.set)
    trials = spec.trials if args.trials is None else args.trials
    if trials < 1:
        raise HpoError(f"--trials must be >= 1, got {trials}")
    if args.timeout is not None and args.timeout <= 0:
        raise HpoError(f"--timeout must be > 0 seconds, got {args.timeout}")
    k = worker_count(args.workers, spec)  # settled once: "auto" may come out as one
    return run_single(args, spec, trials) if k == 1 else run_workers(args, spec, trials, k)


if __name__ == "__main__":
    cli.run_main(main)
