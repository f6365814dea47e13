"""The Optuna side of a study: storage, sampler, pruner, artifact store, create or resume."""
from __future__ import annotations

import contextlib
import inspect
import sqlite3
import warnings
from pathlib import Path

import optuna
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from hpo.config import StudySpec
from hpo.errors import HpoError, unknown

DEFAULT_STORAGE = "sqlite:///storage/hpo.db"  # one file for every study: one dashboard shows all
ARTIFACT_DIR = Path("models")  # Optuna's artifact store: trained weights
HEARTBEAT_S = 10  # a worker killed with -9 stops beating; its trial is failed after the grace period
GRACE_S = 30
MAX_RETRY = 2  # a trial failed by a lost worker is queued again with the same parameters, at most twice

# Heartbeats and the retry callback are marked experimental; they are what makes kill -9 safe.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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
            raise HpoError(f"unknown option {what}.{key} for {what} {name!r}; it accepts: {', '.join(known) or 'no options'}")


def grid_space(spec: StudySpec) -> dict[str, list]:
    space = {}
    for p in spec.search:
        if p.choices:
            space[p.name] = list(p.choices)
        elif p.is_int and not p.log:
            space[p.name] = list(range(p.low, p.high + 1, p.step or 1))
        else:
            raise HpoError(
                f"sampler.name = \"grid\" needs a finite search space, but search.{p.name} is a continuous range; "
                f"list the values instead, e.g. {p.name} = {{ choices = [{p.low}, {p.high}] }}"
            )
    if not space:
        raise HpoError("sampler.name = \"grid\" needs at least one parameter under [search]")
    return space


def make_sampler(spec: StudySpec, seed: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded. ``seed`` differs per resume and per worker (see ``sampler_seed``)."""
    s = spec.sampler
    if s.name not in SAMPLERS:
        raise unknown("sampler.name", s.name, SAMPLERS)
    _check_options("sampler", s.name, SAMPLERS[s.name], s.options)
    args = (grid_space(spec),) if s.name == "grid" else ()
    try:
        return SAMPLERS[s.name](*args, seed=seed, **s.options)
    except (TypeError, ValueError) as e:
        raise HpoError(f"sampler {s.name!r}: {e}") from None


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    if p.name not in PRUNERS:
        raise unknown("pruner.name", p.name, PRUNERS)
    _check_options("pruner", p.name, PRUNERS[p.name], p.options)
    try:
        return PRUNERS[p.name](**{**PRUNER_DEFAULTS.get(p.name, {}), **p.options})
    except (TypeError, ValueError) as e:
        raise HpoError(f"pruner {p.name!r}: {e}") from None


def sampler_seed(study_seed: int, trials_so_far: int, worker: int = 0) -> int:
    """Fresh runs of one study file with one seed propose the same parameters; a resumed run or a
    second worker must not replay the same proposals, so the store's trial count and the worker
    index are mixed in."""
    return (study_seed * 1_000_003 + trials_so_far * 7919 + worker * 104_729) % 2**31


def sqlite_path(url: str) -> Path | None:
    """The file of a plain SQLite URL (None for other stores, memory, or URLs with options)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:" and "?" not in url:
        return Path(url[len("sqlite:///"):])
    return None


def open_storage(url: str, *, create: bool) -> RDBStorage:
    """An RDB store with heartbeats (lost workers' trials are failed and retried). A missing SQLite
    file is an error unless ``create``: Optuna would silently create an empty one."""
    path = sqlite_path(url)
    engine_kwargs: dict = {}
    if path is not None:
        if not path.exists():
            if not create:
                raise HpoError(f"no store at {path}: run `python -m hpo.run --study NAME` first, or pass --storage")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise HpoError(f"cannot create the store folder {path.parent}: {e.strerror}; pass --storage elsewhere") from None
        # Several local workers write one file: wait for the lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
        if create:  # WAL lets readers (dashboard, report) work while workers write; it persists in
            # the file, so it is set once, before any connection of Optuna's opens it
            try:
                with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.Error as e:
                raise HpoError(f"cannot open the store {path}: {e}") from None
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True}  # a restarted server leaves dead pooled connections
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
    except HpoError:
        raise
    except Exception as e:  # sqlalchemy's errors for bad URLs, unreachable servers, read-only files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HpoError(f"cannot open the store {redact(url)}: {first}") from None
    return storage


def redact(url: str) -> str:
    """A URL fit to print: no password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def artifact_store(folder: Path = ARTIFACT_DIR) -> optuna.artifacts.FileSystemArtifactStore:
    folder.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(folder)


def study_attrs(spec: StudySpec) -> dict:
    b = spec.base
    return {
        "description": spec.description,
        "study_file": str(spec.folder / "study.toml"),
        "study_toml": spec.source,
        "seed": spec.seed,
        "metrics": list(spec.objective.metrics),
        "epochs": b.train.epochs,
        "dataset": b.data.dataset,
        "model": b.model.name,
    }


def create_or_resume(spec: StudySpec, storage: RDBStorage, worker: int = 0) -> optuna.Study:
    """The study named after the folder: created on the first run, resumed after. Its sampler is
    seeded from the study seed; the direction(s) must match what the store holds."""
    try:
        return _create_or_resume(spec, storage, worker)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
        cause = e.__cause__ or e  # Optuna wraps the database's own words
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise HpoError(f"cannot open the store {redact(storage.url)} for writing: {first}") from None


def _create_or_resume(spec: StudySpec, storage: RDBStorage, worker: int) -> optuna.Study:
    directions = spec.objective.directions
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    if spec.name in existing and list(map(_dir_name, existing[spec.name].directions)) != directions:
        raise HpoError(
            f"study {spec.name!r} in the store optimises {list(map(_dir_name, existing[spec.name].directions))}, "
            f"the study file asks for {directions}; use another --storage or a new study folder"
        )
    trials_so_far = existing[spec.name].n_trials if spec.name in existing else 0
    pruner = make_pruner(spec)
    sampler = make_sampler(spec, sampler_seed(spec.seed, trials_so_far, worker))
    study = optuna.create_study(
        study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner,
        directions=directions, load_if_exists=True,
    )
    if spec.name not in existing or worker == 0:
        for key, value in study_attrs(spec).items():
            study.set_user_attr(key, value)
    return study


def _dir_name(direction) -> str:
    return "maximize" if direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
