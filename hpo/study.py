"""The Optuna side of a study: storage, sampler, pruner, artifact store, create or resume."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from hpo.cli import say
from hpo.config import StudySpec
from hpo.errors import HpoError, reason, unknown

DEFAULT_STORAGE = "sqlite:///storage/hpo.db"  # one file for every study: one dashboard shows all
ARTIFACT_DIR = Path("models")  # Optuna's artifact store: trained weights
HEARTBEAT_S = 10  # a worker killed with -9 stops beating; its trial is failed after the grace period
GRACE_S = 30
MAX_RETRY = 2  # a trial failed by a lost worker is queued again with the same parameters, at most twice
# The three can be changed per process through the environment (tests use seconds, not minutes).
HEARTBEAT_ENV, GRACE_ENV, STORE_WAIT_ENV = "HPO_HEARTBEAT_S", "HPO_GRACE_S", "HPO_STORE_WAIT_S"

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
    """The database file a plain SQLite URL names; None for other stores and for URLs with
    options (``?mode=ro&uri=true``), whose file SQLite itself resolves."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.query:
        return None
    if parsed.host:  # sqlite://storage/hpo.db: the folder went into the host part
        raise HpoError(f"malformed SQLite URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if parsed.database in (None, "", ":memory:"):
        raise HpoError(f"{url!r} is an in-memory store that nothing else can see: give a file, e.g. {DEFAULT_STORAGE}")
    return Path(parsed.database)


def env_seconds(name: str, default: int) -> int:
    """A whole number of seconds from the environment, else ``default``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise HpoError(f"${name} must be a whole number of seconds >= 1, got {text!r}")
    return int(text)


def open_storage(url: str, *, create: bool) -> RDBStorage:
    """An RDB store with heartbeats (lost workers' trials are failed and retried). A missing SQLite
    file is an error unless ``create``: Optuna would silently create an empty one.

    ``create`` is also the writers' mode (hpo.run); ``create=False`` opens for reading (hpo.report).
    On SQLite, writers begin every transaction with BEGIN IMMEDIATE: it waits for the write lock
    (60 s busy timeout) instead of failing with "database is locked", and it makes Optuna's
    read-then-write steps atomic across processes (popping a queued trial, failing a stale one),
    which SQLite's default deferred transactions do not: two workers could pop the same queued
    trial. Readers begin a plain (deferred) transaction: one WAL snapshot, never a lock on writers."""
    path = sqlite_path(url)
    engine_kwargs: dict = {}
    heartbeat, grace = env_seconds(HEARTBEAT_ENV, HEARTBEAT_S), env_seconds(GRACE_ENV, GRACE_S)
    if path is not None:
        if not path.exists():
            if not create:
                raise HpoError(f"no store at {path}: run `python -m hpo.run --study NAME` first, or pass --storage")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise HpoError(f"cannot create the store folder {path.parent}: {e.strerror}; pass --storage elsewhere") from None
        # Several local workers write one file: wait for the lock instead of failing at once.
        # isolation_level=None: the BEGIN below is ours, not the sqlite3 module's (which skips it before SELECTs).
        engine_kwargs = {"connect_args": {"timeout": 60, "isolation_level": None}}
        if create:  # WAL lets readers (dashboard, report) work while workers write; it persists in
            # the file, so it is set once, before any connection of Optuna's opens it
            try:
                with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
                    conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.Error as e:
                raise HpoError(f"cannot open the store {path}: {e}") from None
    elif url.startswith("postgresql"):
        # pre_ping: a restarted server leaves dead pooled connections; the ping finds them before use.
        # connect_timeout: an unreachable host fails in seconds, not at the kernel's TCP timeout;
        # application_name: pg_stat_activity shows which process holds which connection.
        defaults = {"connect_timeout": 10, "application_name": f"hpo pid {os.getpid()}"}
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {k: v for k, v in defaults.items() if k not in url}}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = Store(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
            break
        except HpoError:
            raise
        except Exception as e:  # sqlalchemy's errors for bad URLs, unreachable servers, read-only files
            # Workers started at once on a new database race to create Optuna's tables; the loser
            # finds them made a moment later.
            if attempt < 2 and isinstance(e, sqlalchemy.exc.SQLAlchemyError) and _lost_create_race(e):
                time.sleep(0.5 + attempt)
                continue
            raise HpoError(f"cannot open the store {redact(url)}: {reason(e)}") from None
    if path is not None:
        mode = "BEGIN IMMEDIATE" if create else "BEGIN"
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql(mode))
    elif url.startswith("postgresql"):
        # After the first connection worked, a lost server is waited for (up to the grace period)
        # rather than failing the trial in hand: a restart or a network blip costs seconds, not trials.
        _wait_for_server(storage.engine, env_seconds(STORE_WAIT_ENV, grace), redact(url))
    return storage


def _lost_create_race(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in text or "duplicate key" in text


def _wait_for_server(engine, seconds: int, name: str) -> None:
    @sqlalchemy.event.listens_for(engine, "do_connect")
    def connect(dialect, conn_rec, cargs, cparams):
        deadline, delay = time.monotonic() + seconds, 0.5
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.OperationalError as e:
                if time.monotonic() + delay > deadline:
                    raise
                if delay == 0.5:
                    say(f"store {name} unreachable ({reason(e)}); retrying for up to {seconds} s")
                time.sleep(delay)
                delay = min(2 * delay, 2.0)


def store_error(e: BaseException) -> bool:
    """True for the database's own failures (lost connection, server gone), as Optuna raises them."""
    return isinstance(e, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError))


def _disconnected(e: BaseException) -> bool:
    """A connection that died under a statement: the statement did not commit, so it can run again."""
    while e is not None:
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def _again_on_disconnect(method):
    @functools.wraps(method)
    def again(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as e:
            if not _disconnected(e):
                raise
        return method(self, *args, **kwargs)  # on a new connection (which waits for the server)

    return again


class Store(RDBStorage):
    """Optuna's RDB storage plus what long runs on a shared database lack: a read, or an idempotent
    write, that lost its connection mid-statement runs once more on a new one; and a heartbeat
    that cannot be written is retried at the next beat instead of ending the heartbeat thread
    (whose trial would then be failed as lost while it still trains). Writes that are not
    idempotent (new trial, state change, parameter) are not repeated: they fail the trial or the
    worker, and the heartbeats recover it."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if not store_error(e):
                raise
            say(f"heartbeat of trial id {trial_id} not written ({reason(e)}); trying again in {self.heartbeat_interval} s")


for _name in ("get_all_studies", "get_all_trials", "_get_trials", "get_best_trial", "_get_best_trial_id",
              "get_n_trials", "get_study_directions",
              "get_study_id_from_name", "get_study_name_from_id", "get_study_system_attrs", "get_study_user_attrs",
              "get_trial", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
              "get_trial_params", "get_trial_system_attrs", "get_trial_user_attrs", "_get_stale_trial_ids",
              "set_study_system_attr", "set_study_user_attr", "set_trial_intermediate_value", "set_trial_system_attr",
              "set_trial_user_attr"):
    setattr(Store, _name, _again_on_disconnect(getattr(Store, _name)))


def is_lost(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial failed by the heartbeat check: its worker died (kill -9, a lost node) or lost the
    store mid-trial. hpo.objective records a status on every way a trial of its own ends, so a
    failed trial without one never reached that point. Its retry (same parameters and seed) is
    queued as a new trial; the lost one stays in the store as an extra FAIL record."""
    return trial.state == optuna.trial.TrialState.FAIL and "status" not in trial.user_attrs


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
        raise HpoError(f"cannot open the store {redact(storage.url)} for writing: {reason(e)}") from None


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
        study.set_metric_names(list(spec.objective.metrics))  # the dashboard shows "val_acc", not "Objective 0"
    return study


def _dir_name(direction) -> str:
    return "maximize" if direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"
