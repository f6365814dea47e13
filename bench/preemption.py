"""What a stop costs: a 6-epoch LeNet-5 trial (python -m hpo.run, a real process) stopped by SIGTERM
at random points, then finished by its printed resume command; before (no checkpoints: the retry
starts at epoch 1, as every stopped trial did before issue 9) and after (a checkpoint every epoch).

    .venv/bin/python bench/preemption.py [--rounds 8] [--train-size 6000] [--seed 0]

Per stop: completed epochs the retry trains again, and the epoch the trial was in (lost either way);
the same random stop times for both settings.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parents[1]

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)

EPOCHS = 6


def hpo_run(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # One process: the signal goes to the trial's own process, as Slurm's does to a one-task job.
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.run", "--quiet", "--workers", "1", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def training_started(db: Path) -> bool:
    """The trial exists and is RUNNING (its data is loaded: training is about to start)."""
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return bool(conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()[0])
    except sqlite3.OperationalError:
        return False


def one_stop(cwd: Path, sets: list[str], delay: float, name: str) -> dict | None:
    """Start the study, SIGTERM it ``delay`` s into the trial, finish it with the printed command."""
    db = cwd / f"{name}.db"
    base = [
        "--study",
        "lenet_lr",
        "--until",
        "1",
        "--storage",
        f"sqlite:///{db}",
        "--keep",
        "none",
        "--checkpoint-dir",
        str(cwd / name),
        *[x for s in sets for x in ("--set", s)],
    ]
    proc = hpo_run(base, cwd)
    while not training_started(db):
        if proc.poll() is not None:
            raise RuntimeError(proc.communicate()[1][-2000:])
        time.sleep(0.02)
    time.sleep(delay)
    proc.terminate()
    _, err = proc.communicate()
    found = re.search(r"resume with: python -m hpo.run (.*)$", err, re.M)
    if proc.returncode == 0 or (found is None and " complete " in err):
        return None  # the trial finished before the stop came (a late one meets the interpreter's exit: -15)
    if found is None:
        raise RuntimeError(f"exit {proc.returncode} without a resume command: {err[-1500:]}")
    command = found.group(1).split()
    finish = hpo_run([*command, "--keep", "none", "--checkpoint-dir", str(cwd / name)], cwd)
    _, err = finish.communicate()
    if finish.returncode != 0:
        sys.exit(f"preemption.py: the resume command failed ({finish.returncode}): {err[-2000:]}")
    trials = optuna.load_study(study_name="lenet_lr", storage=f"sqlite:///{db}").trials
    stopped, done = trials[0], trials[-1]
    assert done.state == optuna.trial.TrialState.COMPLETE
    completed = stopped.user_attrs.get("epochs_run", 0)  # epochs whose records reached the store
    resumed = done.user_attrs.get("resumed_from_epoch", 0)
    return {"completed": completed, "redone": completed - min(resumed, completed), "resumed": resumed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=8, help="random stops per setting (default: 8)")
    p.add_argument("--train-size", type=int, default=6000, help="training images (default: 6000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stop times (default: 0)")
    args = p.parse_args()
    sets = [
        f"train.epochs={EPOCHS}",
        f"data.train_size={args.train_size}",
        "pruner.name=none",
        "train.threads=1",
        "data.test_size=1000",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "studies").symlink_to(REPO / "studies")
        # An uninterrupted trial first: how long it trains, to draw stop times within it.
        ref = hpo_run(
            [
                "--study",
                "lenet_lr",
                "--until",
                "1",
                "--storage",
                f"sqlite:///{cwd / 'ref.db'}",
                "--keep",
                "none",
                *[x for s in sets for x in ("--set", s)],
            ],
            cwd,
        )
        if ref.wait() != 0:
            sys.exit(f"preemption.py: the uninterrupted reference run failed ({ref.returncode})")
        (trial,) = optuna.load_study(study_name="lenet_lr", storage=f"sqlite:///{cwd / 'ref.db'}").trials
        wall = trial.user_attrs["wall_time_s"]
        rng = random.Random(args.seed)
        rows = {"before": [], "after": []}
        for r in range(args.rounds):
            delay = rng.uniform(0, wall)
            for label, every in (("before", 0), ("after", 1)):
                got = one_stop(cwd, sets + [f"train.checkpoint_every={every}"], delay, f"{label}{r}")
                if got is not None:
                    rows[label].append(got)
                    print(
                        f"round {r} stop at {delay:5.2f} s of {wall:.2f} s, {label:6}: "
                        f"stopped after {got['completed']} complete epochs, resumed from epoch {got['resumed']}, "
                        f"{got['redone']} complete epochs trained again",
                        flush=True,
                    )
    print(f"\nmachine: {cpu_model()}, {os.cpu_count()} cores, load average {load_average()}")
    print(
        f"LeNet-5, {EPOCHS} epochs, {args.train_size} Fashion-MNIST images, 1 thread; uninterrupted trial {wall:.1f} s"
    )
    for label, got in rows.items():
        if got:
            redone = [g["redone"] for g in got]
            print(
                f"{label:6} ({'no checkpoints' if label == 'before' else 'checkpoint every epoch'}): {len(got)} stops, "
                f"complete epochs trained again: mean {statistics.mean(redone):.2f}, max {max(redone)} "
                f"(+ the epoch in progress at each stop)"
            )


if __name__ == "__main__":
    main()
