"""The recipe travels with the result: the configuration the report prints for the best trial,
saved as a study file and trained with `python -m hpo.train`, gives that trial's validation
accuracy to the last digit on the CPU. Real subprocesses, real Fashion-MNIST (a small subset)."""

from __future__ import annotations

import json
import re

import optuna
from builders import write_study
from processes import hpo

QUICK = ["--set", "seed=5", "--set", "data.train_size=400", "--set", "train.epochs=1", "--set", "data.test_size=100"]


def test_the_printed_configuration_retrains_the_trial_bit_for_bit(study_dir, tmp_path):
    write_study(study_dir, pruner='name = "none"')
    hpo("--study", "tiny", "--trials", "2", "--keep", "none", "--quiet", *QUICK, cwd=tmp_path, timeout=600, check=0)
    hpo("studies/tiny", "--no-png", module="hpo.report", cwd=tmp_path, timeout=600, check=0)
    md = (study_dir / "report" / "report.md").read_text()
    recipe = re.search(r"Its full configuration, as it ran.*?```toml\n(.*?)```", md, re.S).group(1)
    study = optuna.load_study(study_name="tiny", storage="sqlite:///storage/hpo.db")
    best = study.best_trial
    assert (
        best.user_attrs["seed"] != 5 and f"seed = {best.user_attrs['seed']}" in recipe
    )  # a trial seed, not the study's
    assert "split_seed = 5" in recipe  # the split the trial was scored on: the study seed's
    (tmp_path / "studies" / "again").mkdir()
    (tmp_path / "studies" / "again" / "study.toml").write_text(recipe)
    result = json.loads(
        hpo("--study", "again", "--json", module="hpo.train", cwd=tmp_path, timeout=600, check=0).stdout
    )
    assert result["final_val_acc"] == best.value == best.user_attrs["val_acc"]
    assert result["test_acc"] == best.user_attrs["test_acc"]
