"""What a real ``python -m hpo.run`` writes into the store, checked against docs/records.md key by key
(and the report's trials.csv against the store), so that a record that drifts from the documentation
fails here rather than silently degrading the report, which reads these records.

The test_findings and test_report studies are built by hand to match docs/records.md; this is the
run that checks the documentation against the code. One run, shared by the module: 4 trials of a
grid with complete, pruned and collapsed trials, in --quiet mode (its per-trial lines are checked too).
"""

from __future__ import annotations

import csv
import re
import socket
from pathlib import Path

import optuna
import pytest
from builders import TINY_STUDY, write_study
from optuna.trial import TrialState
from processes import hpo

from hpo.search.objective import versions
from hpo.training.nets import build, count_parameters

ROOT = Path(__file__).resolve().parents[1]
STATUSES = {"ok", "pruned", "diverged", "collapsed", "failed", "interrupted"}
CURVE_KEYS = {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
# Keys by how far a trial got (docs/records.md).
EVERY = {"status": str, "reason": str, "seed": int, "config": dict, "versions": dict, "worker": str}
TRAINED = {"epochs_run": int, "curve": list}  # from its first epoch on
FINISHED = {
    "val_acc": float,
    "best_val_acc": float,
    "test_acc": float,
    "wall_time_s": float,
    "images_per_s": float,
    "device": str,
    "threads": int,
    "params": int,
}  # trained to the end (complete, or diverged)
STUDY = {
    "description": str,
    "study_file": str,
    "study_toml": str,
    "seed": int,
    "metrics": list,
    "epochs": int,
    "dataset": str,
    "model": str,
}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, fashion_mnist_system):
    """(folder, stdout, stderr, study) of a real 4-trial run, and the report written from its store."""
    cwd = tmp_path_factory.mktemp("records")
    # Seed 1's grid order: lr 1e-4 collapses (#0), lr 0.05 completes (#1), and the median pruner stops the
    # two after it at epoch 1, behind #1.
    folder = write_study(
        cwd / "studies" / "tiny",
        text=TINY_STUDY.replace("seed = 0", "seed = 1"),
        sampler='name = "grid"',
        pruner='name = "median"\nn_startup_trials = 1',
        search="lr = { choices = [0.05, 0.0001] }\nmomentum = { choices = [0.9, 0.8] }",
    )
    code, out, err = hpo("--study", "tiny", "--trials", "4", "--quiet", cwd=cwd)
    assert code == 0, err[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{cwd / 'storage/hpo.db'}")
    code, report_out, report_err = hpo("studies/tiny", "--no-png", module="hpo.report", cwd=cwd)
    assert code == 0, report_err[-3000:]
    return folder, out, err, study


def _typed(attrs: dict, keys: dict, where: str) -> None:
    for key, kind in keys.items():
        assert key in attrs, f"{where}: no {key!r}"
        assert type(attrs[key]) is kind, f"{where}: {key} = {attrs[key]!r} is not {kind.__name__}"


def test_the_run_has_complete_pruned_and_collapsed_trials(real_run):
    _, _, _, study = real_run
    assert [t.user_attrs["status"] for t in study.trials] == ["collapsed", "ok", "pruned", "pruned"]


def test_every_documented_trial_record_is_there_with_its_type(real_run):
    _, _, _, study = real_run
    this = versions()
    for t in study.trials:
        a, where = t.user_attrs, f"trial #{t.number} ({t.state.name})"
        _typed(a, EVERY | TRAINED, where)
        assert a["status"] in STATUSES and (a["reason"] == "") == (a["status"] == "ok")
        assert re.fullmatch(rf"{re.escape(socket.gethostname())}:\d+", a["worker"])
        assert set(a["config"]) >= {"data", "model", "train", "seed"} and a["config"]["train"]["lr"] == t.params["lr"]
        assert a["config"]["seed"] == a["seed"]
        assert a["versions"] == this
        # the curve: one record per epoch run, the same validation accuracy the pruner saw
        assert a["epochs_run"] == len(a["curve"]) == len(t.intermediate_values) >= 1
        assert all(set(c) == CURVE_KEYS for c in a["curve"])
        assert {c["epoch"]: c["val_acc"] for c in a["curve"]} == t.intermediate_values
        if t.state == TrialState.COMPLETE:
            _typed(a, FINISHED, where)
            assert a["status"] == "ok" and a["epochs_run"] == 2
            assert t.value == a["val_acc"] == a["curve"][-1]["val_acc"]
            assert a["best_val_acc"] == max(c["val_acc"] for c in a["curve"])
            assert 0 <= a["test_acc"] <= 100 and a["wall_time_s"] > 0 and a["images_per_s"] > 0
            assert a["device"] == "cpu" and a["threads"] == 1
            assert a["params"] == count_parameters(build("lenet5", 1, 28, 10))
        elif a["status"] == "pruned":
            assert (
                t.state == TrialState.PRUNED and a["reason"].startswith("pruned at epoch 1: ") and a["epochs_run"] == 1
            )
            assert not set(FINISHED) & set(a)  # stopped mid-training: no final results
        else:
            assert t.state == TrialState.PRUNED and a["reason"].startswith("collapsed: ") and a["epochs_run"] == 2
            assert not set(FINISHED) & set(a)
    assert len({t.user_attrs["seed"] for t in study.trials}) == 4  # each trial its own seed
    assert len({t.user_attrs["worker"] for t in study.trials}) == 1  # one process ran them all


def test_kept_weights_are_recorded_and_stored(real_run):
    folder, _, _, study = real_run
    models = folder.parents[1] / "models"
    kept = [t for t in study.trials if "weights_artifact_id" in t.user_attrs]
    best = study.best_trial
    assert best in kept and all(t.state == TrialState.COMPLETE for t in kept)
    for t in kept:
        assert type(t.user_attrs["weights_artifact_id"]) is str
        assert (models / t.user_attrs["weights_artifact_id"]).is_file()


def test_every_documented_study_record_is_there(real_run):
    folder, _, _, study = real_run
    a = study.user_attrs
    _typed(a, STUDY, "study")
    text = (folder / "study.toml").read_text()
    assert a["study_toml"] == text and a["description"] == "tiny test study"
    assert (folder.parents[1] / a["study_file"]).resolve() == (folder / "study.toml").resolve()
    assert a["seed"] == 1 and a["metrics"] == ["val_acc"] and a["epochs"] == 2
    assert (a["dataset"], a["model"]) == ("fashion_mnist", "lenet5")
    assert study.metric_names == ["val_acc"]


def test_the_documentation_lists_every_key_the_run_writes(real_run):
    _, _, _, study = real_run
    documented = set(re.findall(r"`([a-z_]+)`", (ROOT / "docs" / "records.md").read_text()))
    written = {k for t in study.trials for k in t.user_attrs} | set(study.user_attrs)
    assert written <= documented, written - documented


def test_trials_csv_agrees_with_the_store(real_run):
    folder, _, _, study = real_run
    with open(folder / "report" / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    for row, t in zip(rows, study.trials, strict=True):
        assert row["state"] == t.state.name
        assert (float(row["value_val_acc"]) if row["value_val_acc"] else None) == t.value
        assert float(row["params_lr"]) == t.params["lr"] and float(row["params_momentum"]) == t.params["momentum"]
        a = t.user_attrs
        assert row["user_attrs_status"] == a["status"] and row["user_attrs_reason"] == (a["reason"] or "")
        assert int(row["user_attrs_epochs_run"]) == a["epochs_run"] and int(row["user_attrs_seed"]) == a["seed"]
        assert row["user_attrs_worker"] == a["worker"]
        if t.state == TrialState.COMPLETE:
            assert float(row["user_attrs_test_acc"]) == a["test_acc"]


def test_quiet_prints_one_line_per_trial_with_the_count_and_the_best(real_run):
    _, _, err, study = real_run
    lines = [line for line in err.splitlines() if line.startswith("trial #")]
    expected, best = [], None
    for k, t in enumerate(study.trials, 1):
        if t.state == TrialState.COMPLETE and (best is None or t.value > best.value):
            best = t
        what = t.state.name.lower() + (f" {t.value:.4g}" if t.state == TrialState.COMPLETE else "")
        reason = f": {t.user_attrs['reason']}" if t.user_attrs["reason"] else ""
        expected.append(
            f"trial #{t.number} {what}{reason}  ({k}/4"
            + (f"; best {best.value:.2f}% (#{best.number})" if best else "")
            + ")"
        )
    assert lines == expected
    assert "done: 4 trials (1 complete, 3 pruned)" in err
    assert "|" not in err  # no progress bar in quiet mode


def test_the_report_pngs_of_a_real_run_are_drawn(real_run):
    """A PNG of the right size can still be blank (a failed export, a figure without its data): each
    must hold coloured pixels (plotly draws data in colour; axes, grid and text are grey, and an
    empty figure has none)."""
    from torchvision.io import decode_png, read_file

    folder, _, _, _ = real_run
    code, out, err = hpo("studies/tiny", "--out", "with-png", module="hpo.report", cwd=folder.parents[1])
    assert code == 0 and "warning" not in err, err[-2000:]
    pngs = sorted((folder.parents[1] / "with-png").glob("*.png"))
    assert {p.stem for p in pngs} >= {"history", "learning_curves", "slice", "timeline"}
    for path in pngs:
        pixels = decode_png(read_file(str(path)))[:3].flatten(1).int()  # RGB of RGBA
        coloured = int(((pixels.max(0).values - pixels.min(0).values) > 60).sum())
        if path.stem == "contour":  # one complete trial: nothing to interpolate (the report still draws it)
            continue
        assert coloured >= 100, f"{path.name}: {coloured} coloured pixels: no data drawn"
