"""hpo.analysis.evidence through hpo.analysis.findings: the findings' words against ground-truth studies
(tests/truth.py).

Each study's truth is known: the findings must state the true effects and no false ones.
"""

from __future__ import annotations

import math
import re

import optuna
import pytest
import truth

from hpo.analysis import findings, summary

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """Findings of each ground-truth study, computed once."""
    cache = {}

    def get(kind):
        if kind not in cache:
            url = f"sqlite:///{tmp_path_factory.mktemp(kind) / 'truth.db'}"
            study = truth.build(url, kind, kind)
            cache[kind] = (study, findings.compute(study))
        return cache[kind]

    return get


def line(f, start: str) -> str:
    """The report's sentence about a parameter (its section's words)."""
    (hit,) = [x for x in f.evidence.sentences.values() if x.startswith(start)]
    return hit


def said(f) -> dict[str, str]:
    """The summary block: title -> line."""
    return {x.title: x.text for x in summary.lines(f)}


def test_cliff_study_states_the_truth(computed):
    study, f = computed("cliff")
    ev = f.evidence
    trials = study.get_trials()
    # lr is ranked first where every state still counts, by both evaluators
    assert ev.rung is not None and not ev.rung.final and ev.rung.epoch == 2
    assert all(next(iter(v)) == "lr" for v in ev.rung_importance.values())
    # the summary names lr as what mattered, the cliff as what broke, and nothing else as an effect
    top = said(f)
    assert top["What mattered"].startswith("lr best between") and "momentum" not in top["What mattered"]
    assert "batch_size" not in top["What mattered"] and "momentum, batch_size" in top["What did not"]
    assert "momentum ≥ 0.9:" in top["What broke"] and "diverged" in top["What broke"]
    # its best range holds the optimum, at the rung and at the final epoch
    lr = line(f, "lr:")
    for lo, hi in re.findall(r"best between ([\d.]+) and ([\d.]+)", lr):
        assert float(lo) <= truth.BEST_LR <= float(hi), lr
    assert len(re.findall(r"best between", lr)) == 2
    assert ev.at_rung["lr"].clear and ev.at_final["lr"].clear
    # the momentum cliff is located with its counts
    high = [t for t in trials if t.params["momentum"] >= truth.CLIFF_MOMENTUM]
    low_stopped = [
        t for t in trials if t.params["momentum"] < truth.CLIFF_MOMENTUM and t.state != optuna.trial.TrialState.COMPLETE
    ]
    momentum = line(f, "momentum:")
    n = len(high)
    assert f"momentum ≥ 0.9: {n} of {n} trials stopped by epoch 2 ({n} diverged)" in momentum
    assert f"momentum < 0.9: {len(low_stopped)} of {80 - n} trials stopped" in momentum
    # and no false effects: momentum below the cliff and batch size do nothing
    assert not ev.at_final["momentum"].clear and not ev.at_rung["momentum"].clear
    assert "no clear effect" in momentum
    batch = line(f, "batch_size:")
    assert batch.count("no clear effect") == 2 and "best" not in batch and not ev.stops["batch_size"].clear


def test_an_irrelevant_parameter_is_no_clear_effect_however_its_means_fall(computed):
    study, f = computed("lucky_batch")
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    means = {
        b: sum(t.value for t in done if t.params["batch_size"] == b) / sum(t.params["batch_size"] == b for t in done)
        for b in truth.BATCHES
    }
    assert max(means.values()) - min(means.values()) > 5  # the sampled means do differ
    eff = f.evidence.at_final["batch_size"]
    assert {b.value: round(b.mean, 6) for b in eff.groups} == {b: round(m, 6) for b, m in means.items()}
    assert not eff.clear and eff.p_value >= 0.01
    assert "batch_size: " in line(f, "batch_size:") and "best" not in line(f, "batch_size:")
    assert "no clear effect" in line(f, "momentum:")


def test_joint_study_gets_the_partial_dependence_direction(computed):
    study, f = computed("confounded")
    trials = study.get_trials()
    assert sum(t.params["momentum"] > 0.8 for t in trials if t.params["lr"] > 0.01) > 10  # the sampler paired them
    m = f.evidence.at_final["momentum"]
    assert m.clear and m.pd_trend == "falls"  # the truth: momentum lowers accuracy
    raw = [b.mean for b in m.groups if b.n >= 3]
    assert raw[-1] > raw[0]  # while its raw means rise
    assert m.disagreement and "partial dependence disagree" in line(f, "momentum:")
    assert "val acc falls with momentum" in line(f, "momentum:")
    assert f.evidence.at_final["lr"].pd_trend == "rises" and not f.evidence.at_final["lr"].disagreement


def test_a_five_trial_study_says_its_evidence_is_thin_first(computed):
    _, f = computed("thin")
    top = said(f)
    assert top["What did not"].startswith("Thin evidence: 5 finished trials")
    assert "What mattered" not in top and not any("best between" in x for x in top.values())
    assert all(not e.clear for e in f.evidence.at_final.values())


def test_group_numbers_match_the_trials(computed):
    study, f = computed("cliff")
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    for b in f.evidence.at_final["lr"].groups:
        vals = [
            t.value
            for t in done
            if b.low <= t.params["lr"] < b.high
            or (b is f.evidence.at_final["lr"].groups[-1] and t.params["lr"] == b.high)
        ]
        assert b.n == len(vals) and math.isclose(b.mean, sum(vals) / len(vals))
        assert b.lo <= b.mean <= b.hi
    rung = f.evidence.rungs
    assert [r.trials for r in rung] == [
        sum(e in t.intermediate_values for t in study.get_trials()) for e in range(1, 7)
    ]
