"""Your own network from a Python file (or an importable module): built with the study's
[model.args], searched like any setting, its file's sha256 recorded with each trial and in the
study's recipe, every bad file refused in one line before the store exists, and the report's
recipe retraining the best trial. Real subprocesses, real Fashion-MNIST (600 images, 1 epoch)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import optuna
import pytest
from builders import sha, write_study
from processes import hpo
from torch import nn

from hpo import config
from hpo.runs import workers
from hpo.search.recipe import RECIPES_ATTR
from hpo.training import nets

NET = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels, num_classes, activation=nn.ReLU, width=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            activation(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(width * 16, num_classes),
        )

    def forward(self, x):
        return self.body(x)
"""

STUDY = """
seed = 0
[data]
dataset = "fashion_mnist"
train_size = 600
test_size = 200
[model]
name = "net.py:TinyNet"
activation = "gelu"
[model.args]
width = 4
[train]
epochs = 1
batch_size = 64
lr = 0.05
threads = 1
[sampler]
name = "grid"
[pruner]
name = "none"
[search]
"model.args.width" = { choices = [4, 8] }
"""


def tiny_params(width: int, channels: int = 1, classes: int = 10) -> int:
    """TinyNet's parameter count: a 3x3 conv to ``width`` channels, then a linear layer from width x 4 x 4."""
    return (channels * 9 + 1) * width + (width * 16 + 1) * classes


def study(root: Path, net: str = NET, text: str = STUDY, name: str = "mine") -> Path:
    folder = write_study(root / "studies" / name, text)
    (folder / "net.py").write_text(net)
    return folder


def url(root: Path) -> str:
    return f"sqlite:///{root / 'hpo.db'}"


def trials(root: Path, name: str = "mine") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url(root)).trials


@pytest.fixture(scope="module")
def ran(tmp_path_factory, fashion_mnist_system):
    """studies/mine searched over width 4 and 8 (a grid: both run), its report written."""
    root = tmp_path_factory.mktemp("custom")
    folder = study(root)
    run = hpo("--study", "studies/mine", "--trials", "2", "--storage", url(root), cwd=root, timeout=600)
    report = hpo("studies/mine", "--storage", url(root), "--no-png", module="hpo.report", cwd=root, timeout=600)
    return root, folder, run, report


def test_each_trial_builds_its_searched_width_and_records_the_files_hash(ran):
    root, folder, run, _ = ran
    assert run.returncode == 0, run.stderr[-3000:]
    done = trials(root)
    assert sorted(t.params["args.width"] for t in done) == [4, 8]  # the grid ran both
    digest = hashlib.sha256((folder / "net.py").read_bytes()).hexdigest()
    for t in done:
        width = t.params["args.width"]
        assert t.user_attrs["params"] == tiny_params(width)  # the width reached the constructor
        model = t.user_attrs["config"]["model"]
        assert model == {
            "name": f"{(folder / 'net.py').resolve()}:TinyNet",
            "activation": "gelu",
            "args": {"width": width},
        }
        assert t.user_attrs["versions"]["net_sha256"] == digest
        assert t.user_attrs["versions"]["net_file"] == str((folder / "net.py").resolve())
    recipes = optuna.load_study(study_name="mine", storage=url(root)).user_attrs[RECIPES_ATTR]
    assert [(v["from_trial"], v["nets"]) for v in recipes] == [(0, {str((folder / "net.py").resolve()): digest})]


def test_the_report_names_the_file_and_its_recipe_retrains_the_best_trial(ran, tmp_path):
    root, folder, _, report = ran
    assert report.returncode == 0, report.stderr[-3000:]
    md = (folder / "report" / "report.md").read_text()
    digest = hashlib.sha256((folder / "net.py").read_bytes()).hexdigest()
    assert f"| network | `{(folder / 'net.py').resolve()}` (sha256 `{digest[:12]}`) |" in md
    recipe = re.search(r"Its full configuration, as it ran.*?```toml\n(.*?)```", md, re.S).group(1)
    best = optuna.load_study(study_name="mine", storage=url(root)).best_trial
    assert f"[model.args]\nwidth = {best.params['args.width']}\n" in recipe
    # Another folder, another working directory: the file is found by the absolute path the trial recorded.
    write_study(tmp_path / "studies" / "again", recipe)
    result = hpo("--study", "again", "--json", module="hpo.train", cwd=tmp_path, timeout=600, check=0)
    trained = json.loads(result.stdout)
    assert trained["final_val_acc"] == best.value and trained["test_acc"] == best.user_attrs["test_acc"]
    assert trained["params"] == tiny_params(best.params["args.width"])


