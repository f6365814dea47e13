"""The study store: open an Optuna RDB storage (SQLite or PostgreSQL) safely, with heartbeats,
and survive a database that goes away for a while. Samplers, pruners and studies are hpo.search.study's."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
import warnings
from datetime import datetime
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.dialects
import sqlalchemy.exc
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import CreateEnginePlugin

from hpo.errors import HpoError, reason
from hpo.records import STATUS, WORKER_ATTR
from hpo.storage import faults, schema
from hpo.storage.schema import redact

DEFAULT_STORAGE = "sqlite:///storage/hpo.db"  # one file for every study: one dashboard shows all
ARTIFACT_DIR = Path("models")  # Optuna's artifact store: trained weights
HEARTBEAT_S = 10  # a worker killed with -9 stops beating; its trial is failed after the grace period
GRACE_S = 30
MAX_RETRY = 2  # a trial failed by a lost worker is queued again with the same parameters, at most twice
# The three can be changed per process through the environment (tests use seconds, not minutes).
HEARTBEAT_ENV, GRACE_ENV, STORE_WAIT_ENV = "HPO_HEARTBEAT_S", "HPO_GRACE_S", "HPO_STORE_WAIT_S"
STORAGE_ENV = "HPO_STORAGE"  # hpo.run's --storage when not given: how workers get a URL with a password (never in argv)

INSERT_KEY = "hpo:insert"  # system attr: finds a queued trial whose INSERT committed unheard

# Heartbeats and the retry callback are marked experimental; they are what makes kill -9 safe.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
log = logging.getLogger(__name__)  # waits and retries; the entry points print these lines (hpo.cli)


def worker_tag(pid: int | None = None) -> str:
    """Each trial's "worker" attr, ``host:pid``: who ran it (and, for hpo.runs.workers, who lost it)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def sqlite_path(url: str) -> Path | None:
    """The database file a plain SQLite URL names; None for other stores and for URLs with
    options (``?mode=ro&uri=true``), whose file SQLite itself resolves."""
    parsed = schema.parse(url)  # a malformed port: one line, not make_url's ValueError
    if parsed is None or parsed.get_backend_name() != "sqlite" or parsed.query:
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
        raise HpoError(
            f"${GRACE_ENV} ({grace} s) must be longer than ${HEARTBEAT_ENV} ({heartbeat} s), "
            f"or live trials are failed as lost; e.g. ${GRACE_ENV} = {3 * heartbeat}"
        )
    # Is it an Optuna store? Asked before Optuna, which makes a store of whatever it opens; for
    # PostgreSQL below, through the store's own engine options (it waits for an absent server).
    pg = url.startswith("postgresql")
    new = False if pg else schema.check(url, create=create)
    wait = env_seconds(STORE_WAIT_ENV, grace)
    if path is not None:
        engine_kwargs = _prepare_sqlite(path, create)
    elif pg:
        engine_kwargs = _postgresql_kwargs(url, wait)
    else:
        engine_kwargs = {}
    if pg:  # inside the wait: a server can take the connection and drop it at the first statement
        storage, new = _connect(url, engine_kwargs, heartbeat, grace, wait, check=create)
    else:
        storage, _ = _connect(url, engine_kwargs, heartbeat, grace, wait)
    if path is not None:
        mode = "BEGIN IMMEDIATE" if create else "BEGIN"
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql(mode))
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
            raise HpoError(
                f"cannot create the store folder {path.parent}: {e.strerror}; pass --storage elsewhere"
            ) from None
    if create:  # WAL lets readers (dashboard, report) work while workers write; it persists in
        # the file, so it is set once, before any connection of Optuna's opens it
        try:
            with contextlib.closing(sqlite3.connect(path, timeout=60)) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as e:
            raise HpoError(f"cannot open the store {path}: {e}") from None
    # isolation_level=None: the BEGIN is ours, not the sqlite3 module's (which skips it before SELECTs).
    return {"connect_args": {"timeout": 60, "isolation_level": None}}


def _postgresql_kwargs(url: str, wait: int) -> dict:
    """pre_ping: a restarted server leaves dead pooled connections; the ping finds them before use.
    connect_timeout: an unreachable host fails in seconds, not at the kernel's TCP timeout;
    application_name: pg_stat_activity shows which process holds which connection.
    A lost server is waited for (up to ``wait`` s) on every new connection, the first one included,
    rather than failing the worker: a restart or a network blip costs seconds, not trials
    (WaitForServer, installed before the engine's first connection)."""
    defaults = {"connect_timeout": 10, "application_name": f"hpo pid {os.getpid()}"}
    return {
        "pool_pre_ping": True,
        "connect_args": {k: v for k, v in defaults.items() if k not in url},
        "plugins": [WaitForServer.NAME],
        "hpo_wait_s": wait,
        "hpo_name": redact(url),
    }


