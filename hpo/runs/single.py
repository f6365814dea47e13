"""The trials of a plan run here, in this process: Optuna's ``study.optimize`` with hpo's objective,
progress, interrupts, --until, --patience and the failure guard. hpo.runs.lifecycle does the rest."""

from __future__ import annotations

import logging
import re

import optuna

from hpo.records import REASON, WORKER_ATTR
from hpo.runs.plan import Plan
from hpo.runs.progress import StudyProgress
from hpo.search.interrupts import Interrupts
from hpo.search.objective import Objective
from hpo.search.plateau import Plateau
from hpo.search.resume import ForgetFinished
from hpo.search.until import Until
from hpo.search.window import watch
from hpo.storage.store import HEARTBEAT_ENV, HEARTBEAT_S, artifact_store, env_seconds, worker_tag
from hpo.training.checkpoints import Checkpoints, checkpoint_dir

MAX_FAILS_IN_A_ROW = 3  # the same crash every trial is a setup problem, not bad luck: stop


class FailureGuard:
    """Stops the study when trials keep failing the same way, keeping the last reason."""

    def __init__(self):
        self.in_a_row, self.reason = 0, ""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            self.in_a_row += 1
            self.reason = trial.user_attrs.get(REASON, "see the log above")
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


def plateau_stop(plan: Plan, spec) -> Plateau:
    """--patience / --min-delta, else the study file's [stop]."""
    patience = spec.stop.patience if plan.patience is None else plan.patience
    return Plateau(patience, spec.stop.min_delta if plan.min_delta is None else plan.min_delta)


class InProcess:
    """Runs the plan's trials in this process."""

    workers = 1
    stop_when_lost = True  # once the store's wait is over, every later call fails at once: exit 75 now

    def __init__(self, plan: Plan):
        self.plan = plan
        self.quiet = plan.quiet or plan.worker is not None

    def prepare(self, spec, say) -> None:
        """The objective, and the data loaded (a missing file fails here, before the store is touched)."""
        plan, index = self.plan, self.plan.index
        self.say = say
        self.progress = StudyProgress(
            plan.amount,
            spec.base.train.epochs,
            len(spec.objective.metrics) > 1,
            worker=f"worker {index} " if index else "",
            quiet=self.quiet,
        )
        self.interrupts = Interrupts()
        self.checkpoints = Checkpoints(checkpoint_dir(plan.checkpoint_dir))
        self.objective = Objective(
            spec,
            plan.data_dir,
            plan.keep,
            artifact_store() if plan.keep != "none" else None,
            on_epoch=self.progress.on_epoch,
            guard=self.interrupts,
            checkpoints=self.checkpoints,
        )
        self.objective.data(spec.base.data)
        _quiet_optuna()

    def left(self, study: optuna.Study, adding: int) -> int:
        """Trials to run: ``adding``, or with --until those left once other processes' trials count (0: none)."""
        self.callbacks = [self.progress, ForgetFinished(self.checkpoints, study.study_name)]
        self.interrupts.install()
        watch(study, self.interrupts.check)  # a signal reaches a worker waiting for the window
        if self.plan.until is None:
            return adding
        until = Until(self.plan.until)
        adding = until.wait(study, env_seconds(HEARTBEAT_ENV, HEARTBEAT_S), self.interrupts.check, self.say)
        self.callbacks.append(until)
        self.objective = until.wrap(self.objective)
        return adding

    def run(self, study: optuna.Study, spec, adding: int, before: set[int]) -> None:
        """The trials, until ``adding`` have run (or --until, --timeout, --patience or the guard stops them).
        A signal raises KeyboardInterrupt once the running trial is marked; a lost store, its error."""
        self.progress.total = adding
        self.guard, plateau = FailureGuard(), plateau_stop(self.plan, spec)
        self.progress.start()
        try:
            self.interrupts.check()  # a signal before the first trial
            study.optimize(
                self.objective,
                n_trials=None if self.plan.until is not None else adding,
                timeout=self.plan.timeout,
                callbacks=[*self.callbacks, self.guard, plateau, self.interrupts.stop_study],
                catch=(Exception,),
            )
            self.interrupts.check()
        finally:
            self.progress.close()
        if plateau.reason:
            self.say(plateau.reason)

    def mine(self, trial: optuna.trial.FrozenTrial) -> bool:
        """A trial this process ran (other machines may share the study)."""
        return trial.user_attrs.get(WORKER_ATTR) == worker_tag()

    def left_running(self, added: list) -> list[int]:
        return []  # this process's trial in hand is marked before it exits; others' running trials are theirs

    def done_line(self) -> str:
        """What this process did, for logs (other workers may share the study)."""
        return self.progress.done_line() if self.quiet else ""

    def error(self, added: list, resume: str) -> str:
        if self.guard.in_a_row >= MAX_FAILS_IN_A_ROW:
            return f"stopped after {self.guard.in_a_row} failed trials in a row; last: {self.guard.reason}"
        return ""
