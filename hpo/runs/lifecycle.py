"""One lifecycle for every run of a plan, whoever runs its trials (this process, hpo.runs.single, or
worker processes, hpo.runs.workers): checks, the store and the study, the start line, the trials,
then how it ended (interrupted, the store lost, done), the summary, the report command, and the
resume command, printed from the plan."""

from __future__ import annotations

import math
from typing import Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo import cli
from hpo.errors import EXIT_INTERRUPTED, EXIT_STORE_LOST, HpoError, counted, reason
from hpo.records import finished, status
from hpo.runs.outcome import report_command, summary
from hpo.runs.plan import Plan
from hpo.search import confirm, warmstart
from hpo.search.study import create_or_resume, grid_space, make_pruner, make_sampler
from hpo.storage import faults
from hpo.storage.store import GRACE_ENV, GRACE_S, env_seconds, is_lost, open_storage, redact, store_error
from hpo.training import nets
from hpo.training.data import describe
from hpo.training.loop import resolve_device


class Executor(Protocol):
    """What runs the trials: hpo.runs.single.InProcess or hpo.runs.workers.Supervisor."""

    workers: int
    stop_when_lost: bool

    def prepare(self, spec, say) -> None: ...  # the checks that need the data
    def left(self, study: optuna.Study, adding: int) -> int: ...  # trials to run now (--until: may wait; 0: none)
    def run(self, study: optuna.Study, spec, adding: int, before: set[int]) -> None: ...  # signals: KeyboardInterrupt
    def mine(self, trial: FrozenTrial) -> bool: ...  # ran by this run (other machines may share the study)
    def left_running(self, added: list[FrozenTrial]) -> list[int]: ...  # left RUNNING by a killed worker
    def done_line(self) -> str: ...  # this process's own count, for logs
    def error(self, added: list[FrozenTrial], resume: str) -> str: ...  # why the run stopped early, if it did


def run(plan: Plan, executor: Executor) -> int:
    spec = plan.spec
    checks(plan, spec)
    # Read (and checked) before anything is written; queued once the study is open. A worker's
    # supervisor queued them for all.
    warm_plan = []
    if plan.warm_start and plan.worker is None:
        warm_plan = warmstart.plan(plan.storage, plan.warm_start, spec, min(plan.warm_start_trials, plan.trials))
    if plan.confirm is not None:
        spec = confirm.retrain_spec(plan.storage, spec)  # the recipe the trials ran with, threads included
    executor.prepare(spec, cli.say)
    spec, adding, study, before = open_study(plan, spec, executor)
    warm = warmstart.enqueue(study, warm_plan)
    try:
        adding = executor.left(study, adding)
        if adding == 0:
            done = finished(study.get_trials(deepcopy=False))
            cli.say(
                f"study {spec.name!r} in {redact(plan.storage)}: {done} trials finished, nothing to add "
                f"(--until {plan.until})"
            )
            return 0
        cli.say(start_line(plan, spec, len(before), adding, warm, executor.workers))
        executor.run(study, spec, adding, before)
    except KeyboardInterrupt:
        cli.say(interrupted(plan, study, before, executor))
        return EXIT_INTERRUPTED
    except Exception as e:
        if not (store_error(e) or _lost_trial(e)):
            raise
        return store_lost(plan, e, study, before)  # a trial in hand stays RUNNING: failed and retried later
    return finish(plan, spec, study, before, executor, adding)


def checks(plan: Plan, spec) -> None:
    """Everything that can be wrong with the input, before the store is touched."""
    make_sampler(spec, 0), make_pruner(spec)
    resolve_device(spec.base.train.device)
    describe(spec.base.data, plan.data_dir)  # an image folder is checked (and decoded, once per process) here
    if plan.worker is None:  # a supervisor's worker runs the plan its supervisor checked
        nets.check(spec, plan.data_dir)  # every net for the data's shape: your own net's file, class, constructor
    plan.index  # noqa: B018 (a worker index from the environment that is no number fails here)
    env_seconds(GRACE_ENV, GRACE_S)


def open_study(plan: Plan, spec, executor: Executor):
    """The store and the study (with --confirm's retrainings queued), and the trials already there:
    queued ones (retries) are not done yet, this run adds them."""
    adding = plan.amount
    storage = open_storage(plan.storage, create=True)
    storage.stop_when_lost = executor.stop_when_lost
    if plan.confirm is not None:  # queued retrainings of the best configurations, run unpruned
        spec, adding = confirm.prepare(storage, spec, plan.confirm)
    # Several supervisors (a Slurm array of them) get disjoint worker indices.
    study = create_or_resume(spec, storage, worker=plan.index * executor.workers, same_study=plan.same_study)
    before = {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}
    return spec, adding, study, before


