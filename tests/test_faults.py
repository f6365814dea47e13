"""hpo.storage.faults: which store errors are transient (ridden out), setup (one line, at once) or
lost, by exception class and SQLSTATE, and as SQLAlchemy and Optuna wrap them. No server: the errors
are made here (a busy SQLite file is real). The store's handling of them, through real cuts of
PostgreSQL, is in tests/test_store_faults.py."""

from __future__ import annotations

import sqlite3

import optuna
import psycopg
import pytest
import sqlalchemy.exc

from hpo.storage import faults


@pytest.mark.parametrize(
    "error, kind",
    [
        (psycopg.errors.lookup("40001")("could not serialize access"), faults.TRANSIENT),
        (psycopg.errors.lookup("40P01")("deadlock detected"), faults.TRANSIENT),
        (psycopg.errors.lookup("57P01")("terminating connection due to administrator command"), faults.TRANSIENT),
        (psycopg.errors.lookup("57P03")("the database system is starting up"), faults.TRANSIENT),
        (psycopg.errors.lookup("08006")("connection failure"), faults.TRANSIENT),
        (psycopg.OperationalError("server closed the connection unexpectedly"), faults.TRANSIENT),  # no SQLSTATE
        (psycopg.errors.lookup("28P01")("password authentication failed"), faults.SETUP),
        (psycopg.errors.lookup("3D000")("database does not exist"), faults.SETUP),
        (psycopg.errors.lookup("42P01")("relation does not exist"), faults.SETUP),
        (sqlalchemy.exc.ArgumentError("Could not parse SQLAlchemy URL"), faults.SETUP),
        (faults.StoreLost("out of reach"), faults.LOST),
        (ValueError("a bug"), None),
    ],
)
def test_store_errors_are_classified_by_class_and_sqlstate(error, kind):
    assert faults.kind(error) == kind
    # The same, as SQLAlchemy and Optuna wrap it.
    wrapped = sqlalchemy.exc.OperationalError("SELECT 1", {}, error)
    if isinstance(error, (psycopg.Error, sqlite3.Error)):
        try:
            raise optuna.exceptions.StorageInternalError("commit failed") from wrapped
        except optuna.exceptions.StorageInternalError as e:
            assert faults.kind(e) == kind


def test_a_busy_sqlite_and_an_invalidated_connection_are_transient(tmp_path):
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as busy:
        sqlite3.connect(path, timeout=0, isolation_level=None).execute("BEGIN IMMEDIATE")
    assert faults.kind(busy.value) == faults.TRANSIENT  # SQLITE_BUSY
    holder.execute("ROLLBACK")
    invalidated = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("gone"), connection_invalidated=True)
    assert faults.kind(invalidated) == faults.TRANSIENT


def test_a_session_left_by_a_lost_connection_is_transient():
    """Optuna's fallback query after a lost connection meets SQLAlchemy's PendingRollbackError,
    raised while handling the lost connection and wrapped by Optuna."""
    try:
        try:
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed"))
        except sqlalchemy.exc.OperationalError:
            try:
                raise sqlalchemy.exc.PendingRollbackError("Can't reconnect until invalid transaction is rolled back")
            except sqlalchemy.exc.PendingRollbackError as e:
                raise optuna.exceptions.StorageInternalError("commit failed") from e
    except optuna.exceptions.StorageInternalError as e:
        assert faults.kind(e) == faults.TRANSIENT


def test_an_error_raised_while_handling_a_lost_store_counts_as_lost():
    try:
        try:
            raise faults.StoreLost("out of reach")
        except faults.StoreLost:
            raise UnboundLocalError("cleaning up failed")  # noqa: B904 (its context, not a cause: what Optuna's _run_trial raises then)
    except UnboundLocalError as e:
        assert faults.kind(e) == faults.LOST
    try:
        try:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        except psycopg.OperationalError:
            raise faults.StoreSetupError("no such database")  # noqa: B904 (raised while handling, as the store does)
    except faults.StoreSetupError as e:
        assert faults.kind(e) == faults.SETUP  # its own kind first


def test_judge_passes_a_cut_on_and_makes_a_setup_error_one_line():
    """The one classification every place that reports a database error goes through."""
    cut = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection"))
    with pytest.raises(sqlalchemy.exc.OperationalError) as passed:
        try:
            raise cut
        except sqlalchemy.exc.OperationalError as e:
            faults.judge(e, "cannot read the store X")
    assert passed.value is cut  # the caller's wait (or exit 75) handles it
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, psycopg.errors.lookup("3D000")("database does not exist"))
    with pytest.raises(faults.StoreSetupError) as setup:
        try:
            raise refused
        except sqlalchemy.exc.OperationalError as e:
            faults.judge(e, "cannot read the store X")
    assert str(setup.value).startswith("cannot read the store X: ") and "\n" not in str(setup.value)
    assert "database does not exist" in str(setup.value)
