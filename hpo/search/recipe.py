"""A study's identity and recipe: which study file a stored study came from, whether a new run's
search space can go on from the stored trials, and every version of the recipe a study ran under.

A study is found by its name (the folder's), but two folders of one name (studies/tiny and
/elsewhere/tiny) are two studies: resuming one from the other's file would add its trials to the
other's and overwrite its recipe. And Optuna refuses, trial by trial, a parameter whose kind,
log flag or choices changed: that is found here, before the first trial, in one line.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)

from hpo.config import STUDY_FILE, ParamSpec, StudySpec, net_reference, variants
from hpo.errors import HpoError

# study user attr: [{from_trial, study_file, study_toml, overrides[, nets]}, ...], oldest first; nets:
# your own nets' files and their sha256 ({path: hash}), there only for a study that has one
RECIPES_ATTR = "recipes"
RECIPE_KEYS = ("study_file", "study_toml", "overrides", "nets")  # a change in any one is a new version
log = logging.getLogger(__name__)


def named(spec: StudySpec, name: str) -> StudySpec:
    """The spec under another study name (hpo.run --study-name)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name):
        raise HpoError(f"--study-name {name!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    return dataclasses.replace(spec, name=name)


def study_path(spec: StudySpec) -> str:
    return str((spec.folder / STUDY_FILE).resolve())


def distribution(p: ParamSpec) -> BaseDistribution:
    """The distribution hpo.search.space.suggest asks Optuna for."""
    if p.choices:
        return CategoricalDistribution(list(p.choices))
    if p.is_int:
        return IntDistribution(p.low, p.high, log=p.log, step=p.step or 1)
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def _describe(d: BaseDistribution) -> str:
    if isinstance(d, CategoricalDistribution):
        return f"choices {list(d.choices)}"
    kind = "int" if isinstance(d, IntDistribution) else "float"
    plain_step = d.step is None or (kind == "int" and d.step == 1)
    extra = (", log" if d.log else "") + ("" if plain_step else f", step {d.step}")
    return f"{kind} range [{d.low}, {d.high}{extra}]"


def stored_space(trials) -> dict[str, BaseDistribution]:
    """Each parameter's distribution as the latest trial that sampled it had it."""
    space: dict[str, BaseDistribution] = {}
    for t in sorted(trials, key=lambda t: t.number):
        space.update(t.distributions)
    return space


def space_changes(
    old: dict[str, BaseDistribution], new: dict[str, BaseDistribution], unsampled=()
) -> tuple[list[str], list[str]]:
    """(what Optuna cannot go on from, what it can): one phrase per changed parameter.
    ``unsampled``: names the old recipe searched that no trial has drawn yet (a branch not taken)."""
    refused, noted = [], []
    for name in sorted(old.keys() & new.keys()):
        if old[name] == new[name]:
            continue
        change = f"search.{name} was {_describe(old[name])}, now {_describe(new[name])}"
        try:
            check_distribution_compatibility(old[name], new[name])
        except ValueError:
            refused.append(change)
        else:
            noted.append(change)
    noted += [f"search.{n} is new" for n in sorted(new.keys() - old.keys() - set(unsampled))]
    noted += [f"search.{n} is no longer searched" for n in sorted(old.keys() - new.keys())]
    return refused, noted


def branches(spec: StudySpec) -> dict[str, dict]:
    """Each conditional parameter's branch, by its Optuna name: the setting and when it is searched
    (a study attribute: hpo.analysis.branches groups the report by it, and a resume compares it)."""
    return {
        p.optuna_name: {"setting": p.name, "when": {k.split(".")[1]: list(v) for k, v in p.when}}
        for p in spec.search
        if p.when
    }


def condition_changes(old: dict[str, dict], new: dict[str, dict], sampled) -> list[str]:
    """One phrase per parameter sampled before and searched now whose condition changed (the distribution can be the
    same while the trials it is drawn in are not: momentum under sgd, then under adam)."""

    def words(branch: dict | None) -> str:
        when = (branch or {}).get("when") or {}
        return " and ".join(f"{k} in {list(v)}" for k, v in when.items()) or "always"

    return [
        f"search.{name} was searched when {words(old.get(name))}, now when {words(new.get(name))}"
        for name in sorted(sampled)
        if words(old.get(name)) != words(new.get(name))
    ]


def check_resume(spec: StudySpec, study_id: int, storage, *, same_study: bool = False) -> None:
    """Refuse (one line, nothing written) to resume a stored study from another study file, or
    with a search space its trials cannot go on from. Compatible changes are logged as a note."""
    attrs = storage.get_study_user_attrs(study_id)
    stored_file = attrs.get("study_path") or attrs.get("study_file")
    if stored_file and not same_study and not _same_file(stored_file, spec) and attrs.get("study_toml") != spec.source:
        raise HpoError(
            f"study {spec.name!r} in the store came from {stored_file}, not {study_path(spec)}: two studies of one "
            f"name; pass --study-name NEW to start another study, or --same-study if this file continues that study"
        )
    trials = storage.get_all_trials(study_id, deepcopy=False)
    old = stored_space(trials)
    new = {p.optuna_name: distribution(p) for p in spec.search}
    before = attrs.get("branches") or {}
    refused, noted = space_changes(old, new, unsampled=before)
    noted += condition_changes(before, branches(spec), old.keys() & new.keys())
    if refused:
        raise HpoError(
            f"study {spec.name!r} cannot go on with this search space: {'; '.join(refused)} "
            f"(Optuna cannot mix the two in one study); pass --study-name NEW to start a new study with it"
        )
    if noted and old:  # nothing sampled yet: nothing changed
        log.info(f"note: the search space changed from trial #{len(trials)} on: {'; '.join(noted)}")


def _same_file(stored: str, spec: StudySpec) -> bool:
    return Path(stored).resolve() == Path(study_path(spec))


def recipes(study: optuna.Study, spec: StudySpec, trials_so_far: int) -> list[dict]:
    """The stored versions plus this run's, when it differs from the last (file, text or --set)."""
    attrs = study.user_attrs
    versions = list(attrs.get(RECIPES_ATTR) or [])
    if not versions and attrs.get("study_toml") and trials_so_far:  # a study stored before versions were kept
        versions.append(
            {
                "from_trial": 0,
                "study_file": attrs.get("study_file"),
                "study_toml": attrs["study_toml"],
                "overrides": list(attrs.get("overrides") or []),
            }
        )
    mine = {
        "from_trial": trials_so_far,
        "study_file": study_path(spec),
        "study_toml": spec.source,
        "overrides": list(spec.overrides),
    }
    nets = net_files(spec)
    if nets:
        mine["nets"] = nets
    last = versions[-1] if versions else None
    if last is None or any(last.get(k) != mine.get(k) for k in RECIPE_KEYS):
        if last is not None and trials_so_far:
            _note_changed_nets(last.get("nets") or {}, mine.get("nets") or {}, trials_so_far)
        versions.append(mine)
    return versions


def net_files(spec: StudySpec) -> dict[str, str]:
    """Your own nets' files (every one the study can build) and their sha256: part of the recipe."""
    names = {config.model.name for _, config in variants(spec) if net_reference(config.model.name)}
    if not names:
        return {}
    from hpo.training import custom  # torch: only a study with its own net pays for it here (hpo.report need not)

    return dict(sorted((s.path, s.sha256) for s in map(custom.source, names)))


def _note_changed_nets(old: dict[str, str], new: dict[str, str], trials_so_far: int) -> None:
    changed = [
        f"{path} (sha256 {old[path][:12]} -> {new[path][:12]})" for path in new if old.get(path, new[path]) != new[path]
    ]
    if changed:
        log.info(
            f"note: your net's file changed: {', '.join(changed)}; trials from #{trials_so_far} on train the new one"
        )
