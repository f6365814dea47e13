"""Record real learning curves of a preset's search space for the replay benchmark.

Each configuration is trained with hpo's own loop (``hpo.training.loop.fit``) on the real data
the study file names, once per seed, and each run is appended to a JSON-lines file as it ends:
a first line of metadata, then one line per run with every epoch's validation accuracy and
seconds. A run that hpo's objective would stop (diverged, or collapsed to chance accuracy) is
stopped where the objective would stop it, and its status says so. Appending makes a recording
resumable and readable while it is still being written.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import optuna

from hpo import config as config_mod
from hpo.errors import HpoError
from hpo.search.objective import COLLAPSE_EPOCH, COLLAPSE_MARGIN
from hpo.search.space import trial_config
from hpo.training import data as data_mod
from hpo.training.loop import fit, setup_runtime


class _Collapsed(Exception):
    pass


def grid_configs(spec: config_mod.StudySpec, n: int) -> list[dict]:
    """A log (or linear) grid of ``n`` values over a study's one continuous parameter."""
    if len(spec.search) != 1 or spec.search[0].choices:
        raise HpoError(f"--grid needs a study that searches one range; {spec.name} searches {len(spec.search)}")
    p = spec.search[0]
    lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
    values = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    return [{p.optuna_name: min(max(math.exp(v) if p.log else v, p.low), p.high)} for v in values]


def sampled_configs(spec: config_mod.StudySpec, n: int, seed: int) -> list[dict]:
    """``n`` configurations drawn from the study's (conditional) space by Optuna's random sampler,
    through hpo's own ``trial_config``, so names and branches are the study's."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        trial_config(trial, spec)
        out.append(dict(trial.params))
        study.tell(trial, 0.0)
    return out


def done_runs(path: Path) -> set[tuple[int, int]]:
    if not path.exists():
        return set()
    lines = path.read_text().splitlines()[1:]
    return {(r["config"], r["seed"]) for r in map(json.loads, lines) if r}


def train_one(spec: config_mod.StudySpec, params: dict, seed: int, cache: dict) -> dict:
    """One configuration, one seed, with the objective's stopping rules for diverged and collapsed runs."""
    config = dataclasses.replace(trial_config(optuna.trial.FixedTrial(params), spec), seed=seed)
    if config.data not in cache:
        cache.clear()
        cache[config.data] = data_mod.load(config.data, spec.seed, setup_runtime(config)[0])
    data = cache[config.data]
    chance = 100.0 / data.info.num_classes
    curve, cpu = [], [time.process_time()]

    def on_epoch(stats) -> None:
        # CPU seconds as well as wall seconds: on a shared machine the wall time of an epoch says
        # as much about the neighbours as about the configuration; one thread's CPU time does not.
        cpu.append(time.process_time())
        curve.append(stats)
        if stats.epoch >= COLLAPSE_EPOCH and stats.val_acc < COLLAPSE_MARGIN * chance:
            raise _Collapsed

    status = "ok"
    try:
        result, _ = fit(config, data, on_epoch)
        status = result.status
    except _Collapsed:
        status = "collapsed"
    return {
        "status": status,
        "val_acc": [round(s.val_acc, 4) for s in curve],
        "seconds": [round(s.seconds, 3) for s in curve],
        "cpu_seconds": [round(b - a, 3) for a, b in itertools.pairwise(cpu)],
    }


def record(spec, configs: list[dict], seeds: list[int], out: Path, meta: dict, say=print) -> None:
    done = done_runs(out)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(meta) + "\n")
    cache: dict = {}
    total = len(configs) * len(seeds)
    start = time.perf_counter()
    n = len(done)
    for i, params in enumerate(configs):
        for seed in seeds:
            if (i, seed) in done:
                continue
            run = {"config": i, "seed": seed, "params": params, **train_one(spec, params, seed, cache)}
            with out.open("a") as f:
                f.write(json.dumps(run) + "\n")
            n += 1
            last = run["val_acc"][-1] if run["val_acc"] else float("nan")
            say(
                f"[{n}/{total}] config {i} seed {seed}: {run['status']}, {len(run['val_acc'])} epochs, "
                f"final {last:.2f}%, {sum(run['seconds']):.1f} s (elapsed {time.perf_counter() - start:.0f} s)"
            )
