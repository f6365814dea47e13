"""Every bad value is refused in one line (HpoError, exit 2) before the store is touched: the
store's sha256 and its trials are the same before and after each refused command. In-process
hpo.run.main for the many values; real subprocesses for "no traceback" on each entry point."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from builders import TINY_STUDY, sha, write_study
from processes import hpo

from hpo import config, run
from hpo.errors import HpoError
from hpo.search.recipe import distribution
from hpo.search.study import create_or_resume
from hpo.storage.store import open_storage

STORE = Path("storage/hpo.db")


@pytest.fixture
def stored(study_dir, tmp_path) -> Path:
    """studies/tiny with one complete trial in the default store (made with create_trial)."""
    spec = config.load("tiny")
    storage = open_storage(f"sqlite:///{STORE}", create=True)
    study = create_or_resume(spec, storage)
    study.add_trial(
        optuna.create_trial(
            value=60.0,
            params={"lr": 0.01},
            distributions={"lr": distribution(spec.search[0])},
            user_attrs={"status": "ok", "epochs_run": 2, "val_acc": 60.0},
        )
    )
    storage.engine.dispose()  # checkpoint the WAL: the file we hash is the whole store
    return tmp_path / STORE


SET = "--set"
CASES = [
    # (study file text, extra argv, words in the one line)
    ("objective = 5\n" + TINY_STUDY, [], "objective.metrics must be a non-empty list"),
    ("sampler = 5\n" + TINY_STUDY, [], "[sampler] must be a table"),
    (TINY_STUDY, [SET, "objective=5"], "objective.metrics must be a non-empty list"),
    (TINY_STUDY, [SET, "sampler=5"], "[sampler] must be a table"),
    (TINY_STUDY, [SET, "pruner=5"], "[pruner] must be a table"),
    (TINY_STUDY, [SET, "objective.metrics=[]"], "objective.metrics must be a non-empty list"),
    (TINY_STUDY, [SET, 'objective.metrics=["val_acc", "val_acc"]'], "names a metric twice"),
    (TINY_STUDY, [SET, "objective.metrics=[1]"], "objective.metrics holds 1"),
    (TINY_STUDY.replace("high = 0.5", "high = inf"), [], "search.lr.high must be a finite number, got inf"),
    (TINY_STUDY.replace("log = true", "step = 0.0"), [], "search.lr.step must be > 0, got 0.0"),
    (
        TINY_STUDY + "batch_size = { low = 32, high = 64, step = -8 }\n",
        [],
        "search.batch_size.step must be > 0, got -8",
    ),
    (
        TINY_STUDY + '[sampler]\nname = "tpe"\nn_startup_trials = 2.5\n',
        [],
        "sampler.n_startup_trials for sampler 'tpe' must be int",
    ),
    (
        TINY_STUDY + '[pruner]\nname = "median"\nn_warmup_steps = "1"\n',
        [],
        "pruner.n_warmup_steps for pruner 'median' must be int",
    ),
    (TINY_STUDY, [SET, "train.lr=inf"], "train.lr must be a finite number, got inf"),
    (TINY_STUDY, [SET, "train.weight_decay=inf"], "train.weight_decay must be a finite number"),
    (TINY_STUDY, [SET, "train.gamma=inf"], "train.gamma must be a finite number"),
    (TINY_STUDY, [SET, "train.threads=100000"], "train.threads must be at most the"),
    (TINY_STUDY, ["--timeout", "nan"], "--timeout must be > 0"),
    (TINY_STUDY, ["--timeout", "inf"], "--timeout must be > 0"),
    (TINY_STUDY, [SET, "data.val_fraction=0.00001"], "leaves 1 for validation"),
    (TINY_STUDY, [SET, "data.val_fraction=0.99999", SET, "data.train_size=0"], "and 1 for training"),
    (TINY_STUDY, ["--study-name", "no/slash"], "--study-name 'no/slash'"),
]


@pytest.mark.parametrize("text, argv, words", CASES, ids=[" ".join(c[1]) or c[2][:30] for c in CASES])
def test_bad_values_are_one_line_and_the_store_is_untouched(text, argv, words, stored, study_dir):
    before = sha(stored)
    write_study(study_dir, text)
    with pytest.raises(HpoError) as e:
        run.main(["--study", "tiny", "--trials", "1", "--keep", "none", *argv])
    assert words in str(e.value) and "\n" not in str(e.value)
    assert sha(stored) == before


def test_a_grace_period_shorter_than_the_heartbeat_is_refused(stored, monkeypatch):
    before = sha(stored)
    monkeypatch.setenv("HPO_HEARTBEAT_S", "10")
    monkeypatch.setenv("HPO_GRACE_S", "5")
    with pytest.raises(HpoError, match=r"\$HPO_GRACE_S \(5 s\) must be longer than \$HPO_HEARTBEAT_S \(10 s\)"):
        run.main(["--study", "tiny", "--trials", "1", "--keep", "none", SET, "data.train_size=300"])
    assert sha(stored) == before


def test_no_entry_point_shows_a_traceback_for_a_bad_file_or_folder(stored, study_dir, tmp_path):
    before = sha(stored)
    (tmp_path / "a_file").write_text("x")
    procs = {
        "report --out a_file": (
            hpo("studies/tiny", "--out", "a_file", "--no-png", module="hpo.report", cwd=tmp_path),
            "--out a_file is a file, not a folder",
        ),
        "run objective = 5": (None, None),
    }
    (study_dir / "study.toml").write_text("objective = 5\n" + TINY_STUDY)
    procs["run objective = 5"] = (
        hpo("--study", "tiny", cwd=tmp_path),
        "objective.metrics must be a non-empty list",
    )
    (study_dir / "study.toml").write_bytes(TINY_STUDY.replace("tiny test study", "caf\u00e9").encode("latin-1"))
    for module, args in (("run", ["--study", "tiny"]), ("train", ["--study", "tiny"]), ("report", ["studies/tiny"])):
        procs[f"{module} latin-1"] = (hpo(*args, module=f"hpo.{module}", cwd=tmp_path), "is not UTF-8 text (byte ")
    for name, (proc, words) in procs.items():
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0 and words in proc.stderr, (name, proc.stderr)
    assert sha(stored) == before
