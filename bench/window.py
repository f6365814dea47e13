"""What the reproducible window costs: the peers study free-running and under ``window = L``.

    .venv/bin/python bench/window.py [--trials 30] [--epochs 6] [--train-size 0] [--seeds 0,1,2,3,4] [--window 2]
        [--modes free2,window2,free1] [--busy N]

The study is bench/peers.py's (LeNet-5 on Fashion-MNIST, SGD lr, momentum and batch size, TPE,
median pruner with 5 startup trials). For each study seed, up to three whole commands on fresh
SQLite stores, interleaved in this order (``--modes`` picks them):
1. ``free2``: free-running, ``--workers 2 --set window=0`` (today's default on 2 cores), one thread a trial;
2. ``window2``: the window, ``--workers 2 --set window=L``, one thread a trial (the window's rule);
3. ``free1``: full-information TPE, ``--workers 1 --set window=0`` (one process: each trial sees all
   before it), with torch's threads, as ``--workers 1`` runs: the quality reference, not a timed pair.
``--busy N`` starts N processes that each keep a core busy for the whole benchmark: a neighbour
load that is the same for every row, on top of whatever else the machine runs. For each: wall
time of the whole command, CPU seconds, the cores other processes used meanwhile
(bench/machine.py), epochs trained, trials pruned, the seconds trials waited for the window (the
sum of their ``window_wait_s``) and the best validation accuracy. The wall times of 1 and 2 are
compared seed by seed (same seed, neighbouring runs); the quality over all seeds. A benchmark, not
a test: it prints figures and the machine, and never fails on a slow result.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from meter import measure  # noqa: E402  (bench/meter.py)
from peers import STUDY  # noqa: E402  (bench/peers.py: the same study)

from hpo.config import STUDY_FILE, cpu_count  # noqa: E402

MODES = {  # key: (label, extra arguments; the window's value is filled in)
    "free2": ("free, 2 workers", ["--workers", "2", "--set", "window=0", "--set", "train.threads=1"]),
    "window2": ("window, 2 workers", ["--workers", "2", "--set", "window={window}", "--set", "train.threads=1"]),
    "free1": ("free, 1 worker", ["--workers", "1", "--set", "window=0", "--set", "train.threads=0"]),
}


def spin() -> None:  # a neighbour: one core kept busy until it is killed
    while True:
        pass


def run(extra: list[str], seed: int, args, folder: Path) -> dict:
    store = folder / f"w-{time.monotonic_ns()}.db"
    cmd = [
        sys.executable,
        "-m",
        "hpo.run",
        "--study",
        str(folder / "studies" / "bench"),
        "--trials",
        str(args.trials),
        *extra,
        "--set",
        f"seed={seed}",
        "--storage",
        f"sqlite:///{store}",
        "--keep",
        "none",
        "--quiet",
    ]
    m = measure(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if m.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{m.stderr[-3000:]}")
    trials = optuna.load_study(study_name="bench", storage=f"sqlite:///{store}").trials
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {
        "wall": m.wall_s,
        "cpu": m.cpu_s,
        "others": m.neighbours,
        "epochs": sum(t.user_attrs.get("epochs_run", 0) for t in trials),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
        "waited": sum(t.user_attrs.get("window_wait_s", 0.0) for t in trials),
        "best": max(t.value for t in done) if done else float("nan"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30, help="trials per command (default: 30)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial (default: 6)")
    p.add_argument("--train-size", type=int, default=0, help="training images, 0 for all 54,000 (default: 0)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="study seeds, comma-separated (default: 0,1,2,3,4)")
    p.add_argument("--window", type=int, default=2, help="the window L (default: 2, the worker count)")
    every = ",".join(MODES)
    p.add_argument("--modes", default=every, help=f"which commands, comma-separated (default: {every})")
    p.add_argument("--busy", type=int, default=0, help="processes that each keep a core busy meanwhile (default: 0)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if unknown := [m for m in modes if m not in MODES]:
        p.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    spinners = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for s in spinners:
        s.start()
    try:
        return bench(args, seeds, modes)
    finally:
        for s in spinners:
            s.kill()


def bench(args, seeds: list[int], modes: list[str]) -> int:
    print(f"machine: {cpu_model()}, {cpu_count()} cores usable, load average {load_average()}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"study: bench/peers.py's, {args.train_size or 'all'} training images, {args.epochs} epochs, "
        f"{args.trials} trials, window {args.window}, seeds {seeds}, modes {modes}, "
        f"{args.busy} busy neighbour process(es)\n"
    )
    results: dict[str, list[dict]] = {MODES[m][0]: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "studies" / "bench").mkdir(parents=True)
        (folder / "studies" / "bench" / STUDY_FILE).write_text(
            STUDY.format(train_size=args.train_size, epochs=args.epochs)
        )
        for seed in seeds:
            for label, extra in (MODES[m] for m in modes):
                r = run([a.format(window=args.window) for a in extra], seed, args, folder)
                results[label].append(r)
                others = f"{r['others']:.2f}" if r["others"] is not None else "n/a"
                print(
                    f"seed {seed}  {label:18} {r['wall']:6.1f} s  {r['cpu']:6.1f} CPU s  others {others} cores  "
                    f"{r['epochs']:3d} epochs  {r['pruned']:2d} pruned  waited {r['waited']:6.1f} s  "
                    f"best {r['best']:.2f}%",
                    flush=True,
                )
    free, window = results.get("free, 2 workers"), results.get("window, 2 workers")
    if free and window:
        ratios = [w["wall"] / f["wall"] for f, w in zip(free, window, strict=True)]
        per_epoch = [(w["wall"] / w["epochs"]) / (f["wall"] / f["epochs"]) for f, w in zip(free, window, strict=True)]
        print(f"\nwall time, window / free at 2 workers, per seed: {', '.join(f'{r:.2f}' for r in ratios)}")
        print(f"  mean {statistics.mean(ratios):.2f}, median {statistics.median(ratios):.2f}")
        print(f"  per epoch trained: {', '.join(f'{r:.2f}' for r in per_epoch)}, mean {statistics.mean(per_epoch):.2f}")
    for label, rs in results.items():
        best = [r["best"] for r in rs]
        spread = f" (sd {statistics.stdev(best):.2f})" if len(best) > 1 else ""
        epochs, waited = statistics.mean(r["epochs"] for r in rs), statistics.mean(r["waited"] for r in rs)
        print(
            f"{label:18} wall mean {statistics.mean(r['wall'] for r in rs):.1f} s; "
            f"best val acc mean {statistics.mean(best):.2f}%{spread}; epochs mean {epochs:.1f}; "
            f"waited mean {waited:.1f} s; others {min(r['others'] or 0 for r in rs):.2f}-"
            f"{max(r['others'] or 0 for r in rs):.2f} cores"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
