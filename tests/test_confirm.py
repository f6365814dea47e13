"""python -m hpo.run --confirm K: retrain the top configurations with new seeds, as ordinary trials.

A real tiny study (Fashion-MNIST subset, one epoch) searched, then confirmed, through real subprocesses.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import optuna
import pytest
from builders import TINY_STUDY
from processes import hpo

from hpo.analysis import findings, summary
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
    # the summary's first line names the confirmed winner by its mean ± sd, as the confirmations table does
    (use,) = [x.text for x in summary.lines(f) if x.title == "What to use"]
    w = c.configs[0]
    assert (
        use.startswith(f"the configuration of trial #{winner} (") and f"{w.mean:.1f}% ± {w.sd:.2f} over 3 seeds" in use
    )

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


def test_confirm_refuses_a_set_that_changes_the_recipe_and_leaves_the_store_as_it_was(searched):
    before = [(t.number, t.state) for t in load(searched).get_trials()]
    proc = hpo("--study", "tiny", "--confirm", "1", "--set", "train.epochs=2", "--keep", "none", cwd=searched)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: --confirm: trial #") and "(train.epochs 1 -> 2)" in line, line
    assert "leave out the --set" in line
    assert [(t.number, t.state) for t in load(searched).get_trials()] == before  # nothing queued


@pytest.mark.parametrize("flags", [["--trials", "3"], ["--min-delta", "nan"]])
def test_options_that_would_be_ignored_or_mean_nothing_are_refused(study_dir, tmp_path, flags):
    args = ["--confirm", "1", *flags] if flags[0] == "--trials" else flags
    proc = hpo("--study", "tiny", *args, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    says = "leave out --trials" if flags[0] == "--trials" else "--min-delta must be a finite number >= 0, got nan"
    assert says in proc.stderr
    assert not (tmp_path / "storage").exists()


def _built(number, value, params, epochs, confirms=None, state=optuna.trial.TrialState.COMPLETE):
    attrs = {"config": {"seed": number, "train": {"epochs": epochs, "lr": params["lr"]}, "data": {}}}
    if confirms is not None:
        attrs[confirm.CONFIRMS] = confirms
    dist = {"lr": optuna.distributions.FloatDistribution(0.001, 1.0)}
    t = optuna.trial.create_trial(
        state=state,
        value=value if state == optuna.trial.TrialState.COMPLETE else None,
        params=params,
        distributions=dist,
        user_attrs=attrs,
    )
    t.number = number
    return t


def test_the_report_never_pools_another_recipe_and_keeps_a_configuration_that_collapsed():
    """Built trials: #0 and #1 searched at 2 epochs; #0 retrained once at 2 epochs and once at 3
    (another recipe: listed, not pooled); both of #1's retrainings collapsed (kept, never the winner)."""
    from hpo.analysis.confirmations import summarise

    a, b = {"lr": 0.1}, {"lr": 0.2}
    pruned = optuna.trial.TrialState.PRUNED
    trials = [
        _built(0, 80.0, a, 2),
        _built(1, 90.0, b, 2),
        _built(2, 82.0, a, 2, confirms=0),
        _built(3, 95.0, a, 3, confirms=0),
        _built(4, None, b, 2, confirms=1, state=pruned),
        _built(5, None, b, 2, confirms=1, state=pruned),
    ]
    c = summarise(trials, maximize=True, fmt=lambda v: f"{v:.1f}%")
    by = {x.source: x for x in c.configs}
    assert set(by) == {0, 1}  # the collapsed configuration is not dropped
    assert by[0].values == (80.0, 82.0) and by[0].mean == pytest.approx(81.0)  # 95.0 (3 epochs) not pooled
    assert by[0].other_recipe == ("train.epochs 2 -> 3",)
    assert by[1].values == (90.0,) and by[1].stopped == 2
    assert c.configs[0].source == 0  # 90.0 alone does not beat a configuration that held up
    assert "trial #0's configuration wins" in c.sentence
    assert "#1 collapsed or diverged in 2 of 2 retrainings: its mean is the search's own value alone." in c.sentence
    assert "Retrainings of #0 under another recipe (train.epochs 2 -> 3) are not pooled." in c.sentence


def test_confirm_says_when_the_study_holds_fewer_configurations_than_it_confirms(study_dir, tmp_path):
    hpo("--study", "tiny", "--trials", "2", "--set", "train.epochs=1", "--keep", "none", cwd=tmp_path, check=0)
    complete = [t for t in load(tmp_path).get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2, [t.state for t in load(tmp_path).get_trials()]
    proc = hpo("--study", "tiny", "--confirm", "1", "--set", "train.epochs=1", "--keep", "none", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (
        "--confirm: study 'tiny' holds 2 complete configurations, not the top 3 asked for: "
        "retraining those with 1 new seed each" in proc.stderr
    ), proc.stderr[-2000:]
    assert "tiny: 2 trials added" in proc.stdout


def test_confirm_after_a_search_under_two_workers_retrains_with_their_threads(study_dir, tmp_path):
    """The README's path: the study file leaves the threads to the machine, the search runs two
    one-thread workers (as --workers auto does on two cores), then --confirm in one process retrains
    with the threads the trials ran with, as the same recipe, instead of refusing."""
    (study_dir / "study.toml").write_text(TINY_STUDY.replace("threads = 1\n", ""))
    args = ("--study", "tiny", "--set", "train.epochs=1", "--keep", "none")
    proc = hpo(*args, "--trials", "4", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {t.user_attrs["config"]["train"]["threads"] for t in load(tmp_path).get_trials()} == {1}
    proc = hpo(*args, "--confirm", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    added = [t for t in load(tmp_path).get_trials() if "confirms" in t.user_attrs]
    assert len(added) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in added)
    assert {t.user_attrs["config"]["train"]["threads"] for t in added} == {1}
    f = findings.compute(load(tmp_path))
    assert all(not c.other_recipe for c in f.evidence.confirmations.configs)  # one recipe: pooled