def _connect(
    url: str, engine_kwargs: dict, heartbeat: int, grace: int, wait: int, check: bool | None = None
) -> tuple[Store, bool]:
    """Optuna's storage, opened (engine, tables, schema version) within the wait. ``check``: first
    ask whether it is an Optuna store (schema.check, create=check), in the same wait; with it,
    whether the store is new."""

    def attempt() -> tuple[Store, bool]:
        new = schema.check(url, create=check, engine_kwargs=engine_kwargs) if check is not None else False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = Store(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            )
        storage.wait_s, storage.name = wait, redact(url)
        return storage, new

    return _opening(url, wait, attempt)


def _opening(url: str, wait: int, attempt):
    """``attempt()`` (a step of opening the store), again after a cut for up to ``wait`` s, then
    ``StoreLost``; what waiting would not change is one line (HpoError)."""
    races, deadline = 0, None
    while True:
        try:
            return attempt()
        except HpoError:
            raise
        except Exception as e:  # sqlalchemy's errors for bad URLs, unreachable servers, read-only files
            # Workers started at once on a new database race to create Optuna's tables; the loser
            # finds them made a moment later.
            if races < 2 and isinstance(e, sqlalchemy.exc.SQLAlchemyError) and _lost_create_race(e):
                time.sleep(0.5 + races)
                races += 1
                continue
            kind = faults.kind(e)
            if kind == faults.LOST:
                raise
            if kind != faults.TRANSIENT:
                raise HpoError(f"cannot open the store {redact(url)}: {reason(e)}") from None
            if deadline is None:
                deadline = time.monotonic() + wait
                log.warning(f"store {redact(url)} cut off while opening ({reason(e)}); retrying for up to {wait} s")
            if time.monotonic() >= deadline:
                raise faults.StoreLost(
                    f"lost the store {redact(url)}: out of reach for {wait} s ({reason(e)})"
                ) from None
            time.sleep(0.5)


def will_create(url: str) -> bool:
    """Whether a writer opening ``url`` would create the store (hpo.run --confirm asks before it
    opens one). Nothing is created; a server is asked within the store's wait, as opening does."""
    if not url.startswith("postgresql"):
        return schema.check(url, create=True)
    wait = env_seconds(STORE_WAIT_ENV, env_seconds(GRACE_ENV, GRACE_S))
    return _opening(url, wait, lambda: schema.check(url, create=True, engine_kwargs=_postgresql_kwargs(url, wait)))


def _lost_create_race(e: Exception) -> bool:
    text = str(e).lower()
    return isinstance(e, sqlalchemy.exc.IntegrityError) or "already exists" in text or "duplicate key" in text


class WaitForServer(CreateEnginePlugin):
    """SQLAlchemy engine plugin: every new PostgreSQL connection, from the first, waits out a
    server that is away (faults.TRANSIENT) for up to ``hpo_wait_s`` seconds, then raises
    ``StoreLost``. A connection a live server refuses (no such database, role, password) is
    ``StoreSetupError`` at once. A plugin, because Optuna connects inside its constructor."""

    NAME = "hpo_wait_for_server"

    def __init__(self, url, kwargs):
        self.seconds, self.name = kwargs.pop("hpo_wait_s"), kwargs.pop("hpo_name")

    def update_url(self, url):
        return url  # its settings come as engine arguments, not in the URL

    def engine_created(self, engine) -> None:
        sqlalchemy.event.listen(engine, "do_connect", self.connect)

    def connect(self, dialect, conn_rec, cargs, cparams):
        deadline, delay = None, 0.25
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.Error as e:
                error = e
            if faults.kind(error) != faults.TRANSIENT:
                raise faults.StoreSetupError(f"cannot open the store {self.name}: {reason(error)}") from None
            if error.sqlstate is None and faults.server_answers(cparams):
                # libpq gives no SQLSTATE for a refused connection. The server answers a ping, so
                # it refused us for good, or it has just come back: one more try tells which.
                try:
                    return dialect.connect(*cargs, **cparams)
                except dialect.loaded_dbapi.Error as again:
                    if again.sqlstate is None and faults.server_answers(cparams):
                        raise faults.StoreSetupError(f"cannot open the store {self.name}: {reason(again)}") from None
                    error = again
            if deadline is None:
                deadline = time.monotonic() + self.seconds
                log.warning(f"store {self.name} unreachable ({reason(error)}); retrying for up to {self.seconds} s")
            if time.monotonic() + delay > deadline:
                raise faults.StoreLost(
                    f"lost the store {self.name}: out of reach for {self.seconds} s ({reason(error)})"
                ) from None
            time.sleep(delay)
            delay = min(2 * delay, 2.0)


sqlalchemy.dialects.plugins.register(WaitForServer.NAME, __name__, "WaitForServer")