def test_set_reaches_a_net_argument(ran, tmp_path):
    _, folder, _, _ = ran
    args = ("--study", str(folder), "--set", "model.args.width=6", "--json")
    trained = json.loads(hpo(*args, module="hpo.train", cwd=tmp_path, timeout=600, check=0).stdout)
    assert trained["params"] == tiny_params(6)


def test_a_changed_file_on_resume_is_a_new_recipe_version_from_the_next_trial(tmp_path, fashion_mnist_system):
    one = STUDY.replace('name = "grid"', 'name = "random"')
    folder = study(tmp_path, text=one)
    first = hashlib.sha256((folder / "net.py").read_bytes()).hexdigest()
    hpo("--study", "studies/mine", "--trials", "1", "--storage", url(tmp_path), cwd=tmp_path, timeout=600, check=0)
    (folder / "net.py").write_text(NET.replace("nn.AdaptiveAvgPool2d(4)", "nn.AdaptiveMaxPool2d(4)"))
    second = hashlib.sha256((folder / "net.py").read_bytes()).hexdigest()
    run = hpo("--study", "studies/mine", "--trials", "1", "--storage", url(tmp_path), cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    path = str((folder / "net.py").resolve())
    assert (
        f"note: your net's file changed: {path} (sha256 {first[:12]} -> {second[:12]}); trials from #1 on" in run.stderr
    )
    versions = optuna.load_study(study_name="mine", storage=url(tmp_path)).user_attrs[RECIPES_ATTR]
    assert [(v["from_trial"], v["nets"]) for v in versions] == [(0, {path: first}), (1, {path: second})]
    assert [t.user_attrs["versions"]["net_sha256"] for t in trials(tmp_path)] == [first, second]
    hpo("studies/mine", "--storage", url(tmp_path), "--no-png", module="hpo.report", cwd=tmp_path, timeout=600, check=0)
    assert "**trials ran on different versions**" in (folder / "report" / "report.md").read_text()


def test_an_importable_module_is_a_net_too(tmp_path, fashion_mnist_system):
    lib = tmp_path / "lib" / "mynets"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "tiny.py").write_text(NET)
    study(tmp_path, text=STUDY.replace('"net.py:TinyNet"', '"mynets.tiny:TinyNet"'))
    env = {"PYTHONPATH": os.pathsep.join((str(tmp_path / "lib"), os.environ["PYTHONPATH"]))}
    args = ("--study", "studies/mine", "--trials", "1", "--storage", url(tmp_path))
    hpo(*args, cwd=tmp_path, env=env, timeout=600, check=0)
    (t,) = trials(tmp_path)
    assert t.user_attrs["config"]["model"]["name"] == "mynets.tiny:TinyNet"
    assert t.user_attrs["versions"]["net_file"] == str((lib / "tiny.py").resolve())
    assert t.user_attrs["versions"]["net_sha256"] == hashlib.sha256(NET.encode()).hexdigest()
    assert t.user_attrs["params"] == tiny_params(t.params["args.width"])


# ---------------------------------------------------------------- every bad net: one line, exit 2, no store

