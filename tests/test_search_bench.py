"""bench/search.py's replay logic (the benchmark itself is not a test): the grid objective
interpolates recorded curves, the virtual clock runs K workers out of order, the one-epoch
baseline spends what it should, and the table's percentiles keep a seed that never got there."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from hpo import config
from hpo.config import PrunerSpec, SamplerSpec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import search  # noqa: E402
import search_landscape  # noqa: E402
import search_record  # noqa: E402
import search_replay  # noqa: E402
import search_table  # noqa: E402

LRS = (1e-3, 1e-2, 1e-1)


def curve_runs() -> list[dict]:
    """Three lrs x two seeds, 6 epochs: lr 0.01 is best (final 88 / 90), 0.1 collapses at epoch 2
    under seed 1 only; every epoch costs 1 CPU second, seed 1's 2 seconds."""
    runs = []
    for i, lr in enumerate(LRS):
        for seed in (0, 1):
            top = {0: 80.0, 1: 89.0, 2: 84.0}[i] + (1.0 if seed else -1.0) * (i == 1)
            values = [top - 5 + e for e in range(6)]
            status = "ok"
            if i == 2 and seed == 1:
                values, status = [11.0, 10.0], "collapsed"
            runs.append(
                {
                    "config": i,
                    "seed": seed,
                    "params": {"lr": lr},
                    "status": status,
                    "val_acc": values,
                    "cpu_seconds": [1.0 + seed] * len(values),
                }
            )
    return runs


@pytest.fixture
def spec():
    return config.load(ROOT / "studies" / "lenet_lr")


@pytest.fixture
def grid(spec):
    return search_landscape.Grid(spec, curve_runs(), [0, 1])


def test_grid_interpolates_in_log_lr_per_seed(grid):
    assert grid.best == pytest.approx(89.0)  # lr 0.01's seed mean; 0.1 is not a full run under seed 1
    mid = grid.draw({"lr": math.sqrt(1e-3 * 1e-2)}, 0)  # halfway in log lr: the mean of the two curves
    assert mid.values == pytest.approx([(75 + 83) / 2 + e for e in range(6)]) and mid.stopped == ""
    assert grid.draw({"lr": 1e-2}, 1).values[-1] == pytest.approx(90.0)
    near = grid.draw({"lr": 0.08}, 1)  # nearer 0.1, which collapsed under seed 1: so does this
    assert near.stopped == "collapsed" and len(near.values) == 2
    assert grid.draw({"lr": 0.02}, 1).stopped == ""  # nearer 0.01


def test_replay_without_pruning_trains_every_epoch_and_two_workers_halve_the_clock(spec, grid):
    s = search_replay.with_search(spec, SamplerSpec("random", {}), PrunerSpec("none", {}))
    one = search_replay.replay(s, grid, 10, 1, seed=3)
    two = search_replay.replay(s, grid, 10, 2, seed=3)
    for t in (one, two):
        assert len(t.best) == 10 and list(t.best) == sorted(t.best)  # the best never drops
        assert list(t.seconds) == sorted(t.seconds)
    assert one.epochs[-1] == two.epochs[-1] <= 60  # the same trials; collapsed ones stop at 2 epochs
    assert two.seconds[-1] < 0.75 * one.seconds[-1]
    assert one.final <= 90.0


def test_two_workers_finish_trials_out_of_order(spec, grid, monkeypatch):
    # Seed 1's epochs take twice as long: a trial started second can end first.
    s = search_replay.with_search(spec, SamplerSpec("random", {}), PrunerSpec("none", {}))
    study_order = []
    original = search_replay.optuna.Study.tell

    def tell(self, trial, *args, **kwargs):
        study_order.append(trial.number)
        return original(self, trial, *args, **kwargs)

    monkeypatch.setattr(search_replay.optuna.Study, "tell", tell)
    search_replay.replay(s, grid, 12, 2, seed=0)
    assert sorted(study_order) == list(range(12)) and study_order != sorted(study_order)


def test_median_pruning_spends_fewer_epochs_and_finds_the_same_best(spec, grid):
    base = search_replay.with_search(spec, SamplerSpec("random", {}), PrunerSpec("none", {}))
    pruned = dataclasses.replace(base, pruner=PrunerSpec("median", {"n_startup_trials": 3, "n_warmup_steps": 1}))
    full = [search_replay.replay(base, grid, 20, 1, seed) for seed in range(5)]
    cut = [search_replay.replay(pruned, grid, 20, 1, seed) for seed in range(5)]
    assert sum(t.epochs[-1] for t in cut) < 0.8 * sum(t.epochs[-1] for t in full)
    assert abs(np.median([t.final for t in cut]) - np.median([t.final for t in full])) <= 1.0


