"""Run a study: ``python -m hpo.run --study lenet_lr --trials 50``.

Adds trials to the study named after the folder, in the store (SQLite under storage/ by default);
running again resumes it. The worker count is settled first: one worker runs here, in this
process (``run_single``); more are worker processes under hpo.runs.workers' supervisor.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import signal

import optuna

from hpo import cli
from hpo import config as config_mod
from hpo.errors import EXIT_INTERRUPTED, EXIT_STORE_LOST, HpoError, reason
from hpo.runs.outcome import report_command, run_command, summary
from hpo.runs.progress import StudyProgress
from hpo.runs.workers import run_workers, worker_count
from hpo.search import confirm, warmstart
from hpo.search.interrupts import Interrupts
from hpo.search.objective import KEEP, Objective
from hpo.search.plateau import Plateau
from hpo.search.recipe import named
from hpo.search.resume import ForgetFinished
from hpo.search.study import create_or_resume, grid_space, make_pruner, make_sampler
from hpo.search.until import Until
from hpo.storage import faults
from hpo.storage.store import (
    DEFAULT_STORAGE,
    GRACE_ENV,
    GRACE_S,
    HEARTBEAT_ENV,
    HEARTBEAT_S,
    STORAGE_ENV,
    artifact_store,
    env_seconds,
    open_storage,
    redact,
    store_error,
    worker_tag,
)
from hpo.training.checkpoints import CHECKPOINT_DIR, CHECKPOINT_ENV, Checkpoints, checkpoint_dir

MAX_FAILS_IN_A_ROW = 3  # the same crash every trial is a setup problem, not bad luck: stop
# `--workers auto` (one single-thread worker per core for small nets) was the fastest setting on an
# idle machine and for a real study on a busy one; only a tiny study on a busy machine ran faster in
# one single-thread process (bench/README.md, "The default"). `--workers 1` is the setting for a
# bit-identical rerun (proposals do not depend on which trial finished first).
DEFAULT_WORKERS = "auto"
WORKERS_ENV = "HPO_WORKERS"  # --workers when not given: a default for every run in an environment


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.run", description="Add trials to a study (creating it on the first run)."
    )
    cli.add_study_arguments(p)
    p.add_argument(
        "--trials",
        type=int,
        default=None,
        help="trials this command adds (default: the study file's `trials`, else 20)",
    )
    p.add_argument(
        "--until",
        type=int,
        default=None,
        metavar="N",
        help="instead of --trials: run until the study holds N finished (complete or pruned) trials, "
        "retries first; any number of processes and restarts stop at N together (default: off)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help=f"where running trials keep their latest epoch checkpoint, a folder every worker of the study "
        f"can reach (default: ${CHECKPOINT_ENV}, else {CHECKPOINT_DIR})",
    )
    p.add_argument(
        "--timeout", type=float, default=None, help="stop starting new trials after this many seconds (default: none)"
    )
    p.add_argument(
        "--storage",
        default=None,
        help=f"Optuna storage URL (default: ${STORAGE_ENV}, which keeps a password off the command line, "
        f"else {DEFAULT_STORAGE})",
    )
    p.add_argument(
        "--study-name",
        default=None,
        metavar="NAME",
        help="the study's name in the store (default: the study folder's name)",
    )
    p.add_argument(
        "--same-study",
        action="store_true",
        help="resume the stored study of this name although it came from another study file "
        "(a moved folder); without it that is refused (default: off)",
    )
    p.add_argument(
        "--keep",
        choices=KEEP,
        default="best",
        help="weights to save in models/: best (each new best trial), all, none (default: best)",
    )
    p.add_argument(
        "--workers",
        default=None,
        help="worker processes on this machine sharing the study and the --trials between them: a number, "
        "or auto (CPU: one per core for small nets, one for ResNet-18; GPU: two small trials per GPU "
        f"or one large); 1 for bit-identical reruns (default: ${WORKERS_ENV}, else {DEFAULT_WORKERS})",
    )
    p.add_argument(
        "--worker-index",
        type=int,
        default=None,
        metavar="I",
        help="this process's index among those sharing the study, mixed into the sampler seed so that "
        "they propose different parameters (default: $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX, "
        "else 0; --workers sets it for its own workers)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=None,
        metavar="N",
        help="stop adding trials when the best value has not improved by more than --min-delta in the last N "
        "finished trials; every worker stops (default: the study file's stop.patience, else 0: never)",
    )
    p.add_argument(
        "--min-delta",
        type=float,
        default=None,
        metavar="X",
        help="the smallest gain that counts for --patience (default: the study file's stop.min_delta, else the "
        "seed-to-seed noise where trials were repeated, else 0.1)",
    )
    p.add_argument(
        "--warm-start",
        default=None,
        metavar="STUDY",
        help="first run the best configurations of another study (a folder, or a study name in the same store), "
        "in this study's parameters (default: none)",
    )
    p.add_argument(
        "--warm-start-trials",
        type=int,
        default=5,
        metavar="K",
        help="how many of its best trials --warm-start queues (default: 5)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="one line per finished trial instead of a progress bar, for logs (default: off)",
    )
    p.add_argument(
        "--confirm",
        type=int,
        default=None,
        metavar="K",
        help=f"instead of searching, retrain the top {confirm.TOP} configurations with K new seeds each, "
        "recorded as confirmations of their trial, in one process (default: off)",
    )
    p.add_argument(
        "--supervised", action="store_true", help=argparse.SUPPRESS
    )  # a worker of hpo.runs.workers: quiet, and
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


class _InterruptNoise:
    """Optuna logs a failed trial twice, its error (with the traceback) and then "Trial N failed
    with value None": after Ctrl-C both are noise, and only the first carries the interrupt."""

    def __init__(self):
        self.interrupted: set[str] = set()

    def filter(self, record) -> bool:
        number = re.match(r"Trial (\d+) failed", str(record.msg))
        if not _not_an_interrupt(record):
            self.interrupted |= {number.group(1)} if number else set()
            return False
        return not (number and number.group(1) in self.interrupted)


