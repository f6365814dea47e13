"""One study three ways: hpo, plain Optuna and Ray Tune, in one run, on the same machine, data and budget.

    .venv/bin/python bench/peers.py [--trials 30] [--epochs 6] [--train-size 0] [--rounds 1]

The study: LeNet-5 on the real Fashion-MNIST (6,000 training images held out for validation,
the rest for training, no augmentation), SGD with lr (log 1e-4..1), momentum (0.5..0.99) and
batch size (32, 64, 128, 256) searched by Optuna's TPE (seed 0), ``--epochs`` epochs a trial,
``--trials`` trials, median-style pruning. Five whole commands, each on fresh stores:
1. ``python -m hpo.run --workers 1 --set train.threads=0``: one process, a torch thread per core
   (median pruner, 5 startup trials);
2. ``... --workers 1 --set train.threads=1``: one process, one thread;
3. ``python -m hpo.run --workers auto``: on a CPU, one worker per core, one thread each;
4. plain Optuna: bench/peers/optuna_simple.py, a transcription of optuna-examples'
   pytorch/pytorch_simple.py (DataLoader, per-image transforms; create_study's MedianPruner);
5. Ray Tune: bench/peers/ray_tune.py, Tuner + OptunaSearch + ASHAScheduler, one CPU per trial,
   max_concurrent_trials = the cores. Where Ray cannot run, one line says why and the rest run.
All read the same files (torchvision's FashionMNIST/raw layout, unpacked from Debian's package).

For each: wall time of the whole command, trials/hour, epochs trained, the best validation
accuracy any trial reached, the time at which the study first reached ``--target`` % validation
accuracy (from the command's start to the end of that epoch), peak memory (RSS of the whole
process tree at once) and CPU seconds (the tree's, user + system), and the cores other processes
used meanwhile. Rounds interleave the five as bench/loop.py does; each one's fastest round counts.
A benchmark, not a test: it prints figures and the machine, and never fails on a slow result.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH / "peers"))

from fmnist import raw_layout  # noqa: E402  (bench/peers/fmnist.py)
from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from meter import Measured, measure  # noqa: E402  (bench/meter.py)

from hpo.config import STUDY_FILE, cpu_count  # noqa: E402

STUDY = """
description = "bench/peers.py: LeNet-5 on Fashion-MNIST, SGD lr, momentum and batch size"
seed = 0
[data]
dataset = "fashion_mnist"
val_fraction = 0.1
train_size = {train_size}
augment = false
[model]
name = "lenet5"
[train]
epochs = {epochs}
optimizer = "sgd"
[search]
lr = {{ low = 1e-4, high = 1.0, log = true }}
momentum = {{ low = 0.5, high = 0.99 }}
batch_size = {{ choices = [32, 64, 128, 256] }}
[sampler]
name = "tpe"        # Optuna 5's defaults, as the peers get them
[pruner]
name = "median"     # MedianPruner's defaults, as create_study gives the plain Optuna peer
n_startup_trials = 5
n_warmup_steps = 0
"""


@dataclass
class Outcome:
    measured: Measured
    trials: list[dict]  # {"state": ..., "epochs": [[wall-clock time, val acc %], ...]}
    note: str = ""


def hpo_trials(store: Path) -> list[dict]:
    """Each trial's epochs as (wall-clock time, val acc %): its start plus its epochs' seconds."""
    url = f"sqlite:///{store}"
    (name,) = optuna.get_all_study_names(url)
    out = []
    for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False):
        at = t.datetime_start.timestamp() if t.datetime_start else 0.0
        epochs = []
        for e in t.user_attrs.get("curve", []):
            at += e["seconds"]
            epochs.append([at, e["val_acc"]])
        out.append({"state": t.state.name.lower(), "epochs": epochs})
    return out


def run_hpo(extra: list[str], args, folder: Path, data: Path) -> Outcome:
    store = folder / f"hpo-{os.getpid()}-{datetime.datetime.now():%H%M%S%f}.db"
    cmd = [
        sys.executable,
        "-m",
        "hpo.run",
        "--study",
        str(folder / "studies" / "peers"),
        "--trials",
        str(args.trials),
        *extra,
        "--storage",
        f"sqlite:///{store}",
        "--keep",
        "none",
        "--quiet",
        "--data-dir",
        str(data),
    ]
    m = measure(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if m.returncode != 0:
        return Outcome(
            m, [], f"failed (exit {m.returncode}): {m.stderr.strip().splitlines()[-1] if m.stderr.strip() else ''}"
        )
    return Outcome(m, hpo_trials(store))


def run_peer(script: str, args, data: Path) -> Outcome:
    cmd = [
        sys.executable,
        str(BENCH / "peers" / script),
        "--data-dir",
        str(data),
        "--trials",
        str(args.trials),
        "--epochs",
        str(args.epochs),
        "--train-size",
        str(args.train_size),
    ]
    if script == "optuna_simple.py" and args.optuna_threads:
        cmd += ["--threads", str(args.optuna_threads)]
    m = measure(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
    last = m.stdout.strip().splitlines()[-1] if m.stdout.strip() else ""
    if m.returncode != 0 or not last.startswith("{"):
        why = (
            last
            if last.startswith("unavailable:")
            else (f"failed (exit {m.returncode}): {(m.stderr.strip().splitlines() or [''])[-1][:300]}")
        )
        return Outcome(m, [], why)
    result = json.loads(last)
    return Outcome(
        m,
        result["trials"],
        f"{result.get('threads', '?')} torch thread(s) per trial"
        + (f", ray {result['ray']}" if "ray" in result else ""),
    )


RUNS = {  # hpo's settings spelled out, so that they do not move with hpo.run's defaults
    "hpo 1 x 2 threads": lambda args, folder, data: run_hpo(
        ["--workers", "1", "--set", "train.threads=0"], args, folder, data
    ),
    "hpo 1 x 1 thread": lambda args, folder, data: run_hpo(
        ["--workers", "1", "--set", "train.threads=1"], args, folder, data
    ),
    "hpo --workers auto": lambda args, folder, data: run_hpo(["--workers", "auto"], args, folder, data),
    "plain Optuna": lambda args, folder, data: run_peer("optuna_simple.py", args, data),
    "Ray Tune": lambda args, folder, data: run_peer("ray_tune.py", args, data),
}


@dataclass
class Figures:
    wall_s: float
    trials: int
    per_hour: float
    epochs: int
    best: float
    to_target: float | None  # seconds from the command's start
    rss_mib: float
    cpu_s: float
    neighbours: float | None
    states: str


def figures(o: Outcome, target: float) -> Figures:
    m = o.measured
    finished = [t for t in o.trials if t["state"] in ("complete", "pruned", "fail")]
    reports = [(at, acc) for t in o.trials for at, acc in t["epochs"]]
    reached = [at - m.start for at, acc in reports if acc >= target]
    counts = {s: sum(t["state"] == s for t in o.trials) for s in ("complete", "pruned", "fail")}
    return Figures(
        wall_s=m.wall_s,
        trials=len(finished),
        per_hour=len(finished) / m.wall_s * 3600,
        epochs=len(reports),
        best=max((acc for _, acc in reports), default=float("nan")),
        to_target=min(reached) if reached else None,
        rss_mib=m.peak_rss / 2**20,
        cpu_s=m.cpu_s,
        neighbours=m.neighbours,
        states=", ".join(f"{n} {s}" for s, n in counts.items() if n),
    )


def line(label: str, f: Figures, target: float) -> str:
    t = f"{f.to_target:6.0f} s" if f.to_target is not None else "   never"
    n = f"{f.neighbours:.2f}" if f.neighbours is not None else "n/a"
    return (
        f"{label:<19} {f.wall_s:7.1f} s  {f.per_hour:6.0f} trials/h  {f.epochs:4d} epochs  best {f.best:5.2f}%  "
        f"{target:g}% at {t}  peak {f.rss_mib:6.0f} MiB  {f.cpu_s:7.1f} CPU s  neighbours {n} cores  ({f.states})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/peers.py", description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30, help="trials per study (default: 30)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial (default: 6)")
    p.add_argument(
        "--train-size",
        type=int,
        default=0,
        help="training images, 0: all 54,000 left after the 6,000 held out (default: 0)",
    )
    p.add_argument("--target", type=float, default=89.0, help="validation accuracy %% to time (default: 89)")
    p.add_argument(
        "--optuna-threads",
        type=int,
        default=0,
        help="torch threads of the plain Optuna peer; 0: torch's default (all cores), as the example (default: 0)",
    )
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds; each run's fastest counts (default: 1)")
    p.add_argument(
        "--only",
        action="append",
        choices=list(RUNS),
        default=None,
        help="run only these (repeatable; default: all five)",
    )
    args = p.parse_args(argv)
    if args.trials < 1 or args.epochs < 1 or args.rounds < 1 or args.train_size < 0:
        p.error("need --trials, --epochs, --rounds >= 1 and --train-size >= 0")
    runs = {k: v for k, v in RUNS.items() if args.only is None or k in args.only}

    print(
        f"machine   {cpu_model()}, {cpu_count()} cores usable ({os.cpu_count()} online), "
        f"{platform.system()} {platform.release()}"
    )
    print(f"software  python {platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}")
    print(
        f"study     LeNet-5, Fashion-MNIST {args.train_size or 54000} train / 6000 val images, {args.epochs} epochs, "
        f"{args.trials} trials, TPE seed 0, median pruning (ASHA for Ray), {args.rounds} round(s)"
    )
    print(f"peers     plain Optuna with {args.optuna_threads or 'torch default'} thread(s); Ray: 1 CPU per trial")
    print(
        f"date      {datetime.datetime.now().isoformat(timespec='seconds')}, load average {load_average()}", flush=True
    )
    results: dict[str, list[Figures]] = {k: [] for k in runs}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-peers-") as tmp:
        folder = Path(tmp)
        data = raw_layout(folder / "data")
        (folder / "studies" / "peers").mkdir(parents=True)
        (folder / "studies" / "peers" / STUDY_FILE).write_text(
            STUDY.format(train_size=args.train_size, epochs=args.epochs)
        )
        for r in range(1, args.rounds + 1):
            for label, run in runs.items():
                outcome = run(args, folder, data)
                if not outcome.trials:
                    print(f"round {r}  {label:<19} {outcome.note}", flush=True)
                    continue
                f = figures(outcome, args.target)
                results[label].append(f)
                print(
                    f"round {r}  {line(label, f, args.target)}; {outcome.note}"
                    if outcome.note
                    else f"round {r}  {line(label, f, args.target)}",
                    flush=True,
                )
    print(f"\nresult (fastest round of each); load average after {load_average()}")
    print(
        f"| run | wall | trials/h | epochs | best val % | time to {args.target:g}% | peak RSS | CPU s "
        "| other processes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, rounds in results.items():
        if not rounds:
            print(f"| {label} | did not run | | | | | | | |")
            continue
        f = min(rounds, key=lambda x: x.wall_s)
        t = f"{f.to_target:.0f} s" if f.to_target is not None else "never"
        n = f"{f.neighbours:.2f} cores" if f.neighbours is not None else "n/a"
        print(
            f"| {label} | {f.wall_s:.0f} s | {f.per_hour:.0f} | {f.epochs} | {f.best:.2f} | {t} "
            f"| {f.rss_mib:.0f} MiB | "
            f"{f.cpu_s:.0f} | {n} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
