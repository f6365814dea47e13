"""Conditional search spaces: the study-file syntax, its checks at load (one line each), and
define-by-run sampling (hpo.search.space) on a real tiny study."""

from __future__ import annotations

import tomllib
from pathlib import Path

import optuna
import pytest
from builders import write_study
from processes import hpo

from hpo import config
from hpo.errors import HpoError
from hpo.search.space import trial_config

HEAD = """
seed = 0
[train]
epochs = 2
optimizer = "sgd"
[search]
"""
BRANCHED = (
    HEAD
    + """
optimizer = { choices = ["sgd", "adam", "adamw"] }
momentum = { low = 0.5, high = 0.99, when = { optimizer = "sgd" } }
nesterov = { choices = [false, true], when = { optimizer = "sgd" } }
weight_decay = { low = 1e-5, high = 0.1, log = true, when = { optimizer = "adamw" } }
lr = [
    { low = 1e-3, high = 0.3, log = true, when = { optimizer = "sgd" } },
    { low = 1e-5, high = 1e-2, log = true, when = { optimizer = ["adam", "adamw"] } },
]
"""
)


def parse(text: str) -> config.StudySpec:
    return config.parse(tomllib.loads(text), "t", Path("studies/t"), text)


def test_branches_parse_with_one_optuna_name_per_range_and_conditions_first():
    spec = parse(BRANCHED)
    names = [p.optuna_name for p in spec.search]
    assert names == ["optimizer", "momentum", "nesterov", "weight_decay", "lr|sgd", "lr|adam/adamw"]
    lr_sgd = spec.search[4]
    assert (lr_sgd.key, lr_sgd.low, lr_sgd.high, lr_sgd.when) == (
        "train.lr",
        1e-3,
        0.3,
        (("train.optimizer", ("sgd",)),),
    )
    # the same thing as an array of tables, and a condition written before the setting it reads
    tables = (
        HEAD
        + """
momentum = { low = 0.5, high = 0.99, when = { "train.optimizer" = "sgd" } }
optimizer = ["sgd", "adam"]
[[search.lr]]
low = 0.001
high = 0.3
log = true
when = { optimizer = "sgd" }
[[search.lr]]
low = 1e-5
high = 0.01
log = true
when = { optimizer = "adam" }
"""
    )
    assert [p.optuna_name for p in parse(tables).search] == ["optimizer", "momentum", "lr|sgd", "lr|adam"]


def test_branches_with_the_same_range_share_one_name():
    spec = parse(
        HEAD + 'optimizer = ["sgd", "adam"]\nlr = [{ low = 0.001, high = 0.1, when = { optimizer = "sgd" } }, '
        '{ low = 0.001, high = 0.1, when = { optimizer = "adam" } }]\n'
    )
    assert [p.optuna_name for p in spec.search] == ["optimizer", "lr", "lr"]


@pytest.mark.parametrize(
    "search, message",
    [
        (
            'momentum = { low = 0.5, high = 0.99, when = { optimizer = "sgd" } }',
            r"^search.momentum.when.optimizer: optimizer is not searched, so the condition never varies",
        ),
        (
            'optimizer = ["sgd", "adam"]\nmomentum = { low = 0.5, high = 0.99, when = { optimizer = "sgdd" } }',
            r"^search.momentum.when.optimizer = 'sgdd' is not one of its choices: 'adam', 'sgd'$",
        ),
        (
            'optimizer = ["sgd", "adam"]\nmomentum = { low = 0.5, high = 0.99, when = { optimiser = "sgd" } }',
            r"^search.momentum.when.optimiser: unknown setting 'optimiser'",
        ),
        (
            "lr = { low = 0.001, high = 0.1 }\nmomentum = { low = 0.5, high = 0.99, when = { lr = 0.01 } }",
            r"^search.momentum.when.lr: a condition needs a setting searched by choices, and lr is a range$",
        ),
        (
            'optimizer = { choices = ["sgd", "adam"], when = { activation = "relu" } }\n'
            'activation = { choices = ["relu", "gelu"], when = { optimizer = "sgd" } }',
            r"^search: conditions form a cycle: activation -> optimizer -> activation$",
        ),
        (
            'optimizer = ["sgd", "adam", "adamw"]\n'
            'lr = [{ low = 0.001, high = 0.3, when = { optimizer = ["sgd", "adam"] } }, '
            '{ low = 1e-5, high = 0.01, when = { optimizer = ["adam", "adamw"] } }]',
            r"^search.lr: two ranges overlap "
            r"\(when optimizer in \['sgd', 'adam'\] and when optimizer in \['adam', 'adamw'\]\)",
        ),
        (
            'optimizer = ["sgd", "adam"]\n'
            'lr = [{ low = 0.001, high = 0.3 }, { low = 1e-5, high = 0.01, when = { optimizer = "adam" } }]',
            r"^search.lr\[0\]: a setting with several ranges needs a `when` in each",
        ),
        (
            'optimizer = ["sgd", "adam"]\nmomentum = { low = 0.5, high = 0.99, when = "sgd" }',
            r"^search.momentum.when must be a table of setting = value",
        ),
        (
            'optimizer = ["sgd", "adam"]\nmomentum = { low = 0.5, high = 0.99, when = { optimizer = [] } }',
            r"^search.momentum.when.optimizer is an empty list",
        ),
        (
            'optimizer = ["sgd", "adam"]\nmomentum = { low = 0.5, high = 0.99, when = { optimizer = 1 } }',
            r"^search.momentum.when.optimizer must be str, got 1$",
        ),
    ],
)
def test_each_bad_condition_is_one_line(search, message):
    with pytest.raises(HpoError, match=message) as e:
        parse(HEAD + search + "\n")
    assert "\n" not in str(e.value)