def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress bar says it shorter
    noise = _InterruptNoise()
    for handler in logging.getLogger("optuna").handlers:  # handler filters see the child loggers' records too
        handler.addFilter(noise)


def _lost_trial(e: Exception) -> bool:
    """Telling a trial that is already finished: the store was out of reach for longer than the
    grace period and another worker failed the trial as lost (and queued its retry)."""
    return isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(e, ValueError) and str(e).startswith("Cannot tell a ")
    )


def resume_command(args, study: optuna.Study | None = None, before: set[int] = frozenset()) -> str:
    """The command that finishes what this one was asked, with the same overrides and store:
    ``--until N`` again, or ``--trials`` with the trials not yet done (an interrupted trial is
    redone: its queued retry is one of them)."""
    workers = args.workers_asked
    if args.until is not None:
        return run_command(
            args.study, None, args.set, args.storage, workers=workers, study_name=args.study_name, until=args.until
        )
    left = "N"
    if study is not None and getattr(args, "trials_asked", None):
        try:
            done = sum(
                t.state.is_finished() and t.user_attrs.get("status") not in ("interrupted", None)
                for t in study.get_trials(deepcopy=False)
                if t.number not in before
            )
            left = max(args.trials_asked - done, 1)
        except Exception as e:  # the store is away (that may be why we stop): N, for the user to fill in
            if not store_error(e):
                raise
    return run_command(args.study, left, args.set, args.storage, workers=workers, study_name=args.study_name)


