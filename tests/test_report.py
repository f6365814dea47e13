"""hpo.report end to end: the files it writes, and one clear line for every bad input.

The CLI runs as a real subprocess where the exit code and the output are the point; the figure
checks call ``main`` in-process with --no-png (fast). One test exports PNGs with kaleido and the
real Chromium, as CI installs it.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
from builders import REPORT_FAIL_REASON
from processes import hpo

from hpo import report
from hpo.analysis import figures
from hpo.errors import HpoError

ROOT = Path(__file__).resolve().parents[1]
FULL_FIGURES = {
    "history",
    "importance",
    "contour",
    "contour_matrix",
    "slice",
    "parallel_coordinate",
    "learning_curves",
    "timeline",
}
CHROMIUM = "/usr/bin/chromium"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """python -m hpo.report in a bare environment: PATH, PYTHONPATH and HOME only."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd)}
    return hpo(*args, module="hpo.report", cwd=cwd, env=env, inherit=False, timeout=120)


def figure_ids(page: str) -> set[str]:
    return set(re.findall(r'<div id="fig-([a-z_]+)" class="plotly-graph-div"', page))


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, report_study):
    """Build a study in tmp_path and run report.main there (default storage, relative paths)."""
    monkeypatch.chdir(tmp_path)

    def run(kind="full", *args):
        report_study(kind=kind)
        assert report.main(["studies/lenet_lr", "--no-png", *args]) == 0
        out = tmp_path / "studies/lenet_lr/report"
        return out, (out / "index.html").read_text(), (out / "report.md").read_text()

    return run


def test_report_writes_page_markdown_csv_and_pngs(tmp_path, report_study):
    assert Path(CHROMIUM).exists() or shutil.which("chromium"), (
        "Chromium is needed for the PNG export (kaleido 1.x drives it): apt-get install chromium"
    )
    report_study()
    result = cli(tmp_path, "studies/lenet_lr")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == "report written to studies/lenet_lr/report/index.html (and report.md, trials.csv, 8 PNGs)"
    )
    assert "warning" not in result.stderr, result.stderr
    out = tmp_path / "studies/lenet_lr/report"

    page = (out / "index.html").read_text()
    assert page.count("plotly.min.js") == 1 and '<script src="plotly.min.js"></script>' in page
    assert "cdn.plot.ly" not in page and not re.search(r'<script[^>]+src="https?://', page)
    assert (out / "plotly.min.js").stat().st_size > 1_000_000
    assert figure_ids(page) == FULL_FIGURES
    assert "At the final epoch (16 complete trials) best above" in page and REPORT_FAIL_REASON in page

    md = (out / "report.md").read_text()
    for name in FULL_FIGURES:
        assert f"]({name}.png)" in md
        assert png_size(out / f"{name}.png") == figures.png_size(name)
    assert sorted(p.stem for p in out.glob("*.png")) == sorted(FULL_FIGURES)
    assert "### lr (importance: PED-ANOVA" in md and "| 0.9 | 6 |" in md
    assert "python -m hpo.run --study studies/lenet_lr" in md and "seed: 7" in md

    with open(out / "trials.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and rows[17]["state"] == "FAIL" and rows[17]["user_attrs_reason"] == REPORT_FAIL_REASON


@pytest.mark.parametrize(
    "kind, counts", [("empty", "4 running, 9 pruned, 7 failed"), ("none", "0 running, 0 pruned, 0 failed")]
)
def test_no_complete_trials_is_one_line(tmp_path, report_study, kind, counts):
    report_study(kind=kind)
    result = cli(tmp_path, "studies/lenet_lr")
    assert result.returncode == 2
    assert result.stderr == f"error: study lenet_lr has no complete trials yet ({counts})\n"
    assert not (tmp_path / "studies/lenet_lr/report").exists()


def test_missing_store_is_not_created(tmp_path):
    folder = tmp_path / "studies/lenet_lr"
    folder.mkdir(parents=True)
    (folder / "study.toml").write_text('description = "x"\n')
    result = cli(tmp_path, "studies/lenet_lr")
    assert result.returncode == 2
    assert result.stderr.startswith("error: no store at storage/hpo.db: run `python -m hpo.run --study NAME` first")
    assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "storage").exists()


