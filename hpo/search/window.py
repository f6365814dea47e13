"""Decisions from a fixed window of the past (the study file's ``window = L``): a study that is a
function of its study file and seed, not of which trial happened to finish first.

Every trial has a logical index: a fresh trial (new, or queued by warm start or --confirm) the count
of fresh trials numbered before it, which every process counts alike because the store hands out
numbers atomically; a retry (interrupted, lost) the index of the trial it retries, whose user attrs
it inherits. Before trial i is sampled its worker waits until every index <= i - L has ended for
good; then the study's own sampler, built afresh and seeded from (study seed, i), samples it from a
view of the study that holds only those trials, numbered by index, and the pruner judges it on the
same view. With K <= L workers nothing a trial does depends on K, on speed or on who ran what.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hpo.records import FINISHED, INDEX, INDEX_OF, REASON, STATUS, WINDOW_WAIT, status
from hpo.storage.store import MAX_RETRY, is_lost

POLL_S = 0.5  # how often a waiting worker reads the store
STALE_EVERY_S = 5.0  # how often it fails trials whose worker died (their retries are what it waits for)
log = logging.getLogger(__name__)  # the entry points print these lines (hpo.cli)


def indices(trials: list[FrozenTrial]) -> dict[int, int]:
    """Trial number -> logical index. A retry carries the number of the trial it retries
    (``index_of``, or Optuna's ``failed_trial`` for one lost before it wrote it); a trial given up
    as surplus before it trained (--until) takes no index."""
    out: dict[int, int] = {}
    fresh = 0
    for t in sorted(trials, key=lambda t: t.number):
        origin = t.user_attrs.get(INDEX_OF, t.system_attrs.get("failed_trial", t.number))
        if origin != t.number and origin in out:
            out[t.number] = out[origin]
        elif status(t) != "surplus":
            out[t.number] = fresh
            fresh += 1
    return out


def ended(attempts: list[FrozenTrial]) -> FrozenTrial | None:
    """The attempt that ended an index for good; None while it may still change (one is running or
    queued, or a lost one's retry is about to be queued)."""
    if not attempts or any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in attempts):
        return None
    done = [t for t in attempts if t.state in FINISHED]
    if done:
        return done[-1]
    if is_lost(attempts[-1]) and sum(map(is_lost, attempts)) <= MAX_RETRY:
        return None
    return attempts[-1]  # failed for good (a crash), or a retry that could not be queued


def numbered(t: FrozenTrial, index: int) -> FrozenTrial:
    """The trial as the window shows it: numbered by its index (Hyperband's brackets and the grid's
    points follow the number), its id the store's (a sampler's or pruner's records land on it)."""
    t = copy.copy(t)
    t.number = index
    return t


class Visible:
    """The study's store as trial i sees it: a read of the study's trials gives only those of index
    <= i - L, as they ended; everything else (the study's name and directions, what a sampler or
    pruner writes on trial i itself) is the store's own."""

    def __init__(self, storage, trials: list[FrozenTrial]):
        self._storage, self._trials = storage, trials

    def __getattr__(self, name):
        return getattr(self._storage, name)

    def get_all_trials(self, study_id, deepcopy=True, states=None) -> list[FrozenTrial]:
        trials = [t for t in self._trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    def get_n_trials(self, study_id, state=None) -> int:
        states = None if state is None else (state,) if isinstance(state, TrialState) else tuple(state)
        return len(self.get_all_trials(study_id, deepcopy=False, states=states))


def view(study: optuna.Study, trials: list[FrozenTrial], pruner: BasePruner) -> optuna.Study:
    """The study (a real ``optuna.Study``, so Hyperband's brackets and every sampler read it as they
    read any study) over ``Visible``."""
    return optuna.Study(study.study_name, Visible(study._storage, trials), sampler=study.sampler, pruner=pruner)


@dataclass
class Seen:
    """What one trial decides from: its index, the trials it may see, its own sampler."""

    index: int
    visible: list[FrozenTrial]  # indices 0 .. index - L, in order
    sampler: BaseSampler
    pruner: BasePruner  # its own: a pruner's estimates (successive halving's min_resource) are not shared
    view: optuna.Study  # for the pruner
    sampled: object  # for the sampler: the view, or Hyperband's bracket of it (as Optuna does)

    def trial(self, t: FrozenTrial) -> FrozenTrial:
        return numbered(t, self.index)


class WindowSampler(BaseSampler):
    """The study's sampler behind the window. ``make(i)`` builds the study's sampler seeded for index i."""

    def __init__(self, make: Callable[[int], BaseSampler], size: int):
        self.make, self.size = make, size
        self.check: Callable[[], None] = lambda: None  # a signal while waiting (hpo.runs.single sets it)
        self._seen: dict[int, Seen] = {}  # trial id -> what it sees; one process runs a trial at a time

    def seen(self, study: optuna.Study, trial: FrozenTrial) -> Seen:
        if trial._trial_id not in self._seen:
            self._seen[trial._trial_id] = self._look(study, trial)
        return self._seen[trial._trial_id]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seen = self.seen(study, trial)
        seen.sampler.before_trial(seen.sampled, seen.trial(trial))

    def infer_relative_search_space(self, study, trial):
        seen = self.seen(study, trial)
        return seen.sampler.infer_relative_search_space(seen.sampled, seen.trial(trial))

    def sample_relative(self, study, trial, search_space):
        seen = self.seen(study, trial)
        return seen.sampler.sample_relative(seen.sampled, seen.trial(trial), search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        seen = self.seen(study, trial)
        return seen.sampler.sample_independent(seen.sampled, seen.trial(trial), param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        seen = self._seen.pop(trial._trial_id, None)
        if seen is not None:  # the whole study: the grid stops the run once every point has run
            seen.sampler.after_trial(study, seen.trial(trial), state, values)

    def _look(self, study: optuna.Study, trial: FrozenTrial) -> Seen:
        storage = study._storage
        index = indices(storage.get_all_trials(study._study_id, deepcopy=False))[trial.number]
        if INDEX not in trial.user_attrs:  # a retry inherited them
            _set(storage, trial, INDEX, index)
            _set(storage, trial, INDEX_OF, trial.number)
        try:
            visible, waited = self._wait(study, trial.number, index)
        except KeyboardInterrupt:
            give_back(study, trial._trial_id)
            raise
        _set(storage, trial, WINDOW_WAIT, round(waited, 3))
        pruner = study.pruner.make() if isinstance(study.pruner, WindowPruner) else study.pruner
        seen = view(study, visible, pruner)
        # Optuna shows a sampler under Hyperband only the trial's bracket (optuna.pruners._filter_study)
        sampled = optuna.pruners._filter_study(seen, numbered(trial, index))
        return Seen(index, visible, self.make(index), pruner, seen, sampled)

    def _wait(self, study: optuna.Study, number: int, index: int) -> tuple[list[FrozenTrial], float]:
        """The trials of index <= index - L as they ended, once they all have; and the seconds waited."""
        last, start, said = index - self.size, time.monotonic(), False
        stale_at = start + STALE_EVERY_S
        while True:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            of = indices(trials)
            attempts = defaultdict(list)
            for t in trials:
                if of.get(t.number, last + 1) <= last:
                    attempts[of[t.number]].append(t)
            end = {j: ended(attempts[j]) for j in range(last + 1)}
            open_ = [j for j, t in end.items() if t is None]
            if not open_:
                return [numbered(end[j], j) for j in range(last + 1)], (time.monotonic() - start) * said
            if not said:
                log.info(
                    f"trial #{number} (index {index}) waits for index {', '.join(map(str, open_))} "
                    f"to end (window {self.size})"
                )
                said = True
            self.check()
            if time.monotonic() >= stale_at:  # a dead worker's trial: failed, and its retry queued
                optuna.storages.fail_stale_trials(study)
                stale_at = time.monotonic() + STALE_EVERY_S
            time.sleep(POLL_S)


def _set(storage, trial: FrozenTrial, key: str, value) -> None:
    """A user attr in the store and on ``trial``: before_trial gets the trial's cached record,
    which ``Trial.user_attrs`` (the objective's seed, hpo.search.space) reads."""
    storage.set_trial_user_attr(trial._trial_id, key, value)
    trial.user_attrs[key] = value


class WindowPruner(BasePruner):
    """The study's pruner, judging trial i on the trials of index <= i - L and its own curve. ``make()``
    builds the study's pruner: each trial gets its own (one shared by a process would carry what it
    estimated for one trial into another's decision)."""

    def __init__(self, make: Callable[[], BasePruner]):
        self.make = make

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        seen = study.sampler.seen(study, trial)
        return seen.pruner.prune(seen.view, seen.trial(trial))


def give_back(study: optuna.Study, trial_id: int) -> None:
    """A trial stopped by a signal while it waited (it has no parameters yet): FAIL with status
    interrupted, as the objective marks one stopped in training, and its retry queued with its index."""
    storage = study._storage
    storage.set_trial_user_attr(trial_id, STATUS, "interrupted")
    storage.set_trial_user_attr(trial_id, REASON, "interrupted: stopped by the user while it waited for the window")
    attrs = {k: v for k, v in storage.get_trial(trial_id).user_attrs.items() if k not in (STATUS, REASON, WINDOW_WAIT)}
    study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=attrs))
    storage.set_trial_state_values(trial_id, TrialState.FAIL)


def watch(study: optuna.Study, check: Callable[[], None]) -> None:
    """A signal reaches a worker that waits for the window (``check`` raises KeyboardInterrupt)."""
    if isinstance(study.sampler, WindowSampler):
        study.sampler.check = check
