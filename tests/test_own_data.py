"""The own-data example (examples/own_data: a network from net.py on a folder of images) through
everything a built-in study gets: the README's commands, two workers stopped and resumed as
printed, --confirm, warm start, the report, and bit-identical reruns."""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.builders import sha
from tests.processes import Watched, hpo

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "own_data"
FAST = ["--set", "train.epochs=4", "--set", "train.threads=1", "--set", "train.checkpoint_every=1"]


def make_images(out: Path, per_class: int = 200, size: int = 16) -> None:
    subprocess.run(
        [sys.executable, str(EXAMPLE / "make_images.py"), "--out", str(out), "--train", str(per_class)]
        + ["--test", str(per_class // 4), "--size", str(size)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes") / "images"
    make_images(out)
    return out


@pytest.fixture
def own(tmp_path, images) -> Path:
    """studies/own in tmp_path: the example's net.py and study.toml, and the shared images."""
    folder = tmp_path / "studies" / "own"
    folder.mkdir(parents=True)
    for name in ("net.py", "study.toml"):
        shutil.copy(EXAMPLE / name, folder / name)
    (folder / "images").symlink_to(images)
    return folder


def finished(storage: str, name: str = "own") -> list:
    trials = optuna.load_study(study_name=name, storage=storage).trials
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def test_the_example_runs_as_the_readme_says_and_learns(own, tmp_path):
    """README: make the images, run the study, report it (here 4 trials of 4 epochs on fewer images)."""
    storage = f"sqlite:///{tmp_path / 'own.db'}"
    code, out, err = hpo("--study", str(own), "--trials", "4", "--storage", storage, *FAST, cwd=tmp_path)
    assert code == 0, err[-3000:]
    best = optuna.load_study(study_name="own", storage=storage).best_trial
    assert best.value > 60.0, err[-3000:]  # 4 classes: chance is 25%
    assert set(best.user_attrs["class_test_acc"]) == {"circle", "cross", "square", "triangle"}
    assert best.user_attrs["versions"]["net_sha256"] == sha(own / "net.py")
    code, _, err = hpo(str(own), "--storage", storage, module="hpo.report", cwd=tmp_path)
    assert code == 0, err[-3000:]
    md = (own / "report" / "report.md").read_text()
    assert f"sha256 `{sha(own / 'net.py')[:12]}`" in md and "| circle |" in md


def test_two_workers_stopped_and_resumed_as_printed_then_confirmed_and_warm_started(own, tmp_path):
    storage = f"sqlite:///{tmp_path / 'own.db'}"
    run = Watched("--study", str(own), "--trials", "4", "--workers", "2", "--storage", storage, *FAST, cwd=tmp_path)
    run.wait_line(r"trial #\d+ (complete|pruned)", deadline=240)  # a trial done, others in training
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish(120) == 130, run.err[-3000:]
    printed = run.wait_line(r"resume with: python -m hpo\.run (.*)$").group(1)
    code, _, err = hpo(*shlex.split(printed), cwd=tmp_path)
    assert code == 0, err[-3000:]
    assert len(finished(storage)) == 4  # the four asked for, none twice
    assert not list((tmp_path / "models" / "checkpoints").glob("*.pt"))

    code, _, err = hpo("--study", str(own), "--confirm", "1", "--storage", storage, *FAST, cwd=tmp_path)
    assert code == 0, err[-3000:]
    confirmations = [t for t in finished(storage) if "confirms" in t.user_attrs]
    assert len(confirmations) == 3  # the top 3 once each (a new seed may collapse: that is a finding, not a fault)
    assert all(
        t.params == optuna.load_study(study_name="own", storage=storage).trials[t.user_attrs["confirms"]].params
        for t in confirmations
    )

    code, _, err = hpo(
        "--study",
        str(own),
        "--study-name",
        "own_b",
        "--warm-start",
        "own",
        "--warm-start-trials",
        "2",
        "--trials",
        "2",
        "--storage",
        storage,
        *FAST,
        cwd=tmp_path,
    )
    assert code == 0, err[-3000:]
    assert "warm start from 'own': 2 of its best configurations, carrying activation, args.width, lr" in err, err
    assert [t.user_attrs.get("warm_start", "")[:4] for t in finished(storage, "own_b")] == ["own#", "own#"]


def test_two_fresh_runs_of_the_example_are_the_same_study(own, tmp_path):
    """Bit-identical on the CPU with one thread: parameters, values and curves (one process each)."""
    studies = []
    for name in ("a", "b"):
        storage = f"sqlite:///{tmp_path / f'{name}.db'}"
        code, _, err = hpo(
            "--study", str(own), "--trials", "3", "--workers", "1", "--storage", storage, *FAST, cwd=tmp_path
        )
        assert code == 0, err[-3000:]
        studies.append([(t.params, t.value, t.intermediate_values) for t in finished(storage)])
    assert studies[0] == studies[1]
