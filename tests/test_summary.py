"""The report's summary and its claims, on ground-truth studies (tests/truth.py: built with
optuna.create_trial, no training) whose effects the test knows: the summary states the true
effects and no false one, and every number a sentence states is in the tables of its section."""

from __future__ import annotations

import re

import pytest
import truth

from hpo.analysis import branches, findings, summary
from hpo.analysis.figures import render_markdown

KINDS = ("cliff", "lucky_batch", "confounded", "choice", "thin")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Each ground-truth study's findings and report.md, computed once."""
    cache = {}

    def get(kind):
        if kind not in cache:
            url = f"sqlite:///{tmp_path_factory.mktemp(kind) / 'truth.db'}"
            study = truth.build(url, kind, kind)
            f = branches.extend(findings.compute(study), study)
            cache[kind] = (study, f, render_markdown(f, {}))
        return cache[kind]

    return get


def said(f) -> dict[str, str]:
    return {x.title: x.text for x in summary.lines(f)}


def mattered(f) -> list[str]:
    """The parameters the summary says had an effect, in its order."""
    text = said(f).get("What mattered", "")
    return [part.split(" ")[0] for part in text.split("; ") if " best " in part]


def test_the_cliff_summary_names_lr_its_optimum_and_the_cliff(built):
    _, f, _ = built("cliff")
    s = said(f)
    assert mattered(f) == ["lr"]
    lo, hi = re.search(r"lr best between ([\d.]+) and ([\d.]+)", s["What mattered"]).groups()
    assert float(lo) <= truth.BEST_LR <= float(hi)
    assert "smaller: " in s["What mattered"] and "larger: " in s["What mattered"]  # what too small and too large did
    assert "no clear effect of momentum, batch_size" in s["What did not"]
    assert "momentum ≥ 0.9:" in s["What broke"] and "diverged" in s["What broke"]
    assert s["What to use"].startswith(f"trial #{f.best.number} (lr ")
    assert s["How sure"].startswith("80 trials (") and "--confirm 3" in s["How sure"]


def test_an_irrelevant_choice_that_drew_good_trials_is_not_an_effect(built):
    _, f, _ = built("lucky_batch")
    assert "batch_size" not in mattered(f) and "batch_size" in said(f)["What did not"]


def test_a_correlated_pair_gets_both_true_directions(built):
    _, f, _ = built("confounded")
    s = said(f)["What mattered"]
    assert sorted(mattered(f)) == ["lr", "momentum"]
    # the truth: lr raises accuracy (best at the top of its range), momentum lowers it (best at the bottom)
    assert re.search(r"lr best above [\d.]+ by partial dependence", s), s
    assert re.search(r"momentum best below [\d.]+ by partial dependence", s), s


def test_a_real_categorical_effect_is_stated_and_an_irrelevant_one_is_not(built):
    _, f, _ = built("choice")
    s = said(f)
    assert "activation" in mattered(f) and "width" not in mattered(f)
    assert "activation best at gelu" in s["What mattered"]
    assert "width" in s["What did not"]


def test_a_thin_study_claims_nothing(built):
    _, f, _ = built("thin")
    s = said(f)
    assert s["What did not"].startswith("Thin evidence: 5 finished trials")
    assert "What mattered" not in s


# ---------------------------------------------------------------- every number in a table

NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?(?:e-?\d+)?%?")


def measured(text: str) -> set[str]:
    """The numbers a sentence states as results: decimals, percentages and trial counts (not the
    rules it quotes, such as an epoch number or the intervals' 90%)."""
    text = text.replace("90% interval", "interval")
    out = set()
    for m in NUMBER.finditer(text):
        token, rest = m.group(), text[m.end() : m.end() + 8]
        if "." in token or token.endswith("%") or rest.startswith((" trial", " of ")):
            out.add(token.lstrip("+"))
    return out


def cells(lines: list[str]) -> set[str]:
    return {m.group().lstrip("+") for line in lines for m in NUMBER.finditer(line)}


def sections(md: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per parameter section of "Each parameter": (its finding's lines, its tables' lines)."""
    body = md.split("## Each parameter", 1)[1].split("\n## ", 1)[0]
    out = {}
    for chunk in body.split("\n### ")[1:]:
        name, *lines = chunk.splitlines()
        out[name.split(" (importance")[0]] = (
            [x for x in lines if x.startswith("- ")],
            [x for x in lines if x.startswith("|")],
        )
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_every_number_of_a_finding_is_in_its_sections_tables(built, kind):
    _, f, md = built(kind)
    parts = sections(md)
    assert set(parts) == {summary.display(p.name) for p in f.params}
    for name, (finding, tables) in parts.items():
        assert finding, name
        missing = measured(" ".join(finding)) - cells(tables)
        assert not missing, (kind, name, missing, finding)


@pytest.mark.parametrize("kind", KINDS)
def test_every_number_the_summary_states_of_an_effect_is_in_that_parameters_tables(built, kind):
    _, f, md = built(kind)
    parts = sections(md)
    text = said(f).get("What mattered", "")
    name = None
    for part in text.rstrip(".").split("; ") if text else ():
        if not part.startswith(("smaller:", "larger:")):  # those are the merged rows of the parameter before
            name = part.split(" ")[0]
        missing = measured(part) - cells(parts[name][1])
        assert not missing, (kind, name, part, missing)
