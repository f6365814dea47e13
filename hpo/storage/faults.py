"""Store faults, classified once: what to wait out, and what is a setup error to report.

TRANSIENT: the connection was closed, reset, refused or timed out; the server is starting up or
shutting down; a serialization failure or a deadlock. The caller retries for up to
$HPO_STORE_WAIT_S, then gives up with ``StoreLost`` (exit 75: hpo.runs.workers starts the worker again).
SETUP: anything else the database or its driver says (authentication, no such database or role, a
malformed URL, a missing table): one line, exit 2, no restart, since waiting would not change it.

The decision uses the driver's error classes and SQLSTATE codes, never the message text. libpq
gives no SQLSTATE when a connection cannot be opened, so there ``server_answers`` asks the server
itself (PQping): no answer, or "rejecting connections" (starting up, shutting down), is transient; a
server that accepts connections but refused ours (a wrong database, role or password) is setup.
"""

from __future__ import annotations

import sqlite3

import optuna
import sqlalchemy.exc

from hpo.errors import HpoError, reason

TRANSIENT, SETUP, LOST = "transient", "setup", "lost"
WRAPPER = "wrapper"  # SQLAlchemy's and Optuna's own errors: setup, unless what they wrap says otherwise

# SQLSTATE: class 08 is "connection exception"; the rest are waits, not mistakes.
TRANSIENT_CLASSES = ("08",)
TRANSIENT_CODES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "57P01",  # admin_shutdown (the server is stopping, or our backend was terminated)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (the server is starting up)
    "53300",  # too_many_connections
    "57014",  # query_canceled (statement_timeout, a cancel from the admin)
}
SQLITE_TRANSIENT = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}


class StoreLost(Exception):
    """The store stayed out of reach for longer than the wait: the process stops with exit 75."""


class StoreSetupError(HpoError):
    """The store answered, and the answer will not change by waiting (one line, exit 2)."""


def _chain(error: BaseException):
    """The error and what it wraps: its causes and SQLAlchemy's ``orig`` (the driver's). Not the
    context: an error raised while handling a lost connection is not itself a lost connection."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        orig = getattr(error, "orig", None)
        if isinstance(orig, BaseException) and id(orig) not in seen:
            yield from _chain(orig)
        error = error.__cause__


def kind(error: BaseException) -> str | None:
    """TRANSIENT, SETUP, LOST (a ``StoreLost``: already waited out), or None (not a store error).
    An error that is no store error itself, raised while handling one (Optuna's clean-up code
    failing on the same lost store), is judged by the one it was handling."""
    found = None
    for e in _chain(error):
        k = _own_kind(e)
        if k in (LOST, TRANSIENT, SETUP):
            return k
        found = found or k
    if error.__context__ is not None and error.__cause__ is None:
        # No store error itself, or only a wrapper: the error it was raised while handling decides
        # when that one is a lost store.
        inner = kind(error.__context__)
        if inner in (LOST, TRANSIENT):
            return inner
    return SETUP if found == WRAPPER else found


def judge(e: BaseException, what: str) -> None:
    """Raise what a database error means, for every place that would turn one into a message: a
    cut or a lost store as itself (the caller's wait, or the entry point's exit 75, handles it),
    anything else as one line, ``what: why`` (exit 2). Call it in the ``except`` block."""
    if kind(e) in (TRANSIENT, LOST):
        raise e
    raise StoreSetupError(f"{what}: {reason(e)}") from None


def _own_kind(e: BaseException) -> str | None:
    if isinstance(e, StoreLost):
        return LOST
    if isinstance(e, StoreSetupError):
        return SETUP
    if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
        return TRANSIENT  # SQLAlchemy's dialect saw the connection die under a statement
    if isinstance(e, sqlalchemy.exc.TimeoutError):
        return TRANSIENT  # no pooled connection came free in time
    if isinstance(e, sqlalchemy.exc.PendingRollbackError):
        return TRANSIENT  # a statement after a lost connection, in the same session (Optuna's fallback queries)
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        return TRANSIENT if code is not None and code & 0xFF in SQLITE_TRANSIENT else SETUP
    try:
        import psycopg
    except ImportError:  # a SQLite-only install
        psycopg = None
    if psycopg is not None and isinstance(e, psycopg.Error):
        return _psycopg_kind(e, psycopg)
    if isinstance(e, (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError)):
        return WRAPPER  # a driver error underneath, or the one it was raised while handling, decides
    return None


def _psycopg_kind(e, psycopg) -> str:
    state = e.sqlstate
    if state:
        return TRANSIENT if state[:2] in TRANSIENT_CLASSES or state in TRANSIENT_CODES else SETUP
    if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
        return TRANSIENT  # no SQLSTATE: the connection, not the server, failed
    return SETUP


def server_answers(cparams: dict) -> bool:
    """True when the PostgreSQL server behind these connection parameters accepts connections
    (PQping OK): then a connection it refused was refused for a reason of ours."""
    from psycopg import conninfo, pq

    known = {o.keyword.decode() for o in pq.Conninfo.get_defaults()}  # not SQLAlchemy's adapter context
    params = {k: v for k, v in cparams.items() if k in known}
    # A server that answers does so at once; no answer in 2 s is "away", which is the safe side.
    params["connect_timeout"] = min(int(params.get("connect_timeout") or 2), 2)
    text = conninfo.make_conninfo(**params)
    return pq.PGconn.ping(text.encode()) == pq.Ping.OK


def store_lost(error: BaseException) -> StoreLost | None:
    """The ``StoreLost`` behind an error (raised with it, or while handling it), if any."""
    while error is not None:
        if isinstance(error, StoreLost):
            return error
        error = error.__cause__ or error.__context__
    return None
