"""python -m hpo.train: one configuration trained as a subprocess, its one-line JSON result on
stdout and its progress on stderr, and every bad input refused in one line (exit 2). The loop
itself (hpo.training.loop) is tested in tests/test_loop.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
from processes import start

from hpo.config import DataSpec, declared
from hpo.training.loop import OPTIMIZERS, SCHEDULES, EpochStats
from hpo.training.nets import ACTIVATIONS, NETS

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict) -> subprocess.Popen:
    return start(*args, module="hpo.train", cwd=ROOT, env=env)


def names(registry) -> str:
    return ", ".join(sorted(registry))


# (arguments, what the one error line must contain)
BAD_INPUT = {
    "lr": (["--set", "train.lr=-1"], ["train.lr", "-1"]),
    "net": (["--set", "model.name=lenet6"], ["'lenet6'", names(NETS)]),
    "optimizer": (["--set", "train.optimizer=sgdd"], ["'sgdd'", names(OPTIMIZERS)]),
    "activation": (["--set", "model.activation=relux"], ["'relux'", names(ACTIVATIONS)]),
    "schedule": (["--set", "train.schedule=linear"], ["'linear'", names(SCHEDULES)]),
    "batch_size": (["--set", "train.batch_size=0"], ["train.batch_size", "got 0"]),
    "momentum": (["--set", "train.momentum=1.0"], ["train.momentum", "1.0"]),
    "dataset": (["--set", "data.dataset=imagenet"], ["'imagenet'", names(declared(DataSpec, "dataset"))]),
    "study": (["--study", "nope"], ["'nope'", "lenet_lr"]),
    "device": (["--set", "train.device=cuda:x"], ["'cuda:x'"]),
}


@pytest.fixture(scope="module")
def cli_runs(fashion_subset, empty_data_dir):
    """Every CLI run of this file, started together (each pays ~2 s of imports) and awaited once."""
    env = {"HPO_DATA_DIR": str(empty_data_dir)}
    good = cli(
        "--study",
        "lenet_lr",
        "--set",
        "train.epochs=2",
        "--set",
        "data.train_size=2000",
        "--set",
        "train.threads=1",
        "--json",
        env=env,
    )
    bad = {}
    for key, (args, _) in BAD_INPUT.items():
        study = [] if "--study" in args else ["--study", "lenet_lr"]
        bad[key] = cli(*study, *args, env=env)
    done = {key: (p.wait(timeout=120), *p.communicate()) for key, p in {**bad, "good": good}.items()}
    return done


def test_cli_json(cli_runs):
    code, out, err = cli_runs["good"]
    assert code == 0, err
    assert out.endswith("\n") and out.count("\n") == 1  # one line, one object, nothing else on stdout
    result = json.loads(out)
    assert result["status"] == "ok" and result["reason"] == ""
    assert 10 < result["final_val_acc"] <= result["best_val_acc"] <= 100
    assert 10 < result["test_acc"] <= 100
    assert result["wall_time_s"] > 0 and result["images_per_s"] > 0
    assert (result["params"], result["device"], result["threads"], result["epochs_run"]) == (61_706, "cpu", 1, 2)
    curve = result["curve"]
    assert [c["epoch"] for c in curve] == [1, 2]
    assert set(curve[0]) == {f.name for f in dataclasses.fields(EpochStats)}
    assert curve[-1]["val_acc"] == result["final_val_acc"]
    # Progress goes to stderr: a header, one line per epoch, a summary.
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith(
        "lenet_lr: lenet5 on fashion_mnist (2000 train / 6000 val / 10000 test), 2 epochs on cpu"
    )
    assert [line.split()[1] for line in lines if line.lstrip().startswith("epoch ")] == ["1/2", "2/2"]
    assert lines[-1].startswith("best val") and f"test {result['test_acc']:.2f}%" in lines[-1]


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_cli_bad_input(cli_runs, case):
    code, out, err = cli_runs[case]
    assert code == 2, err
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for part in BAD_INPUT[case][1]:
        assert part in lines[0]