def run_single(args, spec, trials: int) -> int:
    """This process adds ``trials`` trials to the study."""
    # Everything that can be wrong with the input fails here, before the store is touched.
    make_sampler(spec, 0), make_pruner(spec)
    index, quiet = cli.worker_index(args), args.quiet or args.supervised
    progress = StudyProgress(
        trials,
        spec.base.train.epochs,
        len(spec.objective.metrics) > 1,
        worker=f"worker {index} " if index else "",
        quiet=quiet,
    )
    interrupts = Interrupts()
    checkpoints = Checkpoints(checkpoint_dir(args.checkpoint_dir))
    objective = Objective(
        spec,
        args.data_dir,
        args.keep,
        artifact_store() if args.keep != "none" else None,
        on_epoch=progress.on_epoch,
        guard=interrupts,
        checkpoints=checkpoints,
    )
    objective.data(spec.base.data)
    _quiet_optuna()
    spec, trials, study, before, warm = _open_study(args, spec, trials, index)
    progress.total = trials
    callbacks = [progress, ForgetFinished(checkpoints, spec.name)]
    interrupts.install()
    guard, plateau = FailureGuard(), plateau_stop(args, spec)
    try:
        if args.until is not None:
            objective, trials = _until(args, spec, study, objective, interrupts, callbacks)
            if trials == 0:
                return 0
            progress.total = trials
        cli.say(
            f"study {spec.name!r} in {redact(args.storage)}: {len(before)} trials so far, adding {trials}"
            + (f" (until {args.until} are finished)" if args.until is not None else "")
            + (f", first {len(warm)} warm-started from {', '.join(warm)}" if warm else "")
        )
        progress.start()
        interrupts.check()  # a signal before the first trial
        study.optimize(
            objective,
            n_trials=None if args.until is not None else trials,
            timeout=args.timeout,
            callbacks=[*callbacks, guard, plateau, interrupts.stop_study],
            catch=(Exception,),
        )
        interrupts.check()
    except KeyboardInterrupt:
        progress.close()
        cli.say(_interrupted(args, study, before))
        return EXIT_INTERRUPTED
    except Exception as e:
        if not (store_error(e) or _lost_trial(e)):
            raise
        progress.close()  # a trial in hand stays RUNNING; its heartbeats stopped, so it is failed and retried
        return _store_lost(args, e, study, before)
    progress.close()
    if plateau.reason:
        cli.say(plateau.reason)
    return _finish(args, spec, study, before, progress, guard)


def _until(args, spec, study: optuna.Study, objective, interrupts: Interrupts, callbacks: list):
    """--until N: wait for what other processes are running, then run as many as are left (0: none)."""
    until = Until(args.until)
    trials = until.wait(study, env_seconds(HEARTBEAT_ENV, HEARTBEAT_S), interrupts.check, cli.say)
    if trials == 0:
        cli.say(
            f"study {spec.name!r} in {redact(args.storage)}: {args.until} trials finished, nothing to add "
            f"(--until {args.until})"
        )
        return objective, 0
    callbacks.append(until)
    return until.wrap(objective), trials


def _open_study(args, spec, trials: int, index: int):
    """The store and the study (with --confirm's retrainings or --warm-start's trials queued), and
    the trials already there: queued ones (retries) are not done yet, this run adds them."""
    if args.confirm is not None:
        confirm.require_store(args.storage, spec)
    storage = open_storage(args.storage, create=True)
    storage.stop_when_lost = True  # once the wait is over, every later call fails at once: exit 75 now
    if args.confirm is not None:  # queued retrainings of the best configurations, run unpruned
        spec, trials = confirm.prepare(storage, spec, args.confirm)
    study = create_or_resume(spec, storage, worker=index, same_study=args.same_study)
    before = {t.number for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING}
    warm = [] if args.supervised else warmstart.enqueue(study, getattr(args, "warm_plan", []))
    return spec, trials, study, before, warm


def _store_lost(args, e: Exception, study: optuna.Study, before: set[int]) -> int:
    """The store went away mid-run (exit 75: the supervisor starts the worker again), or refused a write (exit 2)."""
    if faults.kind(e) == faults.SETUP:  # the store answered, and waiting will not change the answer
        raise HpoError(f"the store {redact(args.storage)} refused a write: {reason(e)}") from None
    lost = faults.store_lost(e) or f"lost the store {redact(args.storage)} ({reason(e)})"
    cli.say(
        f"error: {lost}; a trial it leaves RUNNING is failed as "
        f"lost {env_seconds(GRACE_ENV, GRACE_S)} s after its last heartbeat and retried with the same parameters"
        + ("" if args.supervised else f"; resume with: {resume_command(args, study, before)}")
    )
    return EXIT_STORE_LOST


def plateau_stop(args, spec) -> Plateau:
    """--patience / --min-delta, else the study file's [stop]."""
    patience = spec.stop.patience if args.patience is None else args.patience
    return Plateau(patience, spec.stop.min_delta if args.min_delta is None else args.min_delta)


def _interrupted(args, study: optuna.Study, before: set[int]) -> str:
    marked = [
        t.number
        for t in study.get_trials(deepcopy=False)  # this process's: other workers say their own
        if t.number not in before
        and t.user_attrs.get("status") == "interrupted"
        and t.user_attrs.get("worker", worker_tag()) == worker_tag()
    ]
    return (
        f"interrupted: {'trial ' + ', '.join(f'#{n}' for n in marked) + ' marked FAIL' if marked else 'between trials'}"
        + ("" if args.supervised else f", the store is consistent; resume with: {resume_command(args, study, before)}")
    )


