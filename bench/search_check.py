"""A sampler/pruner choice checked on real studies: old and new settings of a preset, interleaved
rounds of whole ``python -m hpo.run`` commands on fresh SQLite stores (the default workers).

    .venv/bin/python bench/search_check.py --rounds 3 --old sampler.name=tpe ... --new pruner.name=...

Per run: wall time of the command, the time from its start to the end of the first epoch at
``--target`` % validation or more (a trial's start in the store plus its epochs' seconds, as
peers.py), the final best, epochs trained, and the cores other processes used meanwhile. A
benchmark, not a test: it prints figures and the machine, and never fails on a slow result.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from machine import Neighbours  # noqa: E402
from search import machine  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.ERROR)


def one_run(study: str, trials: int, overrides: list[str], store: Path, target: float) -> dict:
    cmd = [sys.executable, "-m", "hpo.run", "--study", study, "--trials", str(trials)]
    cmd += ["--storage", f"sqlite:///{store}", "--keep", "none", "--quiet"]
    for item in overrides:
        cmd += ["--set", item]
    neighbours = Neighbours()  # less this process's and its waited-for children's CPU
    wall_start, start = time.time(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        sys.exit(f"search_check.py: {' '.join(cmd)} failed (exit {proc.returncode}): {tail}")
    (name,) = optuna.get_all_study_names(f"sqlite:///{store}")
    s = optuna.load_study(study_name=name, storage=f"sqlite:///{store}")
    reached, epochs = [], 0
    for t in s.get_trials(deepcopy=False):
        at = t.datetime_start.timestamp() if t.datetime_start else 0.0
        for e in t.user_attrs.get("curve", []):
            at += e["seconds"]
            epochs += 1
            if e["val_acc"] >= target:
                reached.append(at - wall_start)
    return {
        "wall_s": wall,
        "to_target_s": min(reached) if reached else None,
        "best": s.best_value,
        "epochs": epochs,
        "neighbours": neighbours.cores(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default="lenet_lr", help="the preset (default: lenet_lr)")
    p.add_argument("--trials", type=int, default=50, help="trials a run (default: 50)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of old and new (default: 3)")
    p.add_argument("--target", type=float, default=89.0, help="validation accuracy %% to time (default: 89)")
    p.add_argument("--old", action="append", default=[], help="--set items of the old setting (default: none)")
    p.add_argument("--new", action="append", default=[], help="--set items of the new setting (default: none)")
    p.add_argument("--log", default="", help="append each run as a JSON line here (default: none)")
    args = p.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    print(f"old: {args.old or 'the study file'}\nnew: {args.new or 'the study file'}", flush=True)
    rows = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label in ("old", "new") if r % 2 == 0 else ("new", "old"):
                overrides = args.old if label == "old" else args.new
                out = one_run(args.study, args.trials, overrides, Path(tmp) / f"{label}{r}.db", args.target)
                out.update(round=r, setting=label)
                rows[label].append(out)
                to = f"{out['to_target_s']:.0f} s" if out["to_target_s"] is not None else "never"
                print(
                    f"round {r} {label}: wall {out['wall_s']:.0f} s, {args.target:g}% at {to}, "
                    f"best {out['best']:.2f}%, {out['epochs']} epochs, neighbours {out['neighbours']:.2f} cores",
                    flush=True,
                )
                if args.log:
                    with open(args.log, "a") as f:
                        f.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
