"""Which sampler and pruner find a good model soonest: record real learning curves once, then
replay Optuna's samplers and pruners against them over many seeds, in seconds, with no training.

    .venv/bin/python bench/search.py record --study lenet_lr --grid 24 --train-size 8000
    .venv/bin/python bench/search.py record --study joint --configs 120 --train-size 8000
    .venv/bin/python bench/search.py replay --curves bench/search_curves/lenet_lr.jsonl --seeds 50

``record`` trains each configuration with hpo's loop on the real data, one torch thread, once
per ``--seeds`` seed, and appends every run (each epoch's validation accuracy and seconds) to
``bench/search_curves/STUDY.jsonl``; run again, it goes on where it stopped. ``replay`` runs the
study's trial budget with each sampler and pruner against an objective that looks the curves up
(one continuous parameter: interpolated in it between grid points; a larger space: a surrogate
fitted on the curves), reporting epoch by epoch, K workers on a virtual clock. A benchmark, not a
test: it prints figures and the machine, and never fails on a slow result.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere without installing
sys.path.insert(0, str(ROOT / "bench"))

from machine import Neighbours, cpu_model, load_average  # noqa: E402  (bench/machine.py)

from hpo import config as config_mod  # noqa: E402
from hpo.errors import HpoError  # noqa: E402

CURVES = ROOT / "bench" / "search_curves"


def machine() -> str:
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"optuna {optuna.__version__}, load average {load_average()}"
    )


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cmd_record(args) -> None:
    import search_record

    overrides = [
        f"data.train_size={args.train_size}",
        "train.threads=1",
        "train.device=cpu",
        "train.checkpoint_every=0",
        *args.set,
    ]
    spec = config_mod.load(args.study, overrides)
    if (args.grid > 0) == (args.configs > 0):
        raise HpoError("record needs exactly one of --grid N (one continuous parameter) or --configs N")
    if args.grid:
        configs = search_record.grid_configs(spec, args.grid)
    else:
        configs = search_record.sampled_configs(spec, args.configs, args.config_seed)
    out = Path(args.out) if args.out else CURVES / f"{spec.name}.jsonl"
    neighbours = Neighbours()
    meta = {
        "study": spec.name,
        "overrides": overrides,
        "train_size": args.train_size,
        "val_fraction": spec.base.data.val_fraction,
        "epochs": spec.base.train.epochs,
        "seeds": args.seeds,
        "configs": len(configs),
        "how": f"log grid of {args.grid}" if args.grid else f"random sampler, seed {args.config_seed}",
        "machine": machine(),
        "commit": commit(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    print(f"machine: {machine()}")
    print(f"recording {len(configs)} configurations x {len(args.seeds)} seeds of {spec.name} into {out}")
    search_record.record(spec, configs, args.seeds, out, meta, say=lambda s: print(s, flush=True))
    cores = neighbours.cores()
    print(f"done; other processes used {cores:.2f} cores meanwhile" if cores is not None else "done")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="train configurations of a preset's space and save their curves")
    r.add_argument("--study", required=True, help="a preset under studies/ or a study folder")
    r.add_argument(
        "--grid", type=int, default=0, help="a log grid of N values of the one searched range (default: off)"
    )
    r.add_argument("--configs", type=int, default=0, help="N configurations from the random sampler (default: off)")
    r.add_argument("--config-seed", type=int, default=0, help="the random sampler's seed (default: 0)")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds per config (default: 0 1)")
    r.add_argument("--train-size", type=int, default=8000, help="Fashion-MNIST training subset (default: 8000)")
    r.add_argument("--set", action="append", default=[], help="more study overrides (default: none)")
    r.add_argument("--out", default="", help="the curves file (default: bench/search_curves/STUDY.jsonl)")
    args = p.parse_args(argv)
    try:
        if args.command == "record":
            cmd_record(args)
    except HpoError as e:
        print(f"search.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
