"""hpo.search.plateau: stop adding trials once the best value stopped improving (--patience, [stop])."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path

import optuna
import pytest
from builders import write_study
from optuna.distributions import FloatDistribution
from processes import hpo

from hpo import config
from hpo.errors import HpoError
from hpo.search.plateau import Plateau, seed_noise

START = datetime.datetime(2026, 1, 5, 9, 0, 0)


def study_of(values: list[float], params: list[float] | None = None, direction: str = "maximize") -> optuna.Study:
    """Trials finishing in list order (datetime_complete one minute apart)."""
    study = optuna.create_study(direction=direction)
    for i, v in enumerate(values):
        x = params[i] if params else i / 100
        t = optuna.create_trial(value=v, params={"x": x}, distributions={"x": FloatDistribution(0, 1)})
        t.datetime_start, t.datetime_complete = (
            START + datetime.timedelta(minutes=i),
            START + datetime.timedelta(minutes=i, seconds=30),
        )
        study.add_trial(t)
    return study


def test_stops_when_the_last_n_trials_did_not_beat_the_best_by_more_than_min_delta():
    study = study_of([80, 85, 88, 88.05, 88.02, 87, 86])
    reason = Plateau(3).check(study)  # best before the last 3: 88.05 (#3); now: the same
    assert reason.startswith("stopped on a plateau: the best value (88.05, trial #3) has improved by 0 in the last 3")
    assert "min_delta 0.1 (the default; no trial was repeated" in reason
    assert Plateau(5).check(study) == ""  # before the last 5: 85; now 88.05
    assert Plateau(4).check(study) != ""  # before the last 4: 88; +0.05 is within 0.1
    assert Plateau(4, min_delta=0.01).check(study) == ""
    assert Plateau(7).check(study) == ""  # nothing before the window: too young to tell
    assert Plateau(0).check(study) == ""  # off


def test_minimize_and_pruned_trials_count_as_finished():
    study = study_of([5.0, 3.0, 2.95, 2.99], direction="minimize")
    assert (
        Plateau(2).check(study).startswith("stopped on a plateau: the best value (2.95, trial #2) has improved by 0.05")
    )
    assert Plateau(3).check(study) == ""  # before the last 3: 5.0
    pruned = optuna.create_trial(
        state=optuna.trial.TrialState.PRUNED,
        params={"x": 0.9},
        distributions={"x": FloatDistribution(0, 1)},
        intermediate_values={1: 9.0},
    )
    pruned.datetime_start, pruned.datetime_complete = (
        START + datetime.timedelta(hours=1),
        START + datetime.timedelta(hours=1, seconds=5),
    )
    study.add_trial(pruned)
    assert Plateau(3).check(study) != ""  # the pruned trial is one of the last 3: before them, 3.0


def test_the_default_min_delta_is_the_seed_noise_where_trials_were_repeated():
    # trials 0 and 1 repeat x = 0.5 (a confirmation with another seed): 88 and 89, sd 0.707
    study = study_of([88.0, 89.0, 89.3, 89.5, 89.2], params=[0.5, 0.5, 0.1, 0.2, 0.3])
    assert seed_noise(study.trials) == pytest.approx(0.7071, abs=1e-4)
    reason = Plateau(3).check(study)  # 89.0 -> 89.5 is 0.5: within the noise
    assert "min_delta 0.707 (the seed-to-seed noise)" in reason
    assert Plateau(3).check(study_of([88.0, 89.0, 89.3, 89.5, 89.2])) == ""  # no repeat: 0.1, and 0.5 > 0.1
    assert seed_noise(study_of([1.0, 2.0]).trials) is None


def test_as_a_callback_it_stops_optimize():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    plateau = Plateau(4)
    study.optimize(lambda t: 50.0 + 0 * t.suggest_float("x", 0, 1), n_trials=40, callbacks=[plateau])
    assert len(study.trials) == 5 and plateau.reason.startswith("stopped on a plateau")


@pytest.mark.parametrize(
    "stop, message",
    [
        ("patience = -1", r"^stop.patience must be >= 0"),
        ("min_delta = -0.5", r"^stop.min_delta must be a finite number >= 0, got -0.5"),
        ("patiance = 3", r"^unknown key stop.patiance \(did you mean 'patience'\?\); known keys: patience, min_delta$"),
        ('patience = "3"', r"^stop.patience must be int"),
    ],
)
def test_bad_stop_settings_are_one_line(stop, message):
    with pytest.raises(HpoError, match=message):
        config.parse(tomllib.loads(f"[stop]\n{stop}\n"), "t", Path("studies/t"))
    assert config.parse(tomllib.loads("[stop]\npatience = 4\nmin_delta = 1\n"), "t", Path("t")).stop == config.StopSpec(
        4, 1.0
    )


TINY = ("epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1", 'name = "random"')


@pytest.fixture
def flat_study(tmp_path, monkeypatch, fashion_mnist_system):
    monkeypatch.chdir(tmp_path)
    folder = write_study(tmp_path / "studies" / "flat", train=TINY[0], sampler=TINY[1])
    (folder / "study.toml").write_text(
        (folder / "study.toml").read_text().replace("train_size = 2000", "train_size = 300")
    )
    return tmp_path


def test_a_real_run_stops_on_a_plateau_and_says_why(flat_study):
    # min_delta 100: no gain counts, so the run stops once 2 trials follow the first
    proc = hpo("--study", "flat", "--quiet", "--trials", "10", "--patience", "2", "--min-delta", "100", cwd=flat_study)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "stopped on a plateau" in proc.stderr and "in the last 2 finished trials" in proc.stderr
    trials = optuna.load_study(study_name="flat", storage=f"sqlite:///{flat_study / 'storage/hpo.db'}").trials
    assert len(trials) == 3


def test_every_worker_stops_on_the_plateau(flat_study):
    proc = hpo(
        "--study",
        "flat",
        "--quiet",
        "--trials",
        "12",
        "--workers",
        "2",
        "--patience",
        "2",
        "--min-delta",
        "100",
        cwd=flat_study,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for worker in (0, 1):
        assert f"[worker {worker}] stopped on a plateau" in proc.stderr, proc.stderr[-3000:]
    trials = optuna.load_study(study_name="flat", storage=f"sqlite:///{flat_study / 'storage/hpo.db'}").trials
    assert 3 <= len(trials) <= 5  # each worker stops after its own next trial once three have finished
