"""What the entry points share: common arguments, one-line errors, progress lines."""
from __future__ import annotations

import sys
from typing import Callable

from hpo.errors import HpoError


def add_study_arguments(parser) -> None:
    parser.add_argument("--study", required=True, help="a folder under studies/ or a path to a study folder")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a study setting, e.g. --set train.epochs=3 (repeatable; default: none)")
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (default: $HPO_DATA_DIR, else ./data)")


def say(text: str) -> None:
    """Progress and summaries go to stderr, so stdout stays machine-readable (--json)."""
    print(text, file=sys.stderr, flush=True)


def epoch_line(stats, epochs: int) -> str:
    return (f"  epoch {stats.epoch}/{epochs}  loss {stats.train_loss:.4f}  train {stats.train_acc:.2f}%  "
            f"val {stats.val_acc:.2f}%  lr {stats.lr:.4g}  {stats.seconds:.1f}s")


def run_main(main: Callable[[], int]) -> None:
    """Known bad input: one line and exit 2. Anything else keeps its traceback (it is a bug)."""
    try:
        code = main()
    except HpoError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