def test_one_epoch_top_k_spends_trials_plus_k_full_runs(spec, grid):
    t = search_replay.one_epoch_top_k(spec, grid, trials=20, k=3, workers=1, seed=0)
    assert len(t.best) == 23 and t.epochs[-1] == 20 + 3 * 5
    assert all(b == -np.inf for b in t.best[:20])  # nothing completes in the first phase
    assert t.final >= 87.0  # the top 3 at epoch 1 hold a run near lr 0.01


def test_trace_reach_and_quantiles_keep_the_seeds_that_never_got_there():
    t = search_replay.Trace((1.0, 2.0, 5.0), (6, 12, 30), (80.0, 85.0, 89.0))
    assert t.reach(84.0) == (12.0, 2.0) and t.reach(95.0) == (math.inf, math.inf)
    assert search_table.quantiles([1, 2, 3, 4, math.inf] * 2) == (1.0, 3.0, math.inf)
    row = search_table.row("x", 1, [t, t], space_best=89.4)
    assert (row.reached, row.epochs[1], row.final[1]) == (2, 30.0, 89.0)


def test_surrogate_reproduces_recorded_runs_and_names_its_error(tmp_path):
    spec = config.load(ROOT / "studies" / "joint")
    rng = np.random.default_rng(0)
    configs = search_record.sampled_configs(spec, 40, seed=1)
    runs = []
    for i, p in enumerate(configs):
        quality = 70.0 + 15.0 * (p["optimizer"] == "adam") + 5.0 * (p["name"] == "simple_cnn")
        for seed in (0, 1):
            final = quality + rng.normal(0, 0.3)
            runs.append(
                {
                    "config": i,
                    "seed": seed,
                    "params": p,
                    "status": "ok",
                    "val_acc": [final - 6 + e for e in range(1, 7)],
                    "cpu_seconds": [2.0] * 6,
                }
            )
    sur = search_landscape.Surrogate(spec, runs, [0, 1], 6, candidates=300)
    r = runs[6]
    assert sur.draw(r["params"], r["seed"]).values == pytest.approx(r["val_acc"], abs=3.0)  # near its own record
    assert 88.0 < sur.best < 91.5  # adam + simple_cnn: 90
    err = sur.held_out_error(runs)
    assert err["mae"] < 0.5 * err["mae_of_the_mean"] and err["early_stop_misclassified"] == 0.0
    assert err["seed_gap"] < 1.0


def test_replay_of_a_missing_or_empty_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert search.main(["replay", "--study", "lenet_lr", "--curves", str(tmp_path / "no.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("search.py: cannot read the curves file") and err.count("\n") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"seeds": [0, 1]}) + "\n")
    assert search.main(["replay", "--study", "lenet_lr", "--curves", str(bad)]) == 2
    assert "holds no runs yet" in capsys.readouterr().err
    assert search.main(["record", "--study", "joint", "--grid", "5"]) == 2  # --grid needs one searched range
    assert "--grid needs a study that searches one range" in capsys.readouterr().err


def test_a_replay_repeats_itself_with_hyperband(spec, grid):
    # Hyperband picks each trial's bracket from a hash of the study name: a random name per
    # study made two replays of one seed differ.
    s = search_replay.with_search(
        spec, spec.sampler, PrunerSpec("hyperband", {"min_resource": 1, "reduction_factor": 3})
    )
    assert search_replay.replay(s, grid, 15, 2, seed=4) == search_replay.replay(s, grid, 15, 2, seed=4)


def test_under_a_window_the_replayed_study_is_the_same_for_one_and_two_workers(spec, grid):
    """hpo's window on the virtual clock: trial i starts once every index <= i - L has ended, so
    with K <= L workers the trials, their values and the epochs spent do not depend on K (only the
    clock and the waits do); free-running, two workers give another study (the test can fail)."""
    pruner = PrunerSpec("median", {"n_startup_trials": 2, "n_warmup_steps": 1})
    free = search_replay.with_search(spec, spec.sampler, pruner)
    window = dataclasses.replace(free, window=2)
    one, two = (search_replay.replay(window, grid, 16, k, seed=5) for k in (1, 2))
    assert one.ends == two.ends and len(one.ends) == 16  # each trial's state, epochs and value
    assert one.best[-1] == two.best[-1] and one.epochs[-1] == two.epochs[-1]
    assert one.waited == 0 and two.waited > 0  # seed 1's slow epochs hold the window back
    assert two.seconds[-1] < one.seconds[-1]
    assert search_replay.replay(free, grid, 16, 1, seed=5).ends != search_replay.replay(free, grid, 16, 2, seed=5).ends
