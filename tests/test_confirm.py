"""python -m hpo.run --confirm K: retrain the top configurations with new seeds, as ordinary trials.

A real tiny study (Fashion-MNIST subset, one epoch) searched, then confirmed, through real subprocesses.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
from processes import hpo

from hpo.analysis import findings
from hpo.search import confirm
from hpo.search.space import trial_seed

STORE = "storage/hpo.db"


def load(cwd: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{cwd / STORE}")


@pytest.fixture
def searched(study_dir, tmp_path):
    proc = hpo("--study", "tiny", "--trials", "4", "--set", "train.epochs=1", "--keep", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return tmp_path


def test_confirm_adds_k_new_seed_trials_per_top_configuration(searched):
    before = load(searched).get_trials()
    sources = confirm.top_sources(before, maximize=True)
    assert len(sources) == 3
    proc = hpo("--study", "tiny", "--confirm", "2", "--set", "train.epochs=1", "--keep", "none", cwd=searched)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny: 6 trials added" in proc.stdout
    trials = load(searched).get_trials()
    added = trials[len(before) :]
    assert len(added) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in added)
    by_source = {s.number: [t for t in added if t.user_attrs[confirm.CONFIRMS] == s.number] for s in sources}
    assert {n: len(ts) for n, ts in by_source.items()} == {s.number: 2 for s in sources}
    for s in sources:
        assert all(t.params == s.params for t in by_source[s.number])
    seeds = [t.user_attrs["seed"] for t in trials]
    assert len(set(seeds)) == len(seeds)  # every confirmation trains from a seed no trial used
    assert {t.user_attrs["seed"] for t in added}.isdisjoint({trial_seed(0, n) for n in range(len(trials))})
    assert all(t.user_attrs["config"]["seed"] == t.user_attrs["seed"] for t in added)

    # the report: mean ± sd per configuration over the source and its confirmations, the winner by its mean
    f = findings.compute(load(searched))
    c = f.evidence.confirmations
    means = {s.number: statistics.mean([s.value] + [t.value for t in by_source[s.number]]) for s in sources}
    assert [x.source for x in c.configs] == sorted(means, key=lambda n: -means[n])
    for x in c.configs:
        assert len(x.values) == 3 and x.mean == pytest.approx(means[x.source])
        assert x.sd == pytest.approx(statistics.stdev(x.values))
    winner = c.configs[0].source
    assert c.sentence.startswith(f"Retrained with new seeds, trial #{winner}'s configuration wins by its mean")
    assert "seed-to-seed spread is sd" in c.sentence
    assert c.sentence in f.headline

    # a second --confirm draws new seeds again
    proc = hpo("--study", "tiny", "--confirm", "1", "--set", "train.epochs=1", "--keep", "none", cwd=searched)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seeds = [t.user_attrs["seed"] for t in load(searched).get_trials()]
    assert len(seeds) == len(trials) + 3 and len(set(seeds)) == len(seeds)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--confirm", "0"], "error: --confirm must be >= 1 seeds per configuration, got 0\n"),
        (["--confirm", "2", "--workers", "2"], "error: --confirm runs in one process: leave out --workers\n"),
    ],
)
def test_bad_confirm_is_one_line_and_leaves_no_store(study_dir, tmp_path, args, message):
    proc = hpo("--study", "tiny", *args, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, message)
    assert not (tmp_path / "storage").exists()


def test_confirm_before_any_search_is_one_line(study_dir, tmp_path):
    proc = hpo("--study", "tiny", "--confirm", "2", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (
        2,
        "error: --confirm: no study 'tiny' in the store yet; run the search first\n",
    )
    assert not (tmp_path / STORE).exists()  # refused before any store was created
