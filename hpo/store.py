"""The study store: open an Optuna RDB storage (SQLite or PostgreSQL) safely, with heartbeats,
and survive a database that goes away for a while. Samplers, pruners and studies are hpo.study's."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from hpo import schema
from hpo.errors import HpoError, reason

DEFAULT_STORAGE = "sqlite:///storage/hpo.db"  # one file for every study: one dashboard shows all
ARTIFACT_DIR = Path("models")  # Optuna's artifact store: trained weights
HEARTBEAT_S = 10  # a worker killed with -9 stops beating; its trial is failed after the grace period
GRACE_S = 30
MAX_RETRY = 2  # a trial failed by a lost worker is queued again with the same parameters, at most twice
# The three can be changed per process through the environment (tests use seconds, not minutes).
HEARTBEAT_ENV, GRACE_ENV, STORE_WAIT_ENV = "HPO_HEARTBEAT_S", "HPO_GRACE_S", "HPO_STORE_WAIT_S"
STORAGE_ENV = "HPO_STORAGE"  # hpo.run's --storage when not given: how workers get a URL with a password (never in argv)

# Heartbeats and the retry callback are marked experimental; they are what makes kill -9 safe.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)  # waits and retries; the entry points print these lines (hpo.cli)


def sqlite_path(url: str) -> Path | None:
    """The database file a plain SQLite URL names; None for other stores and for URLs with
    options (``?mode=ro&uri=true``), whose file SQLite itself resolves."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    schema.parse(url)  # a malformed port: one line, not make_url's ValueError
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

    ``create`` is also the writers' mode (hpo.run); ``create=False`` opens for reading (hpo.report)."""
    path = sqlite_path(url)
    heartbeat, grace = env_seconds(HEARTBEAT_ENV, HEARTBEAT_S), env_seconds(GRACE_ENV, GRACE_S)
    if grace <= heartbeat:  # a live trial would look lost between two beats: workers would fail each other's
        raise HpoError(f"${GRACE_ENV} ({grace} s) must be longer than ${HEARTBEAT_ENV} ({heartbeat} s), "
                       f"or live trials are failed as lost; e.g. ${GRACE_ENV} = {3 * heartbeat}")
    new = schema.check(url, create=create)  # before Optuna, which makes a store of whatever it opens
    if path is not None:
        engine_kwargs = _prepare_sqlite(path, create)
    elif url.startswith("postgresql"):
        engine_kwargs = _postgresql_kwargs(url)
    else:
        engine_kwargs = {}
    storage = _connect(url, engine_kwargs, heartbeat, grace)
    if path is not None:
        mode = "BEGIN IMMEDIATE" if create else "BEGIN"
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql(mode))
    elif url.startswith("postgresql"):
        # After the first connection worked, a lost server is waited for (up to the grace period)
        # rather than failing the trial in hand: a restart or a network blip costs seconds, not trials.
        _wait_for_server(storage.engine, env_seconds(STORE_WAIT_ENV, grace), redact(url))
    if new:  # a relative-looking sqlite:///tmp/x.db lands under the working directory: say where
        log.info(f"created the store {path.resolve() if path is not None else redact(url)}")
    return storage


def _prepare_sqlite(path: Path, create: bool) -> dict:
    """Check (or create) the file, and the engine options for many local workers on it.

    Writers begin every transaction with BEGIN IMMEDIATE (see ``open_storage``): it waits for the
    write lock (60 s busy timeout) instead of failing with "database is locked", and it makes
    Optuna's read-then-write steps atomic across processes (popping a queued trial, failing a stale
    one), which SQLite's default deferred transactions do not: two workers could pop the same
    queued trial. Readers begin a plain (deferred) transaction: one WAL snapshot, never a lock on writers."""
    if not path.exists():
        if not create:
            raise HpoError(f"no store at {path}: run `python -m hpo.run --study NAME` first, or pass --storage")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HpoError(f"cannot create the store folder {path.parent}: {e.strerror}; pass --storage elsewhere") from None
    if create:  # WAL lets readers (dashboard, report) work while workers write; it persists in
        # the file, so it is set once, before any connection of Optuna's opens it
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise HpoError(f"cannot open the store {path}: {e}") from None
    # isolation_level=None: the BEGIN is ours, not the sqlite3 module's (which skips it before SELECTs).
    return {"connect_args": {"timeout": 60, "isolation_level": None}}


def _postgresql_kwargs(url: str) -> dict:
    """pre_ping: a restarted server leaves dead pooled connections; the ping finds them before use.
    connect_timeout: an unreachable host fails in seconds, not at the kernel's TCP timeout;
    application_name: pg_stat_activity shows which process holds which connection."""
    defaults = {"connect_timeout": 10, "application_name": f"hpo pid {os.getpid()}"}
    return {"pool_pre_ping": True, "connect_args": {k: v for k, v in defaults.items() if k not in url}}


def _connect(url: str, engine_kwargs: dict, heartbeat: int, grace: int) -> "Store":
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return Store(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=grace,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                )
        except HpoError:
            raise
        except Exception as e:  # sqlalchemy's errors for bad URLs, unreachable servers, read-only files
            # Workers started at once on a new database race to create Optuna's tables; the loser
            # finds them made a moment later.
            if attempt < 2 and isinstance(e, sqlalchemy.exc.SQLAlchemyError) and _lost_create_race(e):
                time.sleep(0.5 + attempt)
                attempt += 1
                continue
            raise HpoError(f"cannot open the store {redact(url)}: {reason(e)}") from None


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
                    log.warning(f"store {name} unreachable ({reason(e)}); retrying for up to {seconds} s")
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
            log.warning(f"heartbeat of trial id {trial_id} not written ({reason(e)}); trying again in {self.heartbeat_interval} s")


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
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HpoError(f"cannot create the artifact folder {folder} for the weights: {e.strerror}; "
                       f"run where it can be created, or pass --keep none") from None
    return optuna.artifacts.FileSystemArtifactStore(folder)
