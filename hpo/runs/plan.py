"""A run, described once: ``python -m hpo.run``'s command line parsed into a frozen plan.

Every option of the parser lands in ``Plan.options`` (by its dest, resolved: the store and the
worker count from the environment when not given), so each path reads the same plan: the run in
this process, the supervisor, each of its workers (which receive the plan itself, serialised in
their environment, never a re-spelled command line), and the printed resume command, which is
built from the parser's own actions. An option added to the parser reaches all of them with no
other edit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from hpo import cli
from hpo import config as config_mod
from hpo.config import CHECKPOINT_DIR, CHECKPOINT_ENV, KEEP
from hpo.errors import HpoError
from hpo.search.recipe import named
from hpo.storage.store import DEFAULT_STORAGE, STORAGE_ENV, redact

PLAN_ENV = "HPO_PLAN"  # a worker's plan, as JSON: in the environment (readable by this user only), never in argv
WORKER_FLAG = "--worker-of-plan"  # a supervisor's worker: `python -m hpo.run --worker-of-plan` reads $HPO_PLAN
WORKERS_ENV = "HPO_WORKERS"  # --workers when not given: a default for every run in an environment
# `--workers auto` (one single-thread worker per core for small nets) was the fastest setting on an
# idle machine and for a real study on a busy one; only a tiny study on a busy machine ran faster in
# one single-thread process (bench/README.md, "The default"). `--workers 1` is the setting for a
# bit-identical rerun (proposals do not depend on which trial finished first).
DEFAULT_WORKERS = "auto"
DEFAULT_TRIALS = 20  # when neither --trials nor the study file's `trials` says
WINDOW_THREADS = 1  # under a window, a study that leaves train.threads at 0 trains every trial with this many

# How the printed resume command treats an option. The amount is worked out anew; what the first run
# did once is not done again (its trials are queued already); every other option the user gave is
# repeated, in the parser's order after these, which come first as users write them.
AMOUNT = ("trials", "until")
ONCE = ("warm_start", "warm_start_trials", "confirm")
FIRST = ("study", "trials", "until", "study_name", "workers", "storage", "set")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.run", description="Add trials to a study (creating it on the first run)."
    )
    cli.add_study_arguments(p)
    p.add_argument(
        "--trials",
        type=int,
        default=None,
        help=f"trials this command adds (default: the study file's `trials`, else {DEFAULT_TRIALS})",
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
        help="instead of searching, retrain the top 3 configurations with K new seeds each, "
        "recorded as confirmations of their trial, in one process (default: off)",
    )
    return p


@dataclass(frozen=True)
class Share:
    """What makes one of a supervisor's workers different from the others: its share of the run."""

    slot: int  # 0..K-1 (a replacement keeps the slot)
    threads: int | None = None  # its torch threads, when the study leaves them to the machine
    device: str | None = None  # its GPU, round-robin


@dataclass(frozen=True)
class Plan:
    options: Mapping[str, Any]  # every option of the parser by its dest, resolved
    given: frozenset[str]  # the dests the command line set: what printed commands repeat
    worker: Share | None = None  # set in a supervisor's worker

    def __getattr__(self, name: str) -> Any:  # plan.keep, plan.storage: the options read as attributes
        try:
            return self.__dict__["options"][name]
        except KeyError:
            raise AttributeError(name) from None

    @cached_property
    def spec(self):
        """The study spec: the study file with --set, under --study-name, with a worker's own threads and device."""
        sets = list(self.set)
        if self.worker and self.worker.threads:
            sets.append(f"train.threads={self.worker.threads}")
        if self.worker and self.worker.device:
            sets.append(f"train.device={self.worker.device}")
        spec = config_mod.load(self.study, sets)
        if spec.window and spec.base.train.threads == 0:
            # Threads are part of a trial's recipe (1 and 2 threads give other floats): under the
            # window every trial gets the same, whatever the number of workers.
            train = dataclasses.replace(spec.base.train, threads=WINDOW_THREADS)
            spec = dataclasses.replace(spec, base=dataclasses.replace(spec.base, train=train))
        return named(spec, self.study_name) if self.study_name is not None else spec

    @property
    def trials(self) -> int:
        """Trials this command adds: --trials, else the study file's."""
        return self.spec.trials if self.options["trials"] is None else self.options["trials"]

    @property
    def amount(self) -> int:
        """What the run counts to: the trials it adds, or --until's N."""
        return self.until if self.until is not None else self.trials

    @property
    def index(self) -> int:
        """This process's index among those sharing the study: --worker-index, else the cluster's own."""
        return cli.worker_index(self)

    def for_worker(self, worker: Share, **options) -> Plan:
        """The same plan for one of a supervisor's workers: its share, and the options it runs with
        (its amount, its index)."""
        return dataclasses.replace(self, options=MappingProxyType({**self.options, **options}), worker=worker)

    @classmethod
    def of(cls, **given) -> Plan:
        """A plan of these options and the parser's defaults for the rest, unchecked: for a printed
        command (hpo.report's rerun command)."""
        options = {a.dest: a.default for a in parser()._actions if a.dest != "help"}
        options.update(given)
        options["storage"] = options["storage"] or DEFAULT_STORAGE
        return cls(MappingProxyType(options), frozenset(d for d, v in given.items() if v is not None))

    # ---------------------------------------------------------------- serialised for a worker

    def to_json(self) -> str:
        worker = dataclasses.asdict(self.worker) if self.worker else None
        return json.dumps({"options": dict(self.options), "given": sorted(self.given), "worker": worker})

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        worker = Share(**data["worker"]) if data["worker"] else None
        return cls(MappingProxyType(data["options"]), frozenset(data["given"]), worker)

    # ---------------------------------------------------------------- printed commands

    def command(self, trials: int | str | None = None) -> str:
        """The ``python -m hpo.run`` command that goes on where this run stopped: every option the user
        gave (the store with its password masked), ``--until N`` again or ``--trials`` with ``trials``."""
        actions = {a.dest: a for a in parser()._actions if a.option_strings and a.dest != "help"}
        values = dict(self.options, trials=trials if self.until is None else None)
        shown = {"study", "trials", "until", "set"} | (self.given - set(ONCE) - set(AMOUNT))
        if self.storage != DEFAULT_STORAGE:  # from the environment too: the command must find the same store
            shown.add("storage")
        order = [d for d in FIRST if d in actions] + [d for d in actions if d not in FIRST]
        parts: list[str] = []
        for dest in order:
            if dest in shown:
                parts += _spelled(actions[dest], redact(values[dest]) if dest == "storage" else values[dest])
        return "python -m hpo.run " + shlex.join(parts)