FORWARD_FAILS = NET.replace("nn.AdaptiveAvgPool2d(4)", "nn.Identity()")  # 28x28 into a layer sized for 4x4
FIVE_CLASSES = NET.replace("nn.Linear(width * 16, num_classes)", "nn.Linear(width * 16, 5)")
ODD_WIDTH = NET.replace(
    "        super().__init__()\n", "        super().__init__()\n        assert width % 2 == 0, 'width must be even'\n"
)
BAD = [
    # (net.py text, study file text, extra argv, words in the one line)
    (NET, STUDY.replace('"net.py:', '"nope.py:'), [], "model.name: no file {folder}/nope.py"),
    ("from torch import nn\n\nclass TinyNet(nn.Module:\n    pass\n", STUDY, [], "{folder}/net.py line 3: "),
    ("import torch\nimport no_such_module\n", STUDY, [], "{folder}/net.py line 2 fails to import: ModuleNotFoundError"),
    (
        NET,
        STUDY.replace(":TinyNet", ":TinyNte"),
        [],
        "defines no TinyNte (did you mean 'TinyNet'?); classes there: TinyNet",
    ),
    ("class TinyNet:\n    pass\n", STUDY, [], "TinyNet is a class, not a torch.nn.Module subclass"),
    ("def TinyNet():\n    pass\n", STUDY, [], "TinyNet is a function, not a torch.nn.Module subclass"),
    (ODD_WIDTH, STUDY, ["--set", "model.args.width=3"], "raised AssertionError: width must be even"),
    (
        ODD_WIDTH,
        STUDY.replace("[4, 8]", "[4, 7]"),
        [],
        "raised AssertionError: width must be even (in search.args.width)",
    ),
    (NET, STUDY, ["--set", "model.args.depth=3"], "model.args.depth is not an argument of"),
    (FORWARD_FAILS, STUDY, [], "forward on a batch of shape (2, 1, 28, 28) raised RuntimeError"),
    (FIVE_CLASSES, STUDY, [], "gave shape (2, 5); hpo needs (batch, num_classes) = (2, 10)"),
]


@pytest.mark.parametrize(("net", "text", "argv", "words"), BAD)
def test_a_bad_net_is_one_line_and_exit_2_before_the_store_exists(net, text, argv, words, tmp_path):
    folder = study(tmp_path, net, text).resolve()
    run = hpo("--study", "studies/mine", "--trials", "1", "--storage", url(tmp_path), *argv, cwd=tmp_path)
    assert run.returncode == 2, run.stderr[-3000:]
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: ") and words.format(folder=folder) in line, line
    assert not (tmp_path / "hpo.db").exists()


def test_a_bad_net_on_resume_leaves_the_store_as_it_was(tmp_path, fashion_mnist_system):
    folder = study(tmp_path, text=STUDY.replace('name = "grid"', 'name = "random"'))
    hpo("--study", "studies/mine", "--trials", "1", "--storage", url(tmp_path), cwd=tmp_path, timeout=600, check=0)
    (folder / "net.py").write_text(FIVE_CLASSES)
    before = sha(tmp_path / "hpo.db")
    run = hpo("--study", "studies/mine", "--trials", "1", "--storage", url(tmp_path), cwd=tmp_path)
    assert run.returncode == 2 and "gave shape (2, 5)" in run.stderr.strip(), run.stderr[-3000:]
    assert sha(tmp_path / "hpo.db") == before and len(trials(tmp_path)) == 1


def test_the_supervisors_size_estimate_builds_each_searched_width(tmp_path):
    spec = config.load(study(tmp_path))
    assert workers.largest_net(spec) == tiny_params(8)  # the widest choice, not the base's width 4
    assert workers.auto_workers(spec, cores=4, gpus=0) == 4  # a small net: one worker per core


def test_a_constructor_gets_what_it_takes_and_a_kwargs_one_gets_all(tmp_path):
    (tmp_path / "nets.py").write_text(
        NET
        + "\n\nclass Open(nn.Module):\n"
        + "    def __init__(self, **kwargs):\n"
        + "        super().__init__()\n"
        + "        self.given = kwargs\n"
    )
    args = (("width", 5),)
    net = nets.build(f"{tmp_path}/nets.py:Open", 3, 32, 10, "gelu", args)
    assert net.given == {"in_channels": 3, "num_classes": 10, "image_size": 32, "activation": nn.GELU, "width": 5}
    tiny = nets.build(f"{tmp_path}/nets.py:TinyNet", 3, 32, 10, "tanh", args)  # no image_size in its signature
    assert nets.count_parameters(tiny) == tiny_params(5, channels=3)
    assert [type(m) for m in tiny.modules() if isinstance(m, nn.Tanh)] == [nn.Tanh]  # the class, built by the net