def _finish(args, spec, study: optuna.Study, before: set[int], progress: StudyProgress, guard: FailureGuard) -> int:
    added = [t for t in study.get_trials(deepcopy=False) if t.number not in before]
    quiet = args.quiet or args.supervised
    if quiet:  # other workers may share the study: say what this one did
        cli.say(progress.done_line())
    else:
        print(summary(study, spec, added))
    if guard.in_a_row >= MAX_FAILS_IN_A_ROW:
        raise HpoError(f"stopped after {guard.in_a_row} failed trials in a row; last: {guard.reason}")
    mine = [t for t in added if t.user_attrs.get("worker") == worker_tag()]  # other machines may share the study
    if (
        mine and all(t.state == optuna.trial.TrialState.FAIL for t in mine) and not args.supervised
    ):  # below the guard's 3
        raise HpoError(f"every trial failed ({len(mine)}); last: {guard.reason}")
    short = grid_short(spec, added, progress.total) if args.timeout is None else ""
    if short:
        cli.say(short)
    if not quiet:
        print("report: " + report_command(spec.folder, args.storage, study_name=args.study_name))
    return 0


def grid_short(spec, added: list, asked: int) -> str:
    """A grid stops the study once every point has run: say so, rather than add fewer trials unannounced."""
    if spec.sampler.name != "grid" or len(added) >= asked:
        return ""
    points = math.prod(len(v) for v in grid_space(spec).values())
    return (
        f"note: the grid's {points} points have all run: {len(added)} of the {asked} trials asked for were added; "
        f"widen [search] or pass --study-name NEW for another study"
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Until hpo.search.interrupts takes over (after loading the data and opening the store), SIGTERM ends
    # the run as Ctrl-C does, with a line and exit 130, not silently; nothing is written by then.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.storage = args.storage or os.environ.get(STORAGE_ENV, "").strip() or DEFAULT_STORAGE
    # What the user typed goes into printed commands; the environment's or the default stays implicit.
    args.workers_asked = args.workers
    args.workers = args.workers or os.environ.get(WORKERS_ENV, "").strip() or DEFAULT_WORKERS
    spec = config_mod.load(args.study, args.set)
    if args.study_name is not None:
        spec = named(spec, args.study_name)
    if args.until is not None and args.trials is not None:
        raise HpoError(
            "--trials and --until exclude each other: --trials adds N trials, --until runs until N are finished"
        )
    if args.until is not None and args.until < 1:
        raise HpoError(f"--until must be >= 1, got {args.until}")
    trials = spec.trials if args.trials is None else args.trials
    args.trials_asked = trials
    if trials < 1:
        raise HpoError(f"--trials must be >= 1, got {trials}")
    if args.timeout is not None and not (0 < args.timeout < float("inf")):  # nan compares false
        raise HpoError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.patience is not None and args.patience < 0:
        raise HpoError(f"--patience must be >= 0 (0: never stop early), got {args.patience}")
    if args.min_delta is not None and args.min_delta < 0:
        raise HpoError(f"--min-delta must be >= 0, got {args.min_delta}")
    if args.warm_start:  # read (and checked) before anything is written; queued once the study is open
        args.warm_plan = warmstart.plan(args.storage, args.warm_start, spec, min(args.warm_start_trials, trials))
    if args.confirm is not None and args.confirm < 1:
        raise HpoError(f"--confirm must be >= 1 seeds per configuration, got {args.confirm}")
    if args.confirm is not None and args.workers_asked not in (None, "1"):
        raise HpoError("--confirm runs in one process: leave out --workers")
    if args.confirm is not None and args.until is not None:
        raise HpoError("--confirm adds K x 3 retrainings: leave out --until")
    # Settled once: "auto" may come out as one; confirmations run here.
    k = (
        1
        if args.confirm is not None
        else worker_count(args.workers, spec, "--workers" if args.workers_asked else f"${WORKERS_ENV}")
    )
    return (
        run_single(args, spec, trials)
        if k == 1
        else run_workers(args, spec, trials if args.until is None else args.until, k)
    )


if __name__ == "__main__":
    cli.run_main(main)
