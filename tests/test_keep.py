"""A finished trial is never thrown away: weights that cannot be kept are a warning on the trial,
not a failed trial; --keep none never touches models/. A real SQLite study, a tiny real
Fashion-MNIST trial, a real artifact store whose folder goes away under it."""

from __future__ import annotations

import logging
import shutil

from optuna.trial import TrialState
from processes import hpo

from hpo import config
from hpo.search.objective import Objective
from hpo.search.study import create_or_resume
from hpo.storage.store import artifact_store, open_storage

QUICK = ["data.train_size=300", "train.epochs=1"]


def test_weights_that_cannot_be_saved_leave_the_trial_complete_with_a_warning(
    study_dir, tmp_path, empty_data_dir, caplog, restore_threads
):
    spec = config.load("tiny", QUICK)
    artifacts = artifact_store(tmp_path / "models")
    shutil.rmtree(tmp_path / "models")
    (tmp_path / "models").write_text("not a folder")  # every write into the artifact store now fails
    study = create_or_resume(spec, open_storage(f"sqlite:///{tmp_path / 'hpo.db'}", create=True))
    with caplog.at_level(logging.WARNING, logger="hpo"):
        study.optimize(Objective(spec, empty_data_dir, "best", artifacts), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.value == t.user_attrs["val_acc"]
    assert t.user_attrs["status"] == "ok" and "weights_artifact_id" not in t.user_attrs
    assert t.user_attrs["weights_error"].startswith("NotADirectoryError")
    assert "trial #0: its weights were not kept (NotADirectoryError" in caplog.text


def test_keep_none_keeps_no_file_in_models(study_dir, tmp_path):
    from hpo import run

    assert (
        run.main(
            ["--study", "tiny", "--trials", "1", "--keep", "none", "--quiet", *(x for s in QUICK for x in ("--set", s))]
        )
        == 0
    )
    # no weights; the running trial's epoch checkpoint (models/checkpoints/) is gone once it ended
    assert not [p for p in (tmp_path / "models").rglob("*") if p.is_file()]


def test_an_artifact_folder_that_cannot_be_made_is_one_line_before_the_store(study_dir, tmp_path):
    (tmp_path / "models").write_text("a file where the folder should be")
    proc = hpo("--study", "tiny", "--trials", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == (
        "error: cannot create the artifact folder models for the weights: File exists; "
        "run where it can be created, or pass --keep none"
    )
    assert not (tmp_path / "storage" / "hpo.db").exists()
