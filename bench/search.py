"""Which sampler and pruner find a good model soonest: record real learning curves once, then
replay Optuna's samplers and pruners against them over many seeds, in seconds, with no training.

    .venv/bin/python bench/search.py record --study lenet_lr --grid 24 --train-size 8000
    .venv/bin/python bench/search.py record --study joint --configs 120 --train-size 8000
    .venv/bin/python bench/search.py replay --curves bench/search_curves/lenet_lr.jsonl --seeds 50
    .venv/bin/python bench/search.py replay --study lenet_lr --seeds 50 --windows 2 3 4 --workers 2 4

``record`` trains each configuration with hpo's loop on the real data, one torch thread, once
per ``--seeds`` seed, and appends every run (each epoch's validation accuracy and seconds) to
``bench/search_curves/STUDY.jsonl``; run again, it goes on where it stopped. ``replay`` runs the
study's trial budget with each sampler and pruner against an objective that looks the curves up
(one continuous parameter: interpolated in it between grid points; a larger space: a surrogate
fitted on the curves), reporting epoch by epoch, K workers on a virtual clock; with ``--windows``,
instead, the preset's own sampler and pruner free-running and under each reproducible window L
(hpo.search.window), at 1 worker and each of ``--workers``. A benchmark, not a test: it prints
figures and the machine, and never fails on a slow result.
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


def sampler_variants(spec) -> dict:
    """The preset's sampler and the others to compare, as study-file settings."""
    from hpo.config import SamplerSpec

    s = spec.sampler
    if s.name != "tpe":
        return {f"{s.name} (preset)": s}
    uni = {k: v for k, v in s.options.items() if k not in ("multivariate", "group")}
    return {
        "tpe multivariate (preset)": s,
        "tpe univariate": SamplerSpec("tpe", {**uni, "multivariate": False}),
        "random": SamplerSpec("random", {}),
        "qmc": SamplerSpec("qmc", {"scramble": True}),
        "gp": SamplerSpec("gp", {}),
        "cmaes": SamplerSpec("cmaes", {}),
    }


def pruner_variants(spec) -> dict:
    from hpo.config import PrunerSpec

    options = {
        "median": {"n_startup_trials": 5, "n_warmup_steps": 1},
        "percentile": {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 1},
        "successive_halving": {"min_resource": 1, "reduction_factor": 3},
        "hyperband": {"min_resource": 1, "reduction_factor": 3},
        "patient": {"patience": 2},
        "none": {},
    }
    options[spec.pruner.name] = spec.pruner.options
    return {name: PrunerSpec(name, opts) for name, opts in options.items()}


