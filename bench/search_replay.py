"""One study replayed on a landscape: Optuna's sampler and pruner, ask-and-tell, K workers on a
virtual clock. Each trial is asked for when a worker is free; its epochs end at the clock times
its recorded CPU seconds give, and at each the trial reports its accuracy and asks the pruner,
which sees what every other trial had reported by that moment (the ones still running are
RUNNING in the store, as with real workers). Events are handled in time order, so trials finish
out of order as they do with real workers. Also the one-epoch top-K baseline, scheduled the same way.

Under a window (the study file's ``window = L``, hpo.search.window) the sampler and pruner are
hpo's window ones, and a free worker starts trial i only once every trial of index <= i - L has
ended; until then it waits on the clock (the seconds are summed in the trace), as a real worker does.
"""

from __future__ import annotations

import dataclasses
import heapq
import warnings
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from hpo.config import PrunerSpec, SamplerSpec, StudySpec
from hpo.search.space import trial_config
from hpo.search.study import searchers

optuna.logging.set_verbosity(optuna.logging.ERROR)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", category=UserWarning, module="optuna")


@dataclass(frozen=True)
class Trace:
    """A replayed study: after each finished trial, the clock, the epochs trained by then (every
    trial's, pruned ones and running ones included) and the best complete value so far."""

    seconds: tuple[float, ...]
    epochs: tuple[int, ...]
    best: tuple[float, ...]  # -inf until a trial completes
    waited: float = 0.0  # seconds workers spent waiting for the window, all of them together
    ends: tuple = ()  # (number, state, epochs reported, value or None) of each trial, by number

    def reach(self, target: float) -> tuple[float, float]:
        """(epochs, seconds) when the best first reached ``target``; (inf, inf) if it never did."""
        for s, e, b in zip(self.seconds, self.epochs, self.best, strict=True):
            if b >= target:
                return float(e), s
        return float("inf"), float("inf")

    @property
    def final(self) -> float:
        return self.best[-1] if self.best else float("-inf")


def with_search(spec: StudySpec, sampler: SamplerSpec, pruner: PrunerSpec) -> StudySpec:
    return dataclasses.replace(spec, sampler=sampler, pruner=pruner)


def _seed_of(rng: np.random.Generator, seeds: list[int]) -> int:
    return seeds[int(rng.integers(len(seeds)))]


def replay(spec: StudySpec, land, trials: int, workers: int, seed: int) -> Trace:
    """``spec``'s sampler and pruner (hpo's own, as a study builds them: hpo.search.study.searchers)
    for ``trials`` trials; ``seed`` is the study seed (under a window, each trial's sampler is
    seeded from it and the trial's index)."""
    spec = dataclasses.replace(spec, base=dataclasses.replace(spec.base, seed=seed))
    sampler, pruner = searchers(spec, seed)
    study = optuna.create_study(
        # A fixed name: Hyperband assigns trials to brackets by a hash of the study name.
        study_name=f"replay-{seed}",
        storage=optuna.storages.InMemoryStorage(),
        sampler=sampler,
        pruner=pruner,
        direction="maximize",
    )
    rng = np.random.default_rng(seed + 7)
    events: list = []  # (time, order, trial, run, epoch index)
    order = 0
    started = 0
    epochs_done = 0
    best = float("-inf")
    out_s, out_e, out_b = [], [], []
    idle: list[float] = []  # since when each free worker has waited for the window
    unended: set[int] = set()  # indices started and not yet ended
    waited = 0.0

    def free(now: float) -> None:
        """A worker is free: it starts the next trial once the window lets it (at once without one)."""
        nonlocal waited
        idle.append(now)
        while idle and started < trials and not (spec.window and any(j <= started - spec.window for j in unended)):
            waited += now - idle.pop(0)
            start(now)

    def start(now: float) -> None:
        nonlocal started, order
        unended.add(started)
        started += 1
        trial = study.ask()
        trial_config(trial, spec)  # suggests every searched setting, as the real objective does
        run = land.draw(trial.params, _seed_of(rng, land.seeds))
        first = run.seconds[0] if run.values else land.epoch_seconds
        order += 1
        heapq.heappush(events, (now + first, order, trial, run, 0))

    def finish(now: float, trial, state, value=None) -> None:
        nonlocal best
        if state == TrialState.COMPLETE:
            study.tell(trial, value)
            best = max(best, value)
        else:
            study.tell(trial, state=state)
        out_s.append(now)
        out_e.append(epochs_done)
        out_b.append(best)
        unended.discard(trial.number)  # no retries here: a trial's number is its index
        free(now)

    for _ in range(workers):
        free(0.0)
    while events:
        now, _, trial, run, e = heapq.heappop(events)
        epochs_done += 1
        if not run.values:  # diverged in its first epoch: nothing to report
            finish(now, trial, TrialState.PRUNED)
            continue
        trial.report(run.values[e], e + 1)
        last = e + 1 == len(run.values)
        if last and not run.stopped:
            finish(now, trial, TrialState.COMPLETE, run.values[-1])
        elif (last and run.stopped == "collapsed") or trial.should_prune():
            finish(now, trial, TrialState.PRUNED)
        else:
            nxt = run.seconds[e + 1] if not last else land.epoch_seconds  # a divergence's lost epoch
            order += 1
            heapq.heappush(events, (now + nxt, order, trial, run if not last else _diverged(run), e + 1))
    ends = tuple(
        (t.number, t.state.name, len(t.intermediate_values), t.value) for t in study.get_trials(deepcopy=False)
    )
    return Trace(tuple(out_s), tuple(out_e), tuple(out_b), waited, ends)


def _diverged(run):
    """The epoch in which a run diverged: it costs its time, then the trial ends without a report."""
    return dataclasses.replace(run, values=())


def one_epoch_top_k(spec: StudySpec, land, trials: int, k: int, workers: int, seed: int) -> Trace:
    """'Is One Epoch All You Need?': ``trials`` random configurations one epoch each, then the
    ``k`` best at epoch 1 trained to the end. Both phases are scheduled on ``workers`` workers;
    the second starts when the first is done."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = np.random.default_rng(seed + 7)
    runs = []
    for _ in range(trials):
        trial = study.ask()
        trial_config(trial, spec)
        runs.append(land.draw(trial.params, _seed_of(rng, land.seeds)))
        study.tell(trial, 0.0)
    free = [0.0] * workers
    jobs = []  # (finish time, epochs, value or None)

    def run_job(cost: float, n_epochs: int, value: float | None) -> None:
        i = int(np.argmin(free))
        free[i] += cost
        jobs.append((free[i], n_epochs, value))

    for r in runs:
        run_job(r.seconds[0] if r.values else land.epoch_seconds, 1, None)
    free = [max(free)] * workers
    for r in sorted((r for r in runs if r.values), key=lambda r: -r.values[0])[:k]:
        # One that would have stopped early (collapsed, diverged) spends its epochs and gives no value.
        run_job(sum(r.seconds[1:]), len(r.values) - 1, None if r.stopped else r.values[-1])
    jobs.sort(key=lambda j: j[0])
    epochs = np.cumsum([j[1] for j in jobs])
    best = np.maximum.accumulate([-np.inf if j[2] is None else j[2] for j in jobs])
    return Trace(tuple(j[0] for j in jobs), tuple(int(e) for e in epochs), tuple(float(b) for b in best))
