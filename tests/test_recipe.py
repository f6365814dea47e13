"""One study, one identity: a stored study is resumed only from its own study file, and only with a
search space its trials can go on from; every recipe version it ran under is kept. Real SQLite
stores; trials made with optuna.create_trial (training is not the point here)."""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
import pytest
from builders import TINY_STUDY, sha, write_study
from processes import hpo

from hpo import config
from hpo.errors import HpoError
from hpo.search.recipe import RECIPES_ATTR, distribution, named, recipes
from hpo.search.study import create_or_resume
from hpo.storage.store import open_storage


def stored_study(tmp_path: Path, text: str = TINY_STUDY, trials: int = 2):
    """A study created from studies/tiny with ``trials`` complete trials of its search space."""
    spec = config.load(write_study(tmp_path / "studies" / "tiny", text))
    url = f"sqlite:///{tmp_path / 'hpo.db'}"
    storage = open_storage(url, create=True)
    study = create_or_resume(spec, storage)
    space = {p.optuna_name: distribution(p) for p in spec.search if not p.when or p.when[0][1][0] == "sgd"}
    for i in range(trials):  # each trial in the first branch (sgd) where the space has branches
        params = {n: (d.choices[0] if hasattr(d, "choices") else d.low) for n, d in space.items()}
        study.add_trial(optuna.create_trial(value=50.0 + i, params=params, distributions=space))
    storage.engine.dispose()  # the last connection closed: the WAL is checkpointed into the file we hash
    return spec, url, tmp_path / "hpo.db"


def resume(url: str, folder: Path, text: str | None = None, **kwargs):
    if text is not None:
        write_study(folder, text)
    return create_or_resume(config.load(folder), open_storage(url, create=True), **kwargs)


def test_a_second_folder_of_the_same_name_is_refused_naming_both_files(tmp_path):
    spec, url, db = stored_study(tmp_path)
    other = write_study(tmp_path / "elsewhere" / "tiny", TINY_STUDY.replace("lenet5", "simple_cnn"))
    before = sha(db)
    with pytest.raises(HpoError) as e:
        resume(url, other)
    assert str(tmp_path / "studies" / "tiny" / "study.toml") in str(e.value)
    assert str(tmp_path / "elsewhere" / "tiny" / "study.toml") in str(e.value) and "--study-name" in str(e.value)
    assert sha(db) == before
    study = resume(url, other, same_study=True)  # asked for explicitly: the moved file continues the study
    assert study.user_attrs["model"] == "simple_cnn" and len(study.trials) == 2
    assert [v["study_file"] for v in study.user_attrs[RECIPES_ATTR]] == [
        str((tmp_path / p / "tiny" / "study.toml").resolve()) for p in ("studies", "elsewhere")
    ]


def test_a_copy_with_the_same_recipe_is_the_same_study(tmp_path):
    _, url, _ = stored_study(tmp_path)
    copy = write_study(tmp_path / "copy" / "tiny")  # same text: a moved or copied folder
    assert len(resume(url, copy).trials) == 2


REFUSED = [
    (
        "batch_size = { choices = [32, 64] }",
        "batch_size = { choices = [32, 128] }",
        "search.batch_size was choices [32, 64], now choices [32, 128]",
    ),
    ("batch_size = { choices = [32, 64] }", "batch_size = { choices = [64, 32] }", "now choices [64, 32]"),
    (
        "warmup_epochs = { low = 0, high = 2 }",
        "warmup_epochs = { choices = [0, 1, 2] }",
        "search.warmup_epochs was int range [0, 2], now choices [0, 1, 2]",
    ),
    (
        "weight_decay = { low = 1e-5, high = 1e-2, log = true }",
        "weight_decay = { low = 1e-5, high = 1e-2 }",
        "was float range [1e-05, 0.01, log], now float range [1e-05, 0.01]",
    ),
]


