"""Run a study: ``python -m hpo.run --study lenet_lr --trials 50``.

Adds trials to the study named after the folder, in the store (SQLite under storage/ by default);
running again resumes it. The command line becomes one plan (hpo.runs.plan), the worker count is
settled once, and one lifecycle (hpo.runs.lifecycle) runs the plan: its trials here, in this
process (hpo.runs.single), or in worker processes under a supervisor (hpo.runs.workers), each of
which runs the same plan with its share.
"""

from __future__ import annotations

import signal
import sys

from hpo import cli
from hpo.runs import lifecycle
from hpo.runs.plan import WORKER_FLAG, WORKERS_ENV, parse, parser, worker_plan
from hpo.runs.single import InProcess
from hpo.runs.workers import Supervisor, worker_count

__all__ = ["main", "parser"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Until hpo.search.interrupts takes over (after loading the data and opening the store), SIGTERM
    # ends the run as Ctrl-C does, with a line and exit 130, not silently; nothing is written by then.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    plan = worker_plan() if argv == [WORKER_FLAG] else parse(argv)
    # Settled once: "auto" may come out as one; confirmations and a supervisor's workers run here.
    if plan.confirm is not None or plan.worker is not None:
        k = 1
    else:
        source = "--workers" if "workers" in plan.given else f"${WORKERS_ENV}"
        k = worker_count(plan.workers, plan.spec, source, plan.data_dir)
    return lifecycle.run(plan, InProcess(plan) if k == 1 else Supervisor(plan, k))


if __name__ == "__main__":
    cli.run_main(main)
