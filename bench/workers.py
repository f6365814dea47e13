"""Study throughput: one worker against ``--workers auto``, on the same study, in one run.

    .venv/bin/python bench/workers.py [--trials 8] [--epochs 2] [--train-size 2000] [--rounds 2] [--single-thread]

Each round runs the same command twice on a fresh SQLite store, as a user would:
``python -m hpo.run --study bench --trials N --workers 1`` (one process, all cores as torch
threads) and ``... --workers auto`` (on a CPU and LeNet-5: one worker per core, one thread each);
``--single-thread`` adds ``--workers 1 --set train.threads=1``.
Each round line says how many cores other processes used meanwhile (bench/machine.py's
Neighbours): near 0 the machine was idle, near the core count it was busy; run it both ways.
The wall time is the whole command's: process start, data loading, store writes and training,
so trials/hour is what a user gets. The study is LeNet-5 on a Fashion-MNIST subset, random
sampler, no pruner and an lr range that does not diverge, so every trial does the same work.
Rounds alternate the two commands and each one's fastest round counts: on a shared machine a
neighbour can only slow a run down. The CPU seconds (the command's processes, user + system) do
not depend on the neighbours much: on a busy machine they tell what the runs would cost on an
idle one. A benchmark, not a test: it prints figures and the machine, and never fails on a slow
result.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from meter import measure  # noqa: E402  (bench/meter.py)

from hpo.config import STUDY_FILE, cpu_count  # noqa: E402

STUDY = """
description = "bench/workers.py: LeNet-5, fixed work per trial"
seed = 0
[data]
dataset = "fashion_mnist"
val_fraction = {val_fraction}
train_size = {train_size}
test_size = 1000
[model]
name = "lenet5"
[train]
epochs = {epochs}
batch_size = 64
momentum = 0.9
[search]
lr = {{ low = 0.01, high = 0.1, log = true }}
[sampler]
name = "random"
[pruner]
name = "none"
"""


COMMANDS = {  # label: extra arguments, spelled out so that they do not move with hpo.run's defaults
    "--workers 1": ["--workers", "1", "--set", "train.threads=0"],
    "--workers 1, 1 thread": ["--workers", "1", "--set", "train.threads=1"],
    "--workers auto": ["--workers", "auto"],
}


def run_once(extra: list[str], args, folder: Path) -> tuple[float, float, str, float | None]:
    """Wall and CPU seconds of one whole command on a fresh store, how it split the machine, and
    the cores other processes used meanwhile."""
    store = folder / f"bench-{time.monotonic_ns()}.db"
    cmd = [
        sys.executable,
        "-m",
        "hpo.run",
        "--study",
        str(folder / "studies" / "bench"),
        "--trials",
        str(args.trials),
        *extra,
        "--storage",
        f"sqlite:///{store}",
        "--keep",
        "none",
        "--quiet",
    ]
    m = measure(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if m.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{m.stderr[-3000:]}")
    spawned = re.findall(r"^\[worker \d+\] pid \d+: \d+ trials?, (\d+) thread", m.stderr, re.M)
    if spawned:
        return (
            m.wall_s,
            m.cpu_s,
            f"{len(spawned)} workers x {spawned[0]} thread{'s' * (spawned[0] != '1')}",
            m.neighbours,
        )
    threads = "1" if "train.threads=1" in extra else str(cpu_count())
    return m.wall_s, m.cpu_s, f"1 process x {threads} thread{'s' * (threads != '1')}", m.neighbours


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8, help="trials per command (default: 8)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial (default: 2)")
    p.add_argument("--train-size", type=int, default=2000, help="training images, 0 for all 54,000 (default: 2000)")
    p.add_argument(
        "--val-fraction", type=float, default=0.01, help="validation share of the training set (default: 0.01)"
    )
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; the fastest of each counts (default: 2)")
    p.add_argument(
        "--single-thread",
        action="store_true",
        help="also time one worker with one thread: tells the gain of a second process from the cost of a "
        "second thread (default: off)",
    )
    args = p.parse_args()

    print(
        f"machine: {cpu_model()}, {cpu_count()} cores usable ({os.cpu_count()} online), load average {load_average()}"
    )
    print(f"python {platform.python_version()}, torch {torch.__version__}, {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(
        f"study: LeNet-5, Fashion-MNIST {args.train_size or 54000} train images, {args.epochs} epochs/trial, "
        f"{args.trials} trials per command, {args.rounds} round(s)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "studies" / "bench").mkdir(parents=True)
        (folder / "studies" / "bench" / STUDY_FILE).write_text(
            STUDY.format(train_size=args.train_size, epochs=args.epochs, val_fraction=args.val_fraction)
        )
        best: dict[str, tuple[float, float, str, str]] = {}
        for r in range(args.rounds):
            for label, extra in COMMANDS.items():
                if label.endswith("1 thread") and not args.single_thread:
                    continue
                seconds, cpu, split, others = run_once(extra, args, folder)
                busy = f"{others:.2f}" if others is not None else "n/a"
                print(
                    f"round {r + 1}  {label:22}  {seconds:6.1f} s  {args.trials / seconds * 3600:7.0f} trials/hour"
                    f"  {cpu:6.1f} CPU s  other processes used {busy} cores",
                    flush=True,
                )
                if label not in best or seconds < best[label][0]:
                    best[label] = (seconds, cpu, split, busy)
    print()
    for label, (seconds, cpu, split, busy) in best.items():
        print(
            f"{label:22}  {args.trials / seconds * 3600:7.0f} trials/hour  "
            f"(best {seconds:.1f} s, {cpu:.1f} CPU s; {split}; "
            f"other processes used {busy} cores in that round)"
        )
    print(f"--workers auto / --workers 1: {best['--workers 1'][0] / best['--workers auto'][0]:.2f}x")
    print(f"load average after {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