def cmd_replay(args) -> None:
    import json
    import time

    import search_landscape
    import search_replay
    import search_table

    spec = config_mod.load(args.study)
    path = Path(args.curves) if args.curves else CURVES / f"{spec.name}.jsonl"
    meta, runs, land = search_landscape.landscape(spec, path)
    trials = args.trials or spec.trials
    neighbours = Neighbours()
    print(f"machine: {machine()}")
    print(
        f"{spec.name}: {len(runs) // len(meta['seeds'])} configurations x {len(meta['seeds'])} seeds from {path.name} "
        f"({meta['how']}, {meta['train_size']} training images, {meta['epochs']} epochs); "
        f"{trials} trials a study; space's best {land.best:.2f}%"
    )
    if isinstance(land, search_landscape.Surrogate):
        err = land.held_out_error(runs)
        print(
            f"surrogate (random forest, {search_landscape.TREES} trees) held-out error of the final accuracy "
            f"{err['mae']:.2f} points (the training runs' mean: {err['mae_of_the_mean']:.2f}; seeds differ by "
            f"{err['seed_gap']:.2f}); early stops misclassified "
            f"{err['early_stop_misclassified']:.0%}"
        )
    if args.windows:
        return windows(args, spec, land, trials)
    samplers, pruners = sampler_variants(spec), pruner_variants(spec)
    preset_s, preset_p = next(iter(samplers)), spec.pruner.name
    combos = {f"{name} + {preset_p}": (s, spec.pruner) for name, s in samplers.items()}
    combos.update({f"{preset_s} + {name}": (samplers[preset_s], p) for name, p in pruners.items()})
    if args.only:
        combos = {k: v for k, v in combos.items() if any(o in k for o in args.only)}
    results, rows = {}, []

    def run(name: str, workers: int, fn) -> None:
        n = args.gp_seeds if name.startswith("gp") else args.seeds
        start = time.perf_counter()
        traces = [fn(seed) for seed in range(n)]
        results[(name, workers)] = traces
        rows.append(search_table.row(name, workers, traces, land.best))
        r = rows[-1]
        print(
            f"  {name}, {workers} worker(s), {n} seeds: median {r.epochs[1]} epochs to within "
            f"{search_table.GAP}, final {r.final[1]:.2f} ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    for name, (s, p) in combos.items():
        sp = search_replay.with_search(spec, s, p)
        run(name, 1, lambda seed, sp=sp: search_replay.replay(sp, land, trials, 1, seed))

    # The best sampler of the first sweep with the best pruner of the second, where both moved.
    def leader(names):
        done = [r for r in rows if r.name in names]
        return min(done, key=lambda r: (r.epochs[1], r.epochs[2])).name if done else None

    best_s = leader([f"{n} + {preset_p}" for n in samplers])
    best_p = leader([f"{preset_s} + {n}" for n in pruners])
    if best_s and best_p and best_s != f"{preset_s} + {preset_p}" != best_p:
        s_name, p_name = best_s.rsplit(" + ", 1)[0], best_p.rsplit(" + ", 1)[1]
        combos[f"{s_name} + {p_name}"] = (samplers[s_name], pruners[p_name])
        sp = search_replay.with_search(spec, *combos[f"{s_name} + {p_name}"])
        run(f"{s_name} + {p_name}", 1, lambda seed: search_replay.replay(sp, land, trials, 1, seed))
    top = f"one epoch, top {args.top_k} (random)"
    run(top, 1, lambda seed: search_replay.one_epoch_top_k(spec, land, trials, args.top_k, 1, seed))
    leaders = sorted((r for r in rows if r.workers == 1 and r.name != top), key=lambda r: (r.epochs[1], r.epochs[2]))
    lead = [r.name for r in leaders[: args.lead]]
    preset = f"{preset_s} + {preset_p}"
    if preset in combos and preset not in lead:
        lead.append(preset)
    for workers in args.workers:
        for name in lead:
            sp = search_replay.with_search(spec, *combos[name])
            run(name, workers, lambda seed, sp=sp, w=workers: search_replay.replay(sp, land, trials, w, seed))
        run(
            top, workers, lambda seed, w=workers: search_replay.one_epoch_top_k(spec, land, trials, args.top_k, w, seed)
        )
    rows.sort(key=lambda r: (r.workers, r.epochs[1], r.epochs[2]))
    print()
    print(search_table.markdown(rows))
    cores = neighbours.cores()
    print(f"other processes used {cores:.2f} cores meanwhile" if cores is not None else "")
    if args.plot:
        series = {n: results[(n, 1)] for n in [*lead, top] if (n, 1) in results}
        search_table.plot(
            series, land.best, f"{spec.name}: replayed studies, 1 worker", args.plot, trials * spec.base.train.epochs
        )
        print(f"plot: {args.plot}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"space_best": land.best, "rows": [r.__dict__ for r in rows]}, indent=1, default=str)
        )


def windows(args, spec, land, trials: int) -> None:
    """The preset's sampler and pruner free-running and under each ``--windows`` L (hpo.search.window),
    at 1 worker and each of ``--workers``: what the window costs in epochs, quality, clock and waits.
    Under a window a study is the same for every K <= L, so those rows differ only in their clock."""
    import dataclasses
    import time

    import search_replay
    import search_table

    rows = []
    for workers in [1, *args.workers]:
        for window in [0, *args.windows]:
            sp = dataclasses.replace(spec, window=window)
            name = f"{spec.sampler.name} + {spec.pruner.name}, " + (f"window {window}" if window else "free-running")
            start = time.perf_counter()
            traces = [search_replay.replay(sp, land, trials, workers, seed) for seed in range(args.seeds)]
            rows.append(search_table.row(name, workers, traces, land.best))
            r = rows[-1]
            print(
                f"  {name}, {workers} worker(s), {args.seeds} seeds: median {r.epochs[1]} epochs to within "
                f"{search_table.GAP}, final {r.final[1]:.2f}, clock {r.clock:.0f} s, waited {r.waited:.0f} s "
                f"({time.perf_counter() - start:.1f} s)",
                flush=True,
            )
    print()
    print(search_table.markdown(rows, windows=True))


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
    y = sub.add_parser("replay", help="replay samplers and pruners on recorded curves")
    y.add_argument("--study", required=True, help="the preset whose space and budget are replayed")
    y.add_argument("--curves", default="", help="the curves file (default: bench/search_curves/STUDY.jsonl)")
    y.add_argument("--trials", type=int, default=0, help="trials a study (default: the study file's)")
    y.add_argument("--seeds", type=int, default=50, help="replayed studies per combination (default: 50)")
    y.add_argument("--gp-seeds", type=int, default=20, help="the same for the slow GP sampler (default: 20)")
    y.add_argument(
        "--workers", type=int, nargs="*", default=[2, 4], help="more worker counts for the leaders (default: 2 4)"
    )
    y.add_argument(
        "--lead", type=int, default=3, help="how many leaders at 1 worker go on to more workers (default: 3)"
    )
    y.add_argument("--top-k", type=int, default=5, help="the one-epoch baseline's K (default: 5)")
    y.add_argument(
        "--windows",
        type=int,
        nargs="*",
        default=[],
        help="instead of the sweep: the preset free-running and under each window L, at 1 worker and each of --workers",
    )
    y.add_argument("--only", action="append", default=[], help="only combinations whose name has this (default: all)")
    y.add_argument("--plot", default="", help="write the anytime plot here (PNG; default: none)")
    y.add_argument("--json", default="", help="write the rows here (default: none)")
    args = p.parse_args(argv)
    try:
        if args.command == "record":
            cmd_record(args)
        else:
            cmd_replay(args)
    except HpoError as e:
        print(f"search.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