def store_error(e: BaseException) -> bool:
    """True for the database's own failures (lost connection, server gone), as Optuna raises them."""
    return faults.kind(e) is not None


NOT_APPLIED = object()  # what an ``applied`` check returns when the write did not commit


def _patient(method):
    """A storage method whose failure on a cut connection is retried within the wait: reads,
    and writes that are idempotent (upserts, inserts that a unique key makes run once)."""

    @functools.wraps(method)
    def patient(self, *args, **kwargs):
        return self.patiently(lambda: method(self, *args, **kwargs))

    return patient


class Store(RDBStorage):
    """Optuna's RDB storage plus what long runs on a shared database lack. Every call that loses
    its connection (or meets a deadlock, a serialization failure, a server restart) runs again on a
    new one, for up to ``wait_s`` seconds (new connections wait for the server: WaitForServer);
    then ``StoreLost``. Writes that are not idempotent (a new trial, a state change) first check
    whether the cut write committed after all, so that nothing is written twice. A heartbeat that
    cannot be written is retried at the next beat instead of ending the heartbeat thread (whose
    trial would then be failed as lost while it still trains)."""

    wait_s, name = 10, "the store"
    stop_when_lost = False  # a worker stops at once after one StoreLost (hpo.run); a supervisor asks again
    lost: faults.StoreLost | None = None

    def patiently(self, attempt, applied=None, sticky: bool = True):
        """``attempt()``, retried on transient faults for up to ``wait_s`` seconds; before a retry,
        ``applied()`` (when given) returns the result of a write that committed after all, else NOT_APPLIED."""
        if self.lost is not None and self.stop_when_lost:
            raise self.lost
        deadline, delay = None, 0.25
        while True:
            try:
                return attempt()
            except Exception as e:
                kind = faults.kind(e)
                if kind == faults.LOST and sticky:
                    self.lost = next(x for x in faults._chain(e) if isinstance(x, faults.StoreLost))
                if kind != faults.TRANSIENT:
                    raise
                if deadline is None:
                    deadline = time.monotonic() + self.wait_s
                    log.warning(f"store {self.name} cut off ({reason(e)}); retrying for up to {self.wait_s} s")
                if time.monotonic() + delay > deadline:
                    lost = faults.StoreLost(
                        f"lost the store {self.name}: out of reach for {self.wait_s} s ({reason(e)})"
                    )
                    if sticky:
                        self.lost = lost
                    raise lost from None
            time.sleep(delay)
            delay = min(2 * delay, 2.0)
            if applied is not None:
                done = self.patiently(applied, sticky=sticky)
                if done is not NOT_APPLIED:
                    return done

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.patiently(lambda: RDBStorage.record_heartbeat(self, trial_id), sticky=False)
        except Exception as e:
            if not store_error(e):
                raise
            log.warning(
                f"heartbeat of trial id {trial_id} not written ({reason(e)}); "
                f"trying again in {self.heartbeat_interval} s"
            )

    # ------------------------------------------------ writes that must not run twice

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """A new trial, written once (Optuna's own retry could write it twice). A cut commit is
        looked up by what makes the trial unique: its start time (taken here, to the microsecond),
        the lost trial that a queued retry replaces, or a key of its own for other queued trials
        (enqueue_trial, add_trial). A RUNNING trial is born claimed (``_claim``). (Optuna's cached
        storage calls this one.)"""
        if template_trial is None:  # ask(): a RUNNING trial, as Optuna makes it
            template = FrozenTrial(
                number=-1,
                state=TrialState.RUNNING,
                value=None,
                datetime_start=datetime.now(),
                datetime_complete=None,
                params={},
                distributions={},
                user_attrs={},
                system_attrs={},
                intermediate_values={},
                trial_id=-1,
            )
            stored = models.TrialModel(datetime_start=template.datetime_start)  # as Optuna stores it (UTC)
            key = models.TrialModel._datetime_start_utc == stored._datetime_start_utc
        else:
            template = copy.deepcopy(template_trial)
            if "retry_history" in template.system_attrs:  # a retry queued by the heartbeat callback:
                attr, value = "retry_history", template.system_attrs["retry_history"]  # the lost trials it replaces
            else:  # enqueue_trial, add_trial: a key of its own
                attr, value = INSERT_KEY, uuid.uuid4().hex
                template.system_attrs[INSERT_KEY] = value
            key = models.TrialModel.trial_id.in_(
                sqlalchemy.select(models.TrialSystemAttributeModel.trial_id)
                .where(models.TrialSystemAttributeModel.key == attr)
                .where(models.TrialSystemAttributeModel.value_json == json.dumps(value))
            )

        def insert() -> tuple[int, int]:
            with _create_scoped_session(self.scoped_session) as session:
                models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
                trial = self._get_prepared_new_trial(study_id, template, session)
                if template.state == TrialState.RUNNING:
                    self._claim(session, trial.trial_id)
                return trial.trial_id, trial.number

        def applied():
            with _create_scoped_session(self.scoped_session) as session:
                found = (
                    session.query(models.TrialModel.trial_id, models.TrialModel.number)
                    .filter(models.TrialModel.study_id == study_id, key)
                    .first()
                )
                return tuple(found) if found else NOT_APPLIED

        trial_id, number = self.patiently(insert, applied)
        frozen = copy.deepcopy(template)
        frozen.number, frozen._trial_id = number, trial_id
        if frozen.state == TrialState.RUNNING:
            frozen.user_attrs = {**frozen.user_attrs, WORKER_ATTR: worker_tag()}
        return frozen

    def _claim(self, session, trial_id: int) -> None:
        """In the transaction that makes a trial RUNNING: its first heartbeat and its worker. Optuna
        writes the first beat later, from its heartbeat thread, and never fails a trial that has
        none; a worker that dies (or loses the store) in between would leave it RUNNING for good.
        Claimed at birth, such a trial goes stale after the grace period, is failed as lost and
        retried, and the supervisor knows whose it was."""
        beat = models.TrialHeartbeatModel.where_trial_id(trial_id, session, for_update=True)
        if beat is None:
            session.add(models.TrialHeartbeatModel(trial_id=trial_id))  # stamped now() by the server
        else:
            beat.heartbeat = session.execute(sqlalchemy.func.now()).scalar()
        tag = json.dumps(worker_tag())
        attr = (
            session.query(models.TrialUserAttributeModel).filter_by(trial_id=trial_id, key=WORKER_ATTR).one_or_none()
        )  # a retry inherits its lost run's
        if attr is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial_id, key=WORKER_ATTR, value_json=tag))
        else:
            attr.value_json = tag

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        if state == TrialState.RUNNING:  # popping a queued trial: our own start time says if we got it
            stamp = datetime.now()
            return self.patiently(lambda: self._pop(trial_id, stamp), lambda: self._popped(trial_id, stamp))
        return self.patiently(
            lambda: RDBStorage.set_trial_state_values(self, trial_id, state, values),
            lambda: self._finished(trial_id, state),
        )

    def _pop(self, trial_id: int, stamp: datetime) -> bool:
        # Optuna's WAITING -> RUNNING step, with the start time chosen here.
        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            self.check_trial_is_updatable(trial_id, trial.state)
            if trial.state != TrialState.WAITING:
                return False
            trial.state, trial.datetime_start = TrialState.RUNNING, stamp
            self._claim(session, trial_id)
        return True

    def _popped(self, trial_id: int, stamp: datetime):
        trial = RDBStorage.get_trial(self, trial_id)
        if trial.state == TrialState.WAITING:
            return NOT_APPLIED
        return trial.state == TrialState.RUNNING and trial.datetime_start == stamp

    def _finished(self, trial_id: int, state: TrialState):
        trial = RDBStorage.get_trial(self, trial_id)
        if trial.state == TrialState.RUNNING:
            return NOT_APPLIED
        if trial.state == state and state != TrialState.FAIL:
            return True  # only the trial's own worker completes or prunes it
        # FAIL is also what the stale check writes: not knowing whose it was, report it as another
        # worker's (False), so no second retry is queued for it. A different end: Optuna's error.
        self.check_trial_is_updatable(trial_id, trial.state)
        return False


