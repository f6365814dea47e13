"""--warm-start: the best K configurations of another study, queued in this study's parameters."""

from __future__ import annotations

import tomllib
from pathlib import Path

import optuna
import pytest
from builders import write_study
from optuna.distributions import CategoricalDistribution, FloatDistribution
from processes import hpo

from hpo import config
from hpo.errors import HpoError
from hpo.search import warmstart

THIS = """
seed = 0
[train]
epochs = 1
optimizer = "sgd"
warmup_epochs = 1
[search]
optimizer = ["sgd", "adam"]
momentum = { low = 0.5, high = 0.95, when = { optimizer = "sgd" } }
lr = [{ low = 1e-3, high = 0.5, log = true, when = { optimizer = "sgd" } },
      { low = 1e-5, high = 1e-2, log = true, when = { optimizer = "adam" } }]
warmup_epochs = { low = 0, high = 2 }
"""
# the source searched lr, momentum and batch size with SGD only; value = its val_acc
SOURCE = [
    ({"lr": 0.05, "momentum": 0.9, "batch_size": 64}, 88.0),
    ({"lr": 0.2, "momentum": 0.99, "batch_size": 128}, 90.0),
    ({"lr": 0.9, "momentum": 0.6, "batch_size": 64}, 89.0),
    ({"lr": 0.01, "momentum": 0.7, "batch_size": 32}, 70.0),
]
DISTS = {
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "momentum": FloatDistribution(0.5, 0.99),
    "batch_size": CategoricalDistribution([32, 64, 128]),
}


def source_store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    study = optuna.create_study(study_name="src", storage=url, direction="maximize")
    for params, value in SOURCE:
        study.add_trial(optuna.create_trial(value=value, params=params, distributions=DISTS))
    return url


def spec() -> config.StudySpec:
    return config.parse(tomllib.loads(THIS), "this", Path("studies/this"))


def test_plan_takes_the_best_k_in_this_studys_parameters(tmp_path):
    planned = warmstart.plan(source_store(tmp_path), "src", spec(), 3)
    assert [tag for tag, _ in planned] == ["src#1", "src#2", "src#0"]  # 90, 89, 88
    # optimizer and warmup: not searched by the source, this study's base (sgd, 1); batch_size: not searched here;
    # momentum 0.99 and lr 0.9 are outside this study's ranges: left to the sampler
    assert [p for _, p in planned] == [
        {"optimizer": "sgd", "lr|sgd": 0.2, "warmup_epochs": 1},
        {"optimizer": "sgd", "momentum": 0.6, "warmup_epochs": 1},
        {"optimizer": "sgd", "momentum": 0.9, "lr|sgd": 0.05, "warmup_epochs": 1},
    ]


def test_enqueue_queues_exactly_k_once(tmp_path):
    url = source_store(tmp_path)
    planned = warmstart.plan(url, "src", spec(), 2)
    study = optuna.create_study(study_name="this", storage=url, direction="maximize")
    assert warmstart.enqueue(study, planned) == ["src#1", "src#2"]
    assert warmstart.enqueue(study, planned) == []  # a resumed run queues nothing twice
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 2 and [t.user_attrs["warm_start"] for t in waiting] == ["src#1", "src#2"]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [p for _, p in planned]


@pytest.mark.parametrize(
    "name, k, message",
    [
        ("srx", 2, r"^--warm-start: no study 'srx' in sqlite:///.*; studies there: src$"),
        ("src", 0, r"^--warm-start-trials must be >= 1, got 0$"),
    ],
)
def test_bad_sources_are_one_line(tmp_path, name, k, message):
    with pytest.raises(HpoError, match=message):
        warmstart.plan(source_store(tmp_path), name, spec(), k)


def _other_store(tmp_path: Path, params: list[dict], dists: dict) -> str:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    study = optuna.create_study(study_name="other", storage=url, direction="maximize")
    for i, p in enumerate(params):
        study.add_trial(optuna.create_trial(value=80.0 + i, params=p, distributions=dists))
    return url