def _spelled(action: argparse.Action, value) -> list[str]:
    """An option as it is typed: ``--keep none``, ``--quiet``, ``--set a=1 --set b=2``; nothing when unset."""
    flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
    if value is None or value is False or value == []:
        return []
    if isinstance(action, argparse._StoreTrueAction):
        return [flag]
    if isinstance(action, argparse._AppendAction):
        return [x for v in value for x in (flag, str(v))]
    return [flag, f"{value:g}" if isinstance(value, float) else str(value)]


def parse(argv: list[str] | None = None) -> Plan:
    """The command line as a plan, every value checked: bad input is one line here, before anything runs."""
    p = parser()
    namespace = p.parse_args(argv)
    defaults = vars(p.parse_args(["--study", namespace.study]))
    options = vars(namespace)
    given = frozenset(d for d, v in options.items() if v != defaults[d] or d == "study")
    options["storage"] = options["storage"] or os.environ.get(STORAGE_ENV, "").strip() or DEFAULT_STORAGE
    options["workers"] = options["workers"] or os.environ.get(WORKERS_ENV, "").strip() or DEFAULT_WORKERS
    plan = Plan(MappingProxyType(options), given)
    check(plan)
    return plan


def check(plan: Plan) -> None:
    """The options' own rules, and the study file with its overrides."""
    plan.spec  # noqa: B018 (loading it checks the study file and every --set)
    if plan.until is not None and plan.options["trials"] is not None:
        raise HpoError(
            "--trials and --until exclude each other: --trials adds N trials, --until runs until N are finished"
        )
    if plan.until is not None and plan.until < 1:
        raise HpoError(f"--until must be >= 1, got {plan.until}")
    if plan.trials < 1:
        raise HpoError(f"--trials must be >= 1, got {plan.trials}")
    if plan.timeout is not None and not (0 < plan.timeout < float("inf")):  # nan compares false
        raise HpoError(f"--timeout must be > 0 seconds, got {plan.timeout}")
    if plan.patience is not None and plan.patience < 0:
        raise HpoError(f"--patience must be >= 0 (0: never stop early), got {plan.patience}")
    if plan.min_delta is not None and not (0 <= plan.min_delta < float("inf")):  # nan compares false
        raise HpoError(f"--min-delta must be a finite number >= 0, got {plan.min_delta}")
    if plan.confirm is not None and plan.confirm < 1:
        raise HpoError(f"--confirm must be >= 1 seeds per configuration, got {plan.confirm}")
    if plan.confirm is not None and "workers" in plan.given and plan.workers != "1":
        raise HpoError("--confirm runs in one process: leave out --workers")
    if plan.confirm is not None and plan.until is not None:
        raise HpoError("--confirm adds K x 3 retrainings: leave out --until")
    if plan.confirm is not None and plan.options["trials"] is not None:
        raise HpoError("--confirm adds K x 3 retrainings, not --trials N: leave out --trials")


def worker_plan() -> Plan:
    """A supervisor's worker: the plan its supervisor put in the environment."""
    if not os.environ.get(PLAN_ENV):
        raise HpoError(f"{WORKER_FLAG} is for the workers hpo.run starts itself: ${PLAN_ENV} holds no plan")
    return Plan.from_json(os.environ[PLAN_ENV])
