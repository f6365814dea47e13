"""python -m hpo.report A B: one report across two small real studies (real training, real store)."""

from __future__ import annotations

import optuna
import pytest
from builders import TINY_STUDY, write_study
from processes import hpo

STORE = "storage/hpo.db"


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory, fashion_mnist_system):
    root = tmp_path_factory.mktemp("compare")
    write_study(root / "studies" / "lenet")
    write_study(root / "studies" / "cnn", TINY_STUDY.replace('name = "lenet5"', 'name = "simple_cnn"'))
    for name in ("lenet", "cnn"):
        proc = hpo("--study", name, "--trials", "3", "--set", "train.epochs=1", "--keep", "none", cwd=root)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_comparison_report_lays_the_studies_side_by_side(two_studies):
    root = two_studies
    proc = hpo("studies/lenet", "studies/cnn", "--no-png", "--out", "cmp", module="hpo.report", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "comparison written to cmp/index.html (and report.md)"
    md = (root / "cmp/report.md").read_text()
    assert md.startswith("# Comparison: lenet vs cnn")
    for name in ("lenet", "cnn"):
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{root / STORE}")
        best = max((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
        epochs = sum(t.user_attrs["epochs_run"] for t in study.trials)
        row = f"| {name} | #{best.number} | {best.value:.1f}% | {best.user_attrs['test_acc']:.1f}% | 3 ("
        assert row in md, (row, md)
        line = next(x for x in md.splitlines() if x.startswith(f"| {name} | #"))
        assert line.split(" | ")[5] == str(epochs)
        assert f"- **{name}** (`studies/{name}`): best val acc {best.value:.1f}% (trial #{best.number}); " in md
    assert "## Shared parameters, side by side" in md and "\n| lr | " in md
    assert "too few trials" in md  # three trials each: nothing is claimed
    page = (root / "cmp/index.html").read_text()
    assert 'id="fig-learning_curves"' in page and page.count("plotly.min.js") == 1
    assert page.count('"name":"lenet (trial #') == 1 and page.count('"name":"cnn (trial #') == 1


def test_comparison_inputs_are_checked_first(two_studies):
    proc = hpo("studies/lenet", "studies/nope", "--no-png", module="hpo.report", cwd=two_studies)
    assert (
        proc.returncode == 2
        and proc.stderr.startswith("error: no study 'studies/nope'")
        and len(proc.stderr.splitlines()) == 1
    )
    proc = hpo("studies/lenet", "studies/cnn", "--study-name", "x", module="hpo.report", cwd=two_studies)
    assert (proc.returncode, proc.stderr) == (
        2,
        "error: --study-name names one study; comparing takes each study's name from its folder\n",
    )
    assert not (two_studies / "reports").exists()
