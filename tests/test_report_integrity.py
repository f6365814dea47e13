"""What hpo.report says about a study's integrity: trials lost with a killed worker are named,
and the printed rerun command keeps the study's --set overrides and quotes paths for a shell.
Real SQLite stores, a real heartbeat row, a real `python -m hpo.report`."""

from __future__ import annotations

import shlex
import sqlite3

import optuna
from builders import build_report_study
from processes import hpo

from hpo.storage.store import open_storage


def test_report_names_lost_trials_and_prints_a_rerun_command_with_the_overrides_quoted(tmp_path):
    root = tmp_path / "my dir"
    folder, url = build_report_study(root, kind="one")
    overrides = ["train.epochs=3", 'objective.metrics=["val_acc"]']
    storage = open_storage(url, create=True)  # heartbeats on, as hpo.run opens it
    study = optuna.load_study(study_name="lenet_lr", storage=storage)
    study.set_user_attr("overrides", overrides)
    lost, live = study.ask(), study.ask()
    for trial in (lost, live):
        storage.record_heartbeat(trial._trial_id)
    storage.engine.dispose()
    with sqlite3.connect(root / "storage" / "hpo.db") as conn:  # kill -9 an hour ago: its last beat is that old
        conn.execute(
            "UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour') WHERE trial_id = ?", (lost._trial_id,)
        )
    proc = hpo(str(folder), "--storage", url, "--no-png", module="hpo.report", cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"note: trial #{lost.number} looks lost: RUNNING with no heartbeat for over 30 s (its worker died); "
        f"the next hpo.run fails and retries it with the same parameters"
    ) in proc.stderr
    assert "note: 1 trial is still running" in proc.stderr
    md = (folder / "report" / "report.md").read_text()
    rerun = next(line for line in md.splitlines() if line.startswith("python -m hpo.run "))
    argv = shlex.split(rerun)[3:]
    assert argv == ["--study", str(folder), "--storage", url, "--set", overrides[0], "--set", overrides[1]]