def test_a_conditional_value_is_checked_in_its_own_branch():
    # nesterov = true is valid under SGD even when the base optimizer is Adam ...
    parse(
        HEAD.replace('"sgd"', '"adam"')
        + 'optimizer = ["sgd", "adam"]\nnesterov = { choices = [false, true], when = { optimizer = "sgd" } }\n'
    )
    # ... and still invalid where the branch cannot have it
    with pytest.raises(HpoError, match=r"train.nesterov needs optimizer = \"sgd\".*\(in search.nesterov\)"):
        parse(
            HEAD
            + 'optimizer = ["sgd", "adam"]\nnesterov = { choices = [false, true], when = { optimizer = "adam" } }\n'
        )


def test_the_grid_sampler_refuses_a_conditional_space():
    from hpo.search.study import make_sampler

    with pytest.raises(HpoError, match=r"grid.*cannot search conditional parameters \(search.momentum"):
        make_sampler(
            parse(
                HEAD
                + 'optimizer = ["sgd", "adam"]\nmomentum = { choices = [0.5, 0.9], when = { optimizer = "sgd" } }\n'
                '[sampler]\nname = "grid"\n'
            ),
            0,
        )


def test_fixed_trials_get_exactly_their_branch():
    spec = parse(BRANCHED)
    sgd = trial_config(
        optuna.trial.FixedTrial({"optimizer": "sgd", "momentum": 0.6, "nesterov": True, "lr|sgd": 0.2}), spec
    )
    assert (sgd.train.optimizer, sgd.train.momentum, sgd.train.nesterov, sgd.train.lr) == ("sgd", 0.6, True, 0.2)
    adamw = trial_config(
        optuna.trial.FixedTrial({"optimizer": "adamw", "weight_decay": 0.01, "lr|adam/adamw": 1e-3}), spec
    )
    assert (adamw.train.optimizer, adamw.train.weight_decay, adamw.train.lr) == ("adamw", 0.01, 1e-3)
    assert adamw.train.momentum == spec.base.train.momentum  # not sampled: the base setting


def test_a_conditional_study_samples_every_branch_and_nothing_of_the_others(
    tmp_path, monkeypatch, fashion_mnist_system
):
    monkeypatch.chdir(tmp_path)
    write_study(
        tmp_path / "studies" / "cond",
        search=BRANCHED.split("[search]\n")[1],
        train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1",
        sampler='name = "random"',
        pruner='name = "none"',
    )
    (tmp_path / "studies" / "cond" / "study.toml").write_text(
        (tmp_path / "studies" / "cond" / "study.toml").read_text().replace("train_size = 2000", "train_size = 300")
    )
    proc = hpo("--study", "cond", "--trials", "6", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = optuna.load_study(study_name="cond", storage=f"sqlite:///{tmp_path / 'storage/hpo.db'}").trials
    assert len(trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    expected = {
        "sgd": {"optimizer", "momentum", "nesterov", "lr|sgd"},
        "adam": {"optimizer", "lr|adam/adamw"},
        "adamw": {"optimizer", "weight_decay", "lr|adam/adamw"},
    }
    seen = set()
    for t in trials:
        branch = t.params["optimizer"]
        seen.add(branch)
        assert set(t.params) == expected[branch], (t.number, t.params)
        ran = t.user_attrs["config"]["train"]  # the config that trained is the branch's
        assert ran["optimizer"] == branch and ran["lr"] == t.params["lr|sgd" if branch == "sgd" else "lr|adam/adamw"]
    assert seen == {"sgd", "adam", "adamw"}
    study = optuna.load_study(study_name="cond", storage=f"sqlite:///{tmp_path / 'storage/hpo.db'}")
    assert study.user_attrs["branches"]["lr|sgd"] == {"setting": "lr", "when": {"optimizer": ["sgd"]}}