def test_not_a_study_folder(tmp_path, report_study):
    report_study()
    (tmp_path / "studies/notes").mkdir()
    result = cli(tmp_path, "studies/notes")
    assert result.returncode == 2
    assert (
        result.stderr == "error: no study 'studies/notes': expected studies/notes/study.toml; studies here: lenet_lr\n"
    )


def test_unknown_and_chosen_study_names(tmp_path, monkeypatch, report_study):
    monkeypatch.chdir(tmp_path)
    report_study(kind="none")
    report_study(kind="one", name="lr_only")  # same store; its folder is studies/lr_only
    with pytest.raises(
        HpoError, match=r"no study 'nope' in sqlite:///storage/hpo.db; studies there: lenet_lr, lr_only"
    ):
        report.main(["studies/lenet_lr", "--study-name", "nope", "--no-png"])
    assert report.main(["studies/lenet_lr", "--study-name", "lr_only", "--out", "other", "--no-png"]) == 0
    assert "# Study lr_only" in (tmp_path / "other/report.md").read_text()


def test_one_parameter_has_slice_not_contour(in_tmp):
    _, page, md = in_tmp("one")
    assert figure_ids(page) == {"history", "importance", "slice", "parallel_coordinate", "learning_curves", "timeline"}
    assert "only one searched parameter, so its importance is trivially 1.0" in md


def test_categorical_only_gets_a_contour(in_tmp):
    _, page, md = in_tmp("categorical")
    assert {"contour", "slice", "importance"} <= figure_ids(page) and "contour_matrix" not in figure_ids(page)
    assert "| value | trials | mean val acc |" in md


def test_multi_objective_has_pareto_front_and_per_objective_figures(in_tmp):
    _, page, md = in_tmp("multi")
    assert {
        "pareto_front",
        "history_val_acc",
        "history_wall_time",
        "importance_val_acc",
        "importance_wall_time",
    } <= figure_ids(page)
    assert "### Pareto front" in md and "val_acc (maximize), wall_time (minimize)" in md


def test_no_searched_parameter_gets_history_and_curves(in_tmp):
    _, page, md = in_tmp("fixed")
    assert figure_ids(page) == {"history", "learning_curves", "timeline"}
    assert "No parameter was searched" in md
    assert "The figures are in `index.html`" in md and "![" not in md


def test_running_study_reports_the_complete_trials(tmp_path, monkeypatch, report_study, capsys):
    monkeypatch.chdir(tmp_path)
    _, url = report_study()
    study = optuna.load_study(study_name="lenet_lr", storage=url)
    study.add_trial(
        optuna.create_trial(
            state=optuna.trial.TrialState.RUNNING,
            params={"lr": 0.01},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 0.3, log=True)},
        )
    )
    assert report.main(["studies/lenet_lr", "--no-png"]) == 0
    assert "note: 1 trial is still running; the report covers the 16 complete ones" in capsys.readouterr().err
    assert "1 trial still running, left out." in (tmp_path / "studies/lenet_lr/report/report.md").read_text()


def test_png_failure_warns_and_writes_the_pages(tmp_path, monkeypatch, report_study, capsys):
    monkeypatch.chdir(tmp_path)
    report_study(kind="one")

    def broken(*args, **kwargs):
        raise RuntimeError("Could not find Chrome\nsecond line")

    monkeypatch.setattr(figures.pio, "write_images", broken)
    assert report.main(["studies/lenet_lr"]) == 0
    captured = capsys.readouterr()
    assert (
        captured.err
        == "warning: no PNGs (RuntimeError: Could not find Chrome); index.html and report.md are written without them\n"
    )
    assert captured.out.strip().endswith("(and report.md, trials.csv, no PNGs)")
    out = tmp_path / "studies/lenet_lr/report"
    assert "![" not in (out / "report.md").read_text() and figure_ids((out / "index.html").read_text())
