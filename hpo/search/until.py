"""``--until N``: run until the study holds N finished trials (complete or pruned; failed ones do
not count), however many processes, machines, restarts and requeued jobs share it.

Each process stops starting trials once the finished trials and those running elsewhere reach N
(in the spirit of Optuna's ``MaxTrialsCallback``, which counts complete trials only). Two processes
that ask for a trial at the same moment could both get one past N: a trial whose lower-numbered
trials already make N (finished or running) is given up before it trains, as a FAIL record with
status ``surplus``. A queued retry is popped before any new trial (Optuna does so), so retries are
finished first; a running trial that is stopped again leaves its retry queued for the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from hpo.records import FINISHED, REASON, STATUS, finished


def claimed(trials, below: int | None = None) -> int:
    """Trials finished or running (of those numbered below ``below``): the ones on their way to N."""
    return sum(
        t.state in FINISHED or t.state == TrialState.RUNNING for t in trials if below is None or t.number < below
    )


class Surplus(Exception):
    """A trial started when the study already had N finished or running."""


class Until:
    def __init__(self, n: int):
        self.n = n

    def left(self, study: optuna.Study) -> int:
        """Trials still to start. Trials whose worker died are failed first (their retries queued),
        so a dead worker's trial is not counted as on its way."""
        optuna.storages.fail_stale_trials(study)
        return self.n - claimed(study.get_trials(deepcopy=False))

    def wait(self, study: optuna.Study, poll_s: float, check: Callable[[], None], say: Callable[[str], None]) -> int:
        """Trials left to start, once there are any or the study is done (0). While the rest of the N
        are running elsewhere, wait: they finish, or are interrupted or lost and their retries are
        queued for this process to take (a requeued job after a kill -9 must not leave them)."""
        said = False
        while True:
            left = self.left(study)
            if left > 0 or finished(study.get_trials(deepcopy=False)) >= self.n:
                return max(left, 0)
            if not said:
                say(
                    f"the other {self.n - finished(study.get_trials(deepcopy=False))} of the {self.n} trials "
                    f"are running elsewhere: waiting for them to finish (a stopped or lost one is taken over here)"
                )
                said = True
            check()
            time.sleep(poll_s)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """An Optuna callback: stop once N are finished or running."""
        if self.left(study) <= 0:
            study.stop()

    def wrap(self, objective: Callable) -> Callable:
        """``objective`` behind the check that its trial is not one past N."""

        def run(trial: optuna.Trial):
            if claimed(trial.study.get_trials(deepcopy=False), below=trial.number) >= self.n:
                text = (
                    f"surplus: the study had {self.n} trials finished or running when this one started "
                    f"(--until {self.n})"
                )
                trial.set_user_attr(STATUS, "surplus")
                trial.set_user_attr(REASON, text)
                raise Surplus(text)
            return objective(trial)

        return run
