"""The Optuna side of a study: sampler and pruner by name, create or resume (the store is hpo.storage.store's)."""

from __future__ import annotations

import inspect
import math

import optuna
import sqlalchemy.exc
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage

from hpo.config import STUDY_FILE, StudySpec
from hpo.errors import HpoError, closest
from hpo.search.recipe import RECIPES_ATTR, branches, check_resume, recipes, study_path
from hpo.search.window import WindowPruner, WindowSampler
from hpo.storage import faults
from hpo.storage.store import redact

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "qmc": optuna.samplers.QMCSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "patient": optuna.pruners.PatientPruner,
    "none": optuna.pruners.NopPruner,
}
# Arguments Optuna requires that a study file may leave out. "patient" alone stops a trial whose
# validation accuracy has not improved for `patience` epochs (it wraps no other pruner).
PRUNER_DEFAULTS = {"percentile": {"percentile": 25.0}, "patient": {"wrapped_pruner": None, "patience": 2}}


def _check_options(what: str, name: str, cls, options: dict) -> None:
    reserved = ("seed", "search_space", "wrapped_pruner")  # filled in by hpo, not the study file
    known = [p for p in inspect.signature(cls).parameters if p not in reserved]
    for key in options:
        if key not in known:
            raise HpoError(
                f"unknown option {what}.{key} for {what} {name!r}; it accepts: {', '.join(known) or 'no options'}"
            )
    _check_option_types(what, name, inspect.signature(cls).parameters, options)


def _check_option_types(what: str, name: str, params, options: dict) -> None:
    """An option of the kind its default is (Optuna checks few at construction: a float
    n_startup_trials would fail every trial instead)."""
    for key, value in options.items():
        default = params[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            continue
        if not ok:
            kind = (
                "a finite number"
                if isinstance(default, float) and not isinstance(default, bool)
                else type(default).__name__
            )
            raise HpoError(f"{what}.{key} for {what} {name!r} must be {kind} (default {default!r}), got {value!r}")


def grid_space(spec: StudySpec) -> dict[str, list]:
    space = {}
    for p in spec.search:
        if p.when:
            raise HpoError(
                f'sampler.name = "grid" cannot search conditional parameters (search.{p.name} has `when`); '
                f"use tpe or random"
            )
        if p.choices:
            space[p.name] = list(p.choices)
        elif p.is_int and not p.log:
            space[p.name] = list(range(p.low, p.high + 1, p.step or 1))
        else:
            raise HpoError(
                f'sampler.name = "grid" needs a finite search space, but search.{p.name} is a continuous range; '
                f"list the values instead, e.g. {p.name} = {{ choices = [{p.low}, {p.high}] }}"
            )
    if not space:
        raise HpoError('sampler.name = "grid" needs at least one parameter under [search]')
    return space


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded. ``seed`` differs per resume and per worker (see ``sampler_seed``)."""
    s = spec.sampler
    _check_options("sampler", s.name, SAMPLERS[s.name], s.options)
    args = (grid_space(spec),) if s.name == "grid" else ()
    try:
        return SAMPLERS[s.name](*args, seed=seed, **s.options)
    except (TypeError, ValueError) as e:
        raise HpoError(f"sampler {s.name!r}: {e}") from None


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    _check_options("pruner", p.name, PRUNERS[p.name], p.options)
    try:
        return PRUNERS[p.name](**{**PRUNER_DEFAULTS.get(p.name, {}), **p.options})
    except (TypeError, ValueError) as e:
        raise HpoError(f"pruner {p.name!r}: {e}") from None


def sampler_seed(study_seed: int, trials_so_far: int, worker: int = 0) -> int:
    """Fresh runs of one study file with one seed propose the same parameters; a resumed run or a
    second worker must not replay the same proposals, so the store's trial count and the worker
    index are mixed in. Under a window the sampler of trial i is seeded with (study seed, i) alone."""
    return (study_seed * 1_000_003 + trials_so_far * 7919 + worker * 104_729) % 2**31


def searchers(spec: StudySpec, seed: int) -> tuple[BaseSampler, BasePruner]:
    """The study's sampler (seeded with ``seed``) and pruner. Under a window both decide from the
    trials of index <= i - window only (hpo.search.window), each trial's sampler seeded from the
    study seed and its index, so ``seed`` is not used."""
    if spec.window:
        sampler = WindowSampler(lambda index: make_sampler(spec, sampler_seed(spec.seed, index)), spec.window)
        return sampler, WindowPruner(lambda: make_pruner(spec))
    return make_sampler(spec, seed), make_pruner(spec)


def study_attrs(spec: StudySpec) -> dict:
    b = spec.base
    return {
        "description": spec.description,
        "study_file": str(spec.folder / STUDY_FILE),
        "study_toml": spec.source,
        "study_path": study_path(spec),  # who the study is: hpo.search.recipe refuses another file of the same name
        "overrides": list(spec.overrides),
        "seed": spec.seed,
        "metrics": list(spec.objective.metrics),
        "epochs": b.train.epochs,
        "dataset": b.data.dataset,
        "model": b.model.name,
        # conditional parameters (hpo.analysis.branches groups the report by them): Optuna name -> its branch
        "branches": branches(spec),
    }


def create_or_resume(spec: StudySpec, storage: RDBStorage, worker: int = 0, same_study: bool = False) -> optuna.Study:
    """The study named after the folder: created on the first run, resumed after. Its sampler is
    seeded from the study seed; the direction(s) must match what the store holds, and the study
    file and search space must be ones the stored study can go on from (hpo.search.recipe)."""
    try:
        return _create_or_resume(spec, storage, worker, same_study)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
        faults.judge(e, f"cannot open the store {redact(storage.url)} for writing")


def load_existing(storage: RDBStorage, name: str, flag: str = "", missing: str = "") -> optuna.Study:
    """The study ``name`` in an opened store, never created. A missing one is one line: ``missing``
    where the caller words it itself, else the store, the closest name and the names there, after
    ``flag`` (the option that asked, e.g. "--warm-start: ")."""
    names = sorted(optuna.get_all_study_names(storage))
    if name not in names:
        raise HpoError(
            missing
            or f"{flag}no study {name!r} in {redact(storage.url)}{closest(name, names)}; "
            f"studies there: {', '.join(names) or 'none'}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def _create_or_resume(spec: StudySpec, storage: RDBStorage, worker: int, same_study: bool = False) -> optuna.Study:
    directions = spec.objective.directions
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if spec.name in existing and list(map(_dir_name, existing[spec.name].directions)) != directions:
        raise HpoError(
            f"study {spec.name!r} in the store optimises {list(map(_dir_name, existing[spec.name].directions))}, "
            f"the study file asks for {directions}; use another --storage or a new study folder"
        )
    if spec.name in existing:  # before anything is written
        check_resume(spec, storage.get_study_id_from_name(spec.name), storage, same_study=same_study)
    trials_so_far = existing[spec.name].n_trials if spec.name in existing else 0
    sampler, pruner = searchers(spec, sampler_seed(spec.seed, trials_so_far, worker))
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        directions=directions,
        load_if_exists=True,
    )
    if spec.name not in existing or worker == 0:
        versions = recipes(study, spec, trials_so_far)
        for key, value in {**study_attrs(spec), RECIPES_ATTR: versions}.items():
            study.set_user_attr(key, value)
        study.set_metric_names(list(spec.objective.metrics))  # the dashboard shows "val_acc", not "Objective 0"
    return study


def _dir_name(direction) -> str:
    return "maximize" if direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
