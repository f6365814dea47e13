"""Resume instead of restart: the Optuna side of a trial's epoch checkpoints (hpo.training.checkpoints).

A trial stopped by SIGINT/SIGTERM is queued again (``requeue``) with its parameters and seed, as
hpo.storage.store's heartbeat callback queues a trial lost with its worker; either retry finds the
checkpoint by the ``checkpoint_of`` attr it inherits (the number of the trial first run with these
parameters), reports the epochs already trained, and the loop goes on from the next one.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import TrialState

from hpo.config import TrainConfig
from hpo.errors import reason
from hpo.records import CHECKPOINT_OF, REASON, STATUS, status
from hpo.storage.store import store_error
from hpo.training.checkpoints import Checkpoints

RESUMED_FROM, RESUMES = "resumed_from_epoch", "resumes"
# Settings a resumed run may change without changing what it trains (a requeued job on another
# machine); anything else means the checkpoint is not this trial's.
MAY_DIFFER = {"threads", "device", "checkpoint_every"}
# A retry starts afresh: these describe how the stopped run ended, not the retry.
NOT_INHERITED = (STATUS, REASON)
log = logging.getLogger(__name__)


def _comparable(config: dict) -> dict:
    return {**config, "train": {k: v for k, v in config["train"].items() if k not in MAY_DIFFER}}


class TrialCheckpoint:
    """The checkpoint file of one trial, or none (no folder given, a FixedTrial, checkpoints off)."""

    def __init__(self, checkpoints: Checkpoints | None, study: str, trial, config: TrainConfig, guard):
        self.checkpoints, self.config, self.guard, self.trial, self.path = checkpoints, config, guard, trial, None
        if checkpoints is None or not isinstance(trial, optuna.Trial):
            return
        origin = trial.user_attrs.get(CHECKPOINT_OF)
        if origin is None:
            origin = trial.number
            trial.set_user_attr(CHECKPOINT_OF, origin)
        self.retry = origin != trial.number
        self.path = checkpoints.path(study, origin)

    def load(self, device, report: bool) -> dict | None:
        """The state to resume from, with the trial's records brought up to it (curve, intermediate
        values when ``report``, resumed_from_epoch); None to start at epoch 1. A retry that finds no
        usable checkpoint says so in one line."""
        if self.path is None:
            return None
        trial, state = self.trial, None
        if self.path.exists():
            state = self.checkpoints.load(self.path, device)
        elif self.retry and self.config.train.checkpoint_every:
            log.warning(f"trial #{trial.number}: no checkpoint at {self.path}; it starts again from epoch 1")
        if state is not None and _comparable(state.get("config", {"train": {}})) != _comparable(self.config.to_dict()):
            log.warning(
                f"trial #{trial.number}: the checkpoint {self.path} was written for other settings; "
                f"it starts again from epoch 1"
            )
            state = None
        if state is None:
            if self.retry:  # a retry that starts at epoch 1 (and not the value inherited from the run it retries)
                trial.set_user_attr(RESUMED_FROM, 0)
            return None
        with self.guard.held():
            trial.set_user_attr(RESUMED_FROM, state["epoch"])
            trial.set_user_attr(RESUMES, trial.user_attrs.get(RESUMES, 0) + 1)
            trial.set_user_attr("curve", state["curve"])
            trial.set_user_attr("epochs_run", state["epoch"])
            if report:  # the whole curve, so the pruner decides on the same numbers
                for stats in state["curve"]:
                    trial.report(stats["val_acc"], stats["epoch"])
        log.info(f"trial #{trial.number} resumes from its checkpoint after epoch {state['epoch']}")
        return state

    def save(self, state: dict) -> None:
        """The loop's ``on_checkpoint``: a signal waits until the file is whole. A checkpoint that
        cannot be written (a full disk) costs only what a stop would retrain: the trial goes on, and
        the last whole checkpoint, if any, stays where it was."""
        try:
            with self.guard.held():
                self.checkpoints.save(self.path, {**state, "config": self.config.to_dict()})
        except OSError as e:
            log.warning(
                f"warning: trial #{self.trial.number}: checkpoint after epoch {state['epoch']} not saved "
                f"({reason(e)}); the trial goes on"
            )


def requeue(trial) -> None:
    """Queue the retry of an interrupted trial: same parameters, seed and checkpoint. Never raises:
    without a store there is no retry, and the trial stays an ordinary interrupted FAIL."""
    if not isinstance(trial, optuna.Trial):
        return
    try:
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in NOT_INHERITED}
        trial.study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING, params=trial.params, distributions=trial.distributions, user_attrs=attrs
            )
        )
    except Exception as e:
        if not store_error(e):
            raise
        log.warning(f"trial #{trial.number}: its retry could not be queued ({reason(e)}); it is not resumed")


class ForgetFinished:
    """An Optuna callback: a trial that ended for good (complete, pruned, failed) drops its
    checkpoint; an interrupted one keeps it for its retry."""

    def __init__(self, checkpoints: Checkpoints | None, study: str):
        self.checkpoints, self.study = checkpoints, study

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        origin = trial.user_attrs.get(CHECKPOINT_OF)
        if self.checkpoints is None or origin is None or status(trial) == "interrupted":
            return
        self.checkpoints.delete(self.checkpoints.path(self.study, origin))