def start_line(plan: Plan, spec, before: int, adding: int, warm: list[str], workers: int) -> str:
    text = f"study {spec.name!r} in {redact(plan.storage)}: {counted(before, 'trial')} so far, "
    if workers == 1:
        text += f"adding {adding}" + (f" (until {plan.until} are finished)" if plan.until is not None else "")
    else:
        text += f"until {adding} are finished" if plan.until is not None else f"adding {adding}"
        text += f" with {counted(min(workers, adding), 'worker')}" + (" (auto)" if plan.workers == "auto" else "")
    text += f", window {spec.window}" if spec.window else ""  # hpo.search.window
    return text + (f", first {len(warm)} warm-started from {', '.join(warm)}" if warm else "")


def added_trials(study: optuna.Study, before: set[int]) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.number not in before]


def resume_command(plan: Plan, added: list[FrozenTrial] | None) -> str:
    """The command that finishes what this one was asked: ``--until N`` again, or ``--trials`` with the
    trials not yet done (an interrupted or lost trial is redone: its queued retry is one of them);
    N when the store cannot say."""
    if plan.until is not None or added is None:
        return plan.command("N")
    done = sum(t.state.is_finished() and not is_lost(t) and status(t) != "interrupted" for t in added)
    return plan.command(max(plan.amount - done, 1))


def _readable_added(study: optuna.Study, before: set[int]) -> list[FrozenTrial] | None:
    try:
        return added_trials(study, before)
    except Exception as e:  # the store is away (that may be why we stop)
        if not store_error(e):
            raise
        return None


def interrupted(plan: Plan, study: optuna.Study, before: set[int], executor: Executor) -> str:
    added = _readable_added(study, before)
    marked = [t.number for t in added or () if status(t) == "interrupted" and executor.mine(t)]
    running = executor.left_running(added or [])
    text = f"interrupted: {'trial ' + numbers(marked) + ' marked FAIL' if marked else 'no trial was running'}"
    text += left_running_text(running)
    return text + ("" if plan.worker else f"; the store is consistent; resume with: {resume_command(plan, added)}")


def left_running_text(running: list[int]) -> str:
    if not running:
        return ""
    grace = env_seconds(GRACE_ENV, GRACE_S)
    return (
        f"; trial {numbers(running)} was left RUNNING by a killed worker: the next run fails it as lost "
        f"{grace} s after its last heartbeat and retries it"
    )


def _lost_trial(e: Exception) -> bool:
    """Telling a trial that is already finished: the store was out of reach for longer than the
    grace period and another worker failed the trial as lost (and queued its retry)."""
    return isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or (
        isinstance(e, ValueError) and str(e).startswith("Cannot tell a ")
    )


def store_lost(plan: Plan, e: Exception, study: optuna.Study, before: set[int]) -> int:
    """The store went away mid-run (exit 75: the supervisor starts the worker again), or refused a write (exit 2)."""
    if faults.kind(e) == faults.SETUP:  # the store answered, and waiting will not change the answer
        raise HpoError(f"the store {redact(plan.storage)} refused a write: {reason(e)}") from None
    lost = faults.store_lost(e) or f"lost the store {redact(plan.storage)} ({reason(e)})"
    cli.say(
        f"error: {lost}; a trial it leaves RUNNING is failed as "
        f"lost {env_seconds(GRACE_ENV, GRACE_S)} s after its last heartbeat and retried with the same parameters"
        + ("" if plan.worker else f"; resume with: {resume_command(plan, _readable_added(study, before))}")
    )
    return EXIT_STORE_LOST


def finish(plan: Plan, spec, study: optuna.Study, before: set[int], executor: Executor, adding: int) -> int:
    added = added_trials(study, before)
    lost = [t for t in added if is_lost(t)]
    done_line = executor.done_line()
    if done_line:
        cli.say(done_line)
    if plan.worker is None:  # a worker's supervisor says it for the whole run
        print(summary(study, spec, [t for t in added if not is_lost(t)]))
        if lost:
            print(
                f"lost with their worker and retried with the same parameters: trial "
                f"{numbers(t.number for t in lost)} (kept as FAIL records)"
            )
    error = executor.error(added, resume_command(plan, added))
    if error:
        raise HpoError(error)
    mine = [t for t in added if executor.mine(t) and not is_lost(t)]
    if mine and all(t.state == TrialState.FAIL for t in mine) and plan.worker is None:  # below the guard's 3
        raise HpoError(
            f"every trial failed ({len(mine)}); last: {mine[-1].user_attrs.get('reason', 'see the log above')}"
        )
    short = grid_short(spec, added, adding) if plan.timeout is None else ""
    if short:
        cli.say(short)
    if plan.worker is None:
        print("report: " + report_command(spec.folder, plan.storage, study_name=plan.study_name))
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


def numbers(values) -> str:
    return ", ".join(f"#{n}" for n in sorted(values))