@pytest.mark.parametrize("old, new, words", REFUSED)
def test_a_space_optuna_cannot_go_on_from_is_refused_before_any_trial(old, new, words, tmp_path):
    spec, url, db = stored_study(tmp_path, TINY_STUDY + old + "\n")
    before = sha(db)
    with pytest.raises(HpoError) as e:
        resume(url, spec.folder, TINY_STUDY + new + "\n")
    assert words in str(e.value) and "--study-name NEW" in str(e.value)
    assert sha(db) == before
    fresh = create_or_resume(named(config.load(spec.folder), "tiny_v2"), open_storage(url, create=True))
    assert fresh.study_name == "tiny_v2" and not fresh.trials


def test_a_space_optuna_can_sample_from_goes_on_with_a_note_and_keeps_each_version(tmp_path, caplog):
    spec, url, _ = stored_study(tmp_path)
    narrower = TINY_STUDY.replace("high = 0.5", "high = 0.2") + "batch_size = { choices = [32, 64] }\n"
    with caplog.at_level(logging.INFO, logger="hpo"):
        study = resume(url, spec.folder, narrower)
    assert "search.lr was float range [0.001, 0.5, log], now float range [0.001, 0.2, log]" in caplog.text
    assert "search.batch_size is new" in caplog.text and "from trial #2" in caplog.text
    versions = study.user_attrs[RECIPES_ATTR]
    assert [v["from_trial"] for v in versions] == [0, 2]
    assert "high = 0.5" in versions[0]["study_toml"] and "high = 0.2" in versions[1]["study_toml"]
    in_force = recipes(study, config.load(spec.folder), 2)[-1]  # the version a run goes on under: the last
    assert versions[0]["from_trial"] <= 1 < in_force["from_trial"] == 2 and in_force == versions[1]
    assert len(resume(url, spec.folder).user_attrs[RECIPES_ATTR]) == 2  # the same recipe again: no new version


BRANCHED = TINY_STUDY.replace(
    "lr = { low = 1e-3, high = 0.5, log = true }",
    """optimizer = { choices = ["sgd", "adam"] }
lr = [
    { low = 1e-3, high = 0.3, log = true, when = { optimizer = "sgd" } },
    { low = 1e-4, high = 1e-2, log = true, when = { optimizer = "adam" } },
]
momentum = { low = 0.5, high = 0.99, when = { optimizer = "sgd" } }""",
)


def test_per_branch_ranges_and_conditions_are_compared_as_they_are(tmp_path, caplog):
    """The same file again says nothing (its per-branch ranges are lr|sgd and lr|adam, not lr); a
    condition that moved (momentum under sgd, then under adam) is said, with both conditions."""
    spec, url, _ = stored_study(tmp_path, BRANCHED)
    with caplog.at_level(logging.INFO, logger="hpo"):
        resume(url, spec.folder)
    assert "search space changed" not in caplog.text, caplog.text
    moved = BRANCHED.replace('high = 0.99, when = { optimizer = "sgd" }', 'high = 0.99, when = { optimizer = "adam" }')
    with caplog.at_level(logging.INFO, logger="hpo"):
        resume(url, spec.folder, moved)
    assert "search.momentum was searched when optimizer in ['sgd'], now when optimizer in ['adam']" in caplog.text
    assert "is new" not in caplog.text and "no longer searched" not in caplog.text, caplog.text


def test_run_refuses_the_other_folder_in_one_line_and_the_store_is_untouched(tmp_path, fashion_mnist_system):
    _, url, db = stored_study(tmp_path)
    write_study(tmp_path / "elsewhere" / "tiny", TINY_STUDY.replace("tiny test study", "another study"))
    before = sha(db)
    proc = hpo("--study", "elsewhere/tiny", "--storage", url, "--trials", "1", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: study 'tiny' in the store came from")
    assert sha(db) == before


def test_a_study_with_a_built_in_net_keeps_its_recipe_versions_as_they_were(tmp_path):
    spec, url, _ = stored_study(tmp_path)
    (version,) = resume(url, spec.folder).user_attrs[RECIPES_ATTR]
    assert set(version) == {"from_trial", "study_file", "study_toml", "overrides"}  # no "nets": none of its own
