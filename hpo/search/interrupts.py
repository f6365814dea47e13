"""SIGINT and SIGTERM during a run: stop without leaving a trial RUNNING or a store write half done."""

from __future__ import annotations

import contextlib
import signal

import optuna


class Interrupts:
    """SIGINT and SIGTERM (Ctrl-C, docker stop, Slurm, kill, hpo.runs.workers) stop the run without
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


class NoInterrupts:
    """The guard of an objective run outside ``hpo.run`` (tests, FixedTrial): signals act as usual."""

    def armed(self):
        return contextlib.nullcontext()

    def held(self):
        return contextlib.nullcontext()


NO_INTERRUPTS = NoInterrupts()  # stateless: one serves every objective that has no hpo.run around it
