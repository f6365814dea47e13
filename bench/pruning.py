"""What pruning saves: one study run twice in one go, same seed and trial count, with its pruner
and with none; prints epochs run, wall time and best value of each, and the machine.

    .venv/bin/python bench/pruning.py [--study lenet_lr] [--trials 30] [--set KEY=VALUE ...]

Target (lenet_lr, Fashion-MNIST, CPU): the pruned study's best value within 0.5 points of the
unpruned one, with at most half its epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

REPO = Path(__file__).resolve().parents[1]

from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)

from hpo import config, run  # noqa: E402


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, optuna {optuna.__version__}, "
        f"load average {load_average()}"
    )


def one_study(study: Path, trials: int, overrides: list[str], store: Path) -> dict:
    start = time.perf_counter()
    # One process: the same seed proposes the same parameters in both studies (workers would race).
    args = [
        "--study",
        str(study),
        "--trials",
        str(trials),
        "--storage",
        f"sqlite:///{store}",
        "--keep",
        "none",
        "--workers",
        "1",
    ]
    for item in overrides:
        args += ["--set", item]
    if run.main(args) != 0:
        sys.exit(f"pruning.py: python -m hpo.run {' '.join(args)} failed")
    wall = time.perf_counter() - start
    s = optuna.load_study(study_name=study.name, storage=f"sqlite:///{store}")
    epochs = sum(t.user_attrs.get("epochs_run", 0) for t in s.trials)
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in s.trials)
    return {
        "epochs": epochs,
        "wall_s": wall,
        "best": s.best_value,
        "best_test": s.best_trial.user_attrs.get("test_acc"),
        "pruned": pruned,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="lenet_lr", help="study under studies/ (default: lenet_lr)")
    p.add_argument("--trials", type=int, default=30, help="trials per run (default: 30)")
    p.add_argument("--set", action="append", default=[], help="overrides for both runs (default: none)")
    args = p.parse_args()
    os.chdir(REPO)
    spec = config.load(args.study, args.set)
    with tempfile.TemporaryDirectory() as tmp:
        pruned = one_study(spec.folder.resolve(), args.trials, args.set, Path(tmp) / "pruned.db")
        full = one_study(spec.folder.resolve(), args.trials, args.set + ["pruner.name=none"], Path(tmp) / "full.db")
    budget = args.trials * spec.base.train.epochs
    print(f"\nmachine: {machine()}")
    print(
        f"study {spec.name}: {args.trials} trials x {spec.base.train.epochs} epochs, seed {spec.seed}, "
        f"sampler {spec.sampler.name}, pruner {spec.pruner.name} {spec.pruner.options}, overrides {args.set or 'none'}"
    )
    print(f"{'run':<10}{'epochs':>8}{'of budget':>11}{'pruned':>8}{'wall s':>9}{'best val %':>12}{'its test %':>12}")
    for name, r in (("pruned", pruned), ("unpruned", full)):
        print(
            f"{name:<10}{r['epochs']:>8}{r['epochs'] / budget:>10.0%}{r['pruned']:>8}{r['wall_s']:>9.0f}"
            f"{r['best']:>12.2f}{r['best_test'] or float('nan'):>12.2f}"
        )
    gap, ratio = full["best"] - pruned["best"], pruned["epochs"] / full["epochs"]
    ok = gap <= 0.5 and ratio <= 0.5
    print(
        f"pruned/unpruned epochs {ratio:.2f} (target <= 0.50), best-value gap {gap:+.2f} points (target <= 0.50): "
        f"{'met' if ok else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
