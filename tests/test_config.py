"""hpo.config: study files parse into typed specs; every bad input is one clear HpoError."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hpo import config
from hpo.errors import HpoError

REPO = Path(__file__).resolve().parents[1]

BASE = """
description = "test"
seed = 3
[data]
dataset = "fashion_mnist"
[model]
name = "lenet5"
[train]
epochs = 2
lr = 0.01
[search]
lr = { low = 1e-4, high = 1.0, log = true }
batch_size = { choices = [32, 64] }
"""


def parse(text: str, overrides=()):
    raw = config.apply_overrides(tomllib.loads(text), list(overrides))
    return config.parse(raw, "t", Path("studies/t"), text)


def test_parse_gives_typed_frozen_specs():
    spec = parse(BASE)
    assert spec.seed == 3 and spec.base.train.epochs == 2 and spec.base.train.lr == 0.01
    assert spec.base.train.batch_size == 128  # default kept
    lr, bs = spec.search
    assert (lr.key, lr.low, lr.high, lr.log, lr.is_int) == ("train.lr", 1e-4, 1.0, True, False)
    assert (bs.key, bs.choices, bs.is_int) == ("train.batch_size", (32, 64), True)
    assert spec.objective.directions == ["maximize"]
    with pytest.raises(AttributeError):
        spec.base.train.lr = 1.0  # frozen


def test_overrides_use_the_contract_spellings():
    spec = parse(
        BASE,
        [
            "train.epochs=5",
            "train.lr=0.2",
            "train.batch_size=64",
            "data.dataset=cifar10",
            "data.train_size=1000",
            "model.name=simple_cnn",
            "sampler.name=random",
            "pruner.name=none",
        ],
    )
    b = spec.base
    assert (b.train.epochs, b.train.lr, b.train.batch_size) == (5, 0.2, 64)
    assert (b.data.dataset, b.data.train_size, b.model.name) == ("cifar10", 1000, "simple_cnn")
    assert (spec.sampler.name, spec.pruner.name) == ("random", "none")


def test_override_values_are_toml_and_bare_words_are_strings():
    assert config.parse_override("train.milestones=[2, 4]") == (["train", "milestones"], [2, 4])
    assert config.parse_override("train.nesterov=true") == (["train", "nesterov"], True)
    assert config.parse_override("model.activation=gelu") == (["model", "activation"], "gelu")


def test_sampler_and_pruner_options_pass_through():
    spec = parse(
        BASE + '[sampler]\nname = "tpe"\nn_startup_trials = 4\n[pruner]\nname = "median"\nn_warmup_steps = 1\n'
    )
    assert spec.sampler.options == {"n_startup_trials": 4}
    assert spec.pruner.options == {"n_warmup_steps": 1}


def test_overriding_a_sampler_or_pruner_name_drops_the_old_ones_options():
    text = BASE + '[sampler]\nname = "tpe"\nn_startup_trials = 4\n[pruner]\nname = "median"\nn_warmup_steps = 1\n'
    spec = parse(text, ["pruner.name=none", "sampler.name=random"])
    assert (spec.pruner.name, spec.pruner.options) == ("none", {})
    assert (spec.sampler.name, spec.sampler.options) == ("random", {})
    kept = parse(text, ["pruner.name=median", "pruner.n_startup_trials=2"])
    assert kept.pruner.options == {"n_warmup_steps": 1, "n_startup_trials": 2}


def test_dotted_search_keys_and_int_ranges():
    spec = parse(
        BASE + '"model.name" = { choices = ["lenet5", "simple_cnn"] }\nwarmup_epochs = { low = 0, high = 2 }\n'
    )
    keys = {p.key: p for p in spec.search}
    assert keys["model.name"].choices == ("lenet5", "simple_cnn")
    assert keys["train.warmup_epochs"].is_int and keys["train.warmup_epochs"].high == 2


def test_with_values_replaces_only_what_it_names():
    spec = parse(BASE)
    changed = config.with_values(spec.base, {"train.lr": 0.5, "model.activation": "gelu"})
    assert changed.train.lr == 0.5 and changed.model.activation == "gelu"
    assert changed.train.epochs == spec.base.train.epochs and spec.base.train.lr == 0.01


# ---------------------------------------------------------------- your own net: "file.py:Class", [model.args]

OWN_NET = """
[model]
name = "net.py:TinyNet"
[model.args]
width = 16
drop = 0.25
[search]
"model.args.width" = { choices = [8, 32] }
"model.args.drop" = { low = 0, high = 1 }
"model.args.depth" = { low = 1, high = 3 }
"model.args.gain" = { low = 1, high = 2.5 }
"""


def test_a_net_file_is_made_absolute_against_the_study_folder_and_a_module_is_kept():
    spec = parse(OWN_NET)
    assert spec.base.model.name == f"{(Path('studies/t') / 'net.py').resolve()}:TinyNet"
    assert parse("[model]\nname = 'mynets.tiny:Net'\n").base.model.name == "mynets.tiny:Net"
    assert parse("[model]\nname = '/abs/net.py:Net'\n").base.model.name == "/abs/net.py:Net"
    searched = parse("[search]\nname = { choices = ['lenet5', 'net.py:TinyNet'] }\n").search[0]
    assert searched.choices == ("lenet5", f"{(Path('studies/t') / 'net.py').resolve()}:TinyNet")


def test_net_args_are_sorted_pairs_and_searched_ones_take_their_kind_from_the_args_or_the_range():
    spec = parse(OWN_NET)
    assert spec.base.model.args == (("drop", 0.25), ("width", 16))
    hash(spec.base)  # frozen and hashable: the objective keys its data by it
    width, drop, depth, gain = spec.search
    assert (width.key, width.name, width.choices) == ("model.args.width", "args.width", (8, 32))
    assert (drop.low, drop.high, drop.is_int) == (0.0, 1.0, False)  # [model.args] has drop = 0.25: a float
    assert (depth.low, depth.high, depth.is_int) == (1, 3, True)  # no value given: ints stay ints
    assert (gain.low, gain.high, gain.is_int) == (1.0, 2.5, False)
    assert type(gain.low) is float


def test_a_net_argument_is_set_searched_and_recorded_as_a_table():
    spec = parse(OWN_NET, ["model.args.width=64", "model.args.bias=true"])
    assert dict(spec.base.model.args) == {"drop": 0.25, "width": 64, "bias": True}
    assert config.parse_override("model.args.width=32") == (["model", "args", "width"], 32)
    trial = config.with_values(spec.base, {"model.args.width": 8, "train.lr": 0.5})
    assert trial.model.args == (("bias", True), ("drop", 0.25), ("width", 8)) and trial.train.lr == 0.5
    recorded = trial.to_dict()["model"]
    assert recorded["args"] == {"bias": True, "drop": 0.25, "width": 8}
    assert "args" not in config.TrainConfig().to_dict()["model"]  # a built-in net's record is as it was
    again = config.parse({"model": recorded}, "t", Path("elsewhere"), "")  # the record read back as a study file
    assert again.base.model == trial.model


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("[model]\nname = 'lenet5'\n[model.args]\nwidth = 3\n", [], "model.args is for your own net"),
        ("[model]\nname = 'net.py:'\n", [], 'write your own net as "file.py:Class"'),
        ("[model]\nname = 'my-nets:Net'\n", [], "write your own net as"),
        (OWN_NET, ["model.args.width={ a = 1 }"], "model.args.width must be a number, string, boolean"),
        (OWN_NET.replace("{ choices = [8, 32] }", "{ choices = [8, 3.5] }"), [], "must be int, got 3.5"),
        (OWN_NET.replace('depth" = { low = 1', "depth\" = { low = 'a'"), [], "needs numbers for low and high"),
        ("", ["model.args.width.x=1"], "write SECTION.KEY=VALUE"),
        ("", ["train.lr.x=1"], "write SECTION.KEY=VALUE"),
    ],
)
def test_a_bad_net_setting_is_one_clear_line(text, overrides, message):
    with pytest.raises(HpoError) as error:
        parse(text, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("[train]\nlr = 0.1\nepoch = 3\n", [], "unknown key train.epoch (did you mean 'epochs'?)"),
        ("[trian]\nlr = 0.1\n", [], "unknown key 'trian'"),
        ("[search]\nlr = { low = 1.0, high = 0.1 }\n", [], "low (1.0) is greater than high (0.1)"),
        ("[search]\nlr = { low = 0.0, high = 0.1, log = true }\n", [], "log scale needs low > 0"),
        ("[search]\nbatch_size = { choices = [] }\n", [], "choices must be a non-empty list"),
        ("[search]\nlearning_rate = { low = 0.1, high = 1.0 }\n", [], "unknown search parameter search.learning_rate"),
        ("[search]\nactivation = { low = 1, high = 2 }\n", [], "give it choices"),
        ('[search]\nactivation = { choices = ["relu", "relux"] }\n', [], "unknown model.activation 'relux'"),
        ("[search]\nlr = { low = 0.1 }\n", [], "needs both low and high"),
        ('[train]\nlr = "fast"\n', [], "train.lr must be float"),
        ("[train]\nepochs = 2.5\n", [], "train.epochs must be int"),
        ("", ["train.lr=-1"], "train.lr must be > 0, got -1"),
        ("", ["train.batch_size=0"], "train.batch_size must be >= 1"),
        ("", ["train.momentum=1.0"], "train.momentum must be in [0, 1)"),
        (
            "",
            ["model.name=lenet6"],
            "unknown model.name 'lenet6' (did you mean 'lenet5'?); choose one of: lenet5, resnet18, simple_cnn",
        ),
        ("", ["train.optimizer=sgdd"], "unknown train.optimizer 'sgdd'"),
        ("", ["train.schedule=linear"], "choose one of: constant, cosine, step"),
        ("", ["data.dataset=imagenet"], "unknown data.dataset 'imagenet'"),
        ("", ["train.nesterov=true", "train.optimizer=adam"], "train.nesterov needs optimizer"),
        ("", ["objective.metrics=['test_acc']"], "unknown objective metric 'test_acc'"),
        ("", ["train.lr"], "write SECTION.KEY=VALUE"),
        ("", ["data.dataset=folder"], 'data.dataset = "folder" needs data.path = "DIR"'),
        ("", ["data.path=images"], "data.path is for data.dataset = \"folder\", not 'fashion_mnist'"),
        ("", ["data.image_size=32"], 'data.image_size is for data.dataset = "folder"'),
        ("", ["data.dataset=folder", "data.path=x", "data.image_size=-1"], "data.image_size must be >= 0"),
        ("", ["data.dataset=folder", "data.path=x", "data.test_fraction=1"], "data.test_fraction must be in (0, 1)"),
        ("", ["data.dataset=folder", "data.path=x", "data.test_fraction=0"], "data.test_fraction must be in (0, 1)"),
        ("", ["data.dataset=folder", "data.path=7"], "data.path must be str"),
    ],
)
def test_bad_input_is_one_clear_line(text, overrides, message):
    with pytest.raises(HpoError) as error:
        parse(text, overrides)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_folder_path_is_resolved_against_the_study_folder(tmp_path, monkeypatch):
    # Recorded in every trial's config: retraining from another working directory must find the images.
    raw = {"data": {"dataset": "folder", "path": "images"}}
    monkeypatch.chdir(tmp_path)
    spec = config.parse(raw, "t", Path("studies/t"))
    assert spec.base.data.path == str(tmp_path / "studies" / "t" / "images")
    assert spec.base.to_dict()["data"]["path"] == str(tmp_path / "studies" / "t" / "images")
    absolute = config.parse({"data": {"dataset": "folder", "path": str(tmp_path / "elsewhere")}}, "t", Path("s"))
    assert absolute.base.data.path == str(tmp_path / "elsewhere")
    assert config.parse({}, "t", Path("studies/t")).base.data.path == ""  # no path: nothing to resolve


def test_find_study_lists_the_known_ones(monkeypatch):
    monkeypatch.chdir(REPO)
    assert config.find_study("lenet_lr") == Path("studies/lenet_lr")
    with pytest.raises(HpoError, match=r"no study 'lenet_rl'.*did you mean 'lenet_lr'.*studies here: .*lenet_momentum"):
        config.find_study("lenet_rl")


def test_malformed_toml(tmp_path):
    (tmp_path / "study.toml").write_text("[train\nlr = 1")
    with pytest.raises(HpoError, match="is not valid TOML"):
        config.load(tmp_path)


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (REPO / "studies").glob("*/study.toml")))
def test_every_preset_parses_and_describes_itself(folder, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = config.load(folder)
    assert spec.description and spec.search
    assert spec.name == folder


def test_one_setting_named_twice_in_search_is_one_clear_line():
    with pytest.raises(HpoError) as e:
        config.search_space({"optimizer": {"choices": ["sgd"]}, "train.optimizer": {"choices": ["adam"]}})
    assert str(e.value).startswith("search: optimizer and train.optimizer name the same setting (train.optimizer)")


def test_a_misspelt_when_is_named_with_when_among_the_known_keys():
    with pytest.raises(HpoError) as e:
        config.search_space({"momentum": {"low": 0.5, "high": 0.9, "wehn": {"optimizer": "sgd"}}})
    assert "unknown key search.momentum.wehn (did you mean 'when'?)" in str(e.value), str(e.value)
    assert str(e.value).endswith("known: low, high, log, step, choices, when")


def test_a_study_file_with_several_problems_says_them_all_in_one_line(tmp_path):
    """One run shows everything to fix: a typo'd key, a bad value, a bad search entry, an unknown sampler."""
    raw = tomllib.loads(
        """
[train]
lr = -1.0
epoch = 3
[search]
momentum = { low = 0.9, high = 0.5 }
[sampler]
name = "tpee"
"""
    )
    with pytest.raises(HpoError) as e:
        config.parse(raw, "x", tmp_path)
    text = str(e.value)
    assert text.startswith("3 problems: (1) unknown key train.epoch (did you mean 'epochs'?)"), text
    assert "(2) search.momentum: low (0.9) is greater than high (0.5); swap them" in text
    assert "(3) unknown sampler.name 'tpee'" in text and "\n" not in text
    raw["train"].pop("epoch"), raw["search"].clear(), raw.pop("sampler")
    with pytest.raises(HpoError) as e:  # what needs a whole spec comes once the parts are sound
        config.parse(raw, "x", tmp_path)
    assert str(e.value) == "train.lr must be > 0, got -1.0"
