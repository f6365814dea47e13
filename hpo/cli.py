"""What the entry points share: common arguments, the worker index, one-line errors, progress lines."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from hpo.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_STORE_LOST, HpoError
from hpo.storage.faults import StoreLost

INDEX_ENV = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # Slurm arrays, Kubernetes indexed Jobs


def add_study_arguments(parser) -> None:
    parser.add_argument("--study", required=True, help="a folder under studies/ or a path to a study folder")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a study setting, e.g. --set train.epochs=3 (repeatable; default: none)",
    )
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: $HPO_DATA_DIR, else ./data)")


def worker_index(args) -> int:
    """This process's index among those sharing a study: --worker-index, else the cluster's own."""
    if args.worker_index is not None:
        return args.worker_index
    for name in INDEX_ENV:
        text = os.environ.get(name, "").strip()
        if text:
            if not text.isdigit():
                raise HpoError(f"${name} = {text!r} is not a worker index; pass --worker-index")
            return int(text)
    return 0


def say(text: str) -> None:
    """Progress and summaries go to stderr, so stdout stays machine-readable (--json)."""
    print(text, file=sys.stderr, flush=True)


def epoch_line(stats, epochs: int) -> str:
    return (
        f"  epoch {stats.epoch}/{epochs}  loss {stats.train_loss:.4f}  train {stats.train_acc:.2f}%  "
        f"val {stats.val_acc:.2f}%  lr {stats.lr:.4g}  {stats.seconds:.1f}s"
    )


class _SayHandler(logging.Handler):
    """The library modules log (hpo.storage.store's waits and retries); an entry point prints them as lines."""

    def emit(self, record: logging.LogRecord) -> None:
        say(self.format(record))


def show_logs() -> None:
    log = logging.getLogger("hpo")
    if not any(isinstance(h, _SayHandler) for h in log.handlers):
        log.addHandler(_SayHandler())
        log.setLevel(logging.INFO)
        log.propagate = False


def run_main(main: Callable[[], int]) -> None:
    """Known bad input: one line and exit 2. Anything else keeps its traceback (it is a bug)."""
    show_logs()
    try:
        code = main()
    except HpoError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except StoreLost as e:  # waited out $HPO_STORE_WAIT_S: hpo.runs.workers starts the worker again
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_STORE_LOST
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    sys.exit(code)