for _name in (
    "get_all_studies",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "_get_best_trial_id",
    "get_n_trials",
    "get_study_directions",
    "create_new_study",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_system_attrs",
    "get_study_user_attrs",
    "get_trial",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "get_trial_params",
    "get_trial_system_attrs",
    "get_trial_user_attrs",
    "_get_stale_trial_ids",
    "set_study_system_attr",
    "set_study_user_attr",
    "set_trial_intermediate_value",
    "set_trial_system_attr",
    "set_trial_user_attr",
    "set_trial_param",
    "_set_trial_param",
    "delete_study",
):
    if hasattr(Store, _name):
        setattr(Store, _name, _patient(getattr(Store, _name)))


def is_lost(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial failed by the heartbeat check: its worker died (kill -9, a lost node) or lost the
    store mid-trial. hpo.search.objective records a status on every way a trial of its own ends, so a
    failed trial without one never reached that point. Its retry (same parameters and seed) is
    queued as a new trial; the lost one stays in the store as an extra FAIL record."""
    return trial.state == optuna.trial.TrialState.FAIL and STATUS not in trial.user_attrs


def artifact_store(folder: Path = ARTIFACT_DIR) -> optuna.artifacts.FileSystemArtifactStore:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HpoError(
            f"cannot create the artifact folder {folder} for the weights: {e.strerror}; "
            f"run where it can be created, or pass --keep none"
        ) from None
    return optuna.artifacts.FileSystemArtifactStore(folder)