def test_a_source_with_nothing_in_common_or_this_study_itself_is_refused_in_one_line(tmp_path):
    url = _other_store(
        tmp_path,
        [{"activation": "relu"}, {"activation": "gelu"}],
        {"activation": CategoricalDistribution(["relu", "gelu"])},
    )
    with pytest.raises(
        HpoError,
        match=r"^--warm-start: study 'other' searched activation and this study searches "
        r"lr, momentum, optimizer, warmup_epochs: no setting in common, so nothing to carry over$",
    ):
        warmstart.plan(url, "other", spec(), 2)
    with pytest.raises(HpoError, match=r"^--warm-start this: that is this study itself.*use --confirm K$"):
        warmstart.plan(source_store(tmp_path), "this", spec(), 2)


def test_what_is_carried_over_is_said_and_one_configuration_is_queued_once(tmp_path, caplog):
    """Two best trials that differ only in what this study does not search are one trial here; a
    trial whose values all lie outside this study's ranges carries nothing and is not queued."""
    dists = {"lr": FloatDistribution(1e-4, 1.0, log=True), "batch_size": CategoricalDistribution([32, 64])}
    url = _other_store(
        tmp_path,
        [{"lr": 0.9, "batch_size": 32}, {"lr": 0.05, "batch_size": 32}, {"lr": 0.05, "batch_size": 64}],
        dists,
    )
    with caplog.at_level("INFO", logger="hpo"):
        planned = warmstart.plan(url, "other", spec(), 3)
    assert planned == [("other#2", {"optimizer": "sgd", "momentum": 0.9, "lr|sgd": 0.05, "warmup_epochs": 1})]
    assert (
        "warm start from 'other': 1 of its best configurations, carrying lr; "
        "momentum, optimizer, warmup_epochs at this study's base settings" in caplog.text
    )
    (tmp_path / "x").mkdir()
    outside = _other_store(tmp_path / "x", [{"lr": 0.9, "batch_size": 32}], dists)
    with pytest.raises(HpoError, match="all lie outside this study's ranges"):
        warmstart.plan(outside, "other", spec(), 3)


def test_a_real_run_starts_with_the_warm_trials_and_marks_them(tmp_path, monkeypatch, fashion_mnist_system):
    monkeypatch.chdir(tmp_path)
    url = source_store(tmp_path)
    folder = write_study(
        tmp_path / "studies" / "this",
        train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        search="lr = { low = 1e-3, high = 0.5, log = true }\nmomentum = { low = 0.5, high = 0.95 }",
    )
    (folder / "study.toml").write_text(
        (folder / "study.toml").read_text().replace("train_size = 2000", "train_size = 300")
    )
    base = ["--study", "this", "--storage", url, "--quiet", "--keep", "none"]
    bad = hpo(*base, "--trials", "3", "--warm-start", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --warm-start: no study 'nope'")
    assert "this" not in optuna.get_all_study_names(url)  # bad input never touches the store
    proc = hpo(*base, "--trials", "3", "--warm-start", "src", "--warm-start-trials", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "first 2 warm-started from src#1, src#2" in proc.stderr
    trials = optuna.load_study(study_name="this", storage=url).trials
    assert len(trials) == 3
    assert [t.user_attrs.get("warm_start") for t in trials] == ["src#1", "src#2", None]
    assert trials[0].params["lr"] == 0.2 and 0.5 <= trials[0].params["momentum"] <= 0.95  # 0.99 is outside: sampled
    assert trials[1].params["momentum"] == 0.6 and trials[1].params["lr"] != 0.9  # lr 0.9 is outside: sampled
    assert trials[0].user_attrs["config"]["train"]["lr"] == 0.2
    report = hpo("studies/this", "--storage", url, "--no-png", module="hpo.report")
    assert report.returncode == 0, report.stderr[-2000:]
    md = (folder / "report" / "report.md").read_text()
    assert "#0 from `src#1`" in md and "#1 (warm start)" in md
