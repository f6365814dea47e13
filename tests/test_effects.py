"""hpo.analysis.effects: intervals, the permutation test, small groups and partial dependence on known data."""

from __future__ import annotations

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from hpo.analysis import effects, groups

pct = lambda v: f"{v:.1f}%"  # noqa: E731


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(80, 2, 10), rng.normal(80, 2, 400)
    lo, hi = groups.bootstrap_interval(small, np.random.default_rng(1))
    assert lo < small.mean() < hi and 0.5 < hi - lo < 4
    lo2, hi2 = groups.bootstrap_interval(large, np.random.default_rng(1))
    assert hi2 - lo2 < (hi - lo) / 3
    # about 90% of intervals from fresh samples cover the true mean
    cover = [lo <= 80 <= hi for lo, hi in (groups.bootstrap_interval(rng.normal(80, 2, 30), rng) for _ in range(200))]
    assert 0.8 <= np.mean(cover) <= 0.97


def test_a_real_difference_is_claimed_and_noise_is_not():
    rng = np.random.default_rng(0)
    space = {"opt": CategoricalDistribution(["a", "b", "c"]), "noise": CategoricalDistribution([1, 2, 3])}
    params = [{"opt": "abc"[i % 3], "noise": 1 + (i // 3) % 3} for i in range(45)]
    values = [80 + {"a": 0, "b": 3, "c": 1}[p["opt"]] + rng.normal(0, 1) for p in params]
    out = effects.analyse(params, values, space, True, pct, "val acc")
    assert out["opt"].clear and out["opt"].p_value < 0.01
    assert out["opt"].sentence.startswith("opt: best at b by partial dependence (")
    assert not out["noise"].clear and out["noise"].sentence.startswith("noise: no clear effect (means ")
    for b in out["opt"].groups:
        vals = [v for p, v in zip(params, values, strict=True) if p["opt"] == b.value]
        assert b.n == len(vals) and b.mean == pytest.approx(np.mean(vals)) and b.lo < b.mean < b.hi


def test_a_group_under_three_trials_is_shown_but_never_a_finding():
    space = {"x": CategoricalDistribution(["a", "b", "rare"])}
    params = [{"x": "ab"[i % 2]} for i in range(20)] + [{"x": "rare"}] * 2
    values = [80.0 + (i % 5) * 0.1 for i in range(20)] + [99.0, 99.0]
    eff = effects.analyse(params, values, space, True, pct, "val acc")["x"]
    assert [(b.label, b.n) for b in eff.groups] == [("a", 10), ("b", 10), ("rare", 2)]
    assert "rare" not in eff.claim and not eff.clear


def test_too_few_trials_says_so():
    space = {"lr": FloatDistribution(1e-4, 1, log=True)}
    eff = effects.analyse([{"lr": 10**-i} for i in range(1, 6)], [80, 85, 70, 60, 50], space, True, pct, "val acc")[
        "lr"
    ]
    assert eff.claim == "too few trials (5) to tell an effect from noise" and eff.p_value is None


def test_log_bins_are_log_spaced():
    kind, index, bins = groups.bins(FloatDistribution(1e-4, 1, log=True), [10 ** (-4 + 4 * i / 29) for i in range(30)])
    assert kind == "range" and len(bins) == 5
    widths = [np.log10(g["high"] / g["low"]) for g in bins]
    assert np.allclose(widths, 0.8) and sorted(set(index)) == [0, 1, 2, 3, 4]
