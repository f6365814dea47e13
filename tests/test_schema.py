"""Readers never write and writers never adopt another program's database: real SQLite files, a
real PostgreSQL database of our own, real `python -m hpo.*` subprocesses. Every refused command
leaves the store byte for byte (SQLite's sha256) or table for table (PostgreSQL) as it was."""

from __future__ import annotations

import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
from builders import sha
from processes import hpo

from hpo.errors import HpoError
from hpo.storage import schema

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def refused(proc: subprocess.CompletedProcess, words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and words in proc.stderr, proc.stderr


@pytest.fixture
def other_db(tmp_path) -> Path:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        conn.execute("INSERT INTO users VALUES (1, 'ann')")
    return path


@pytest.fixture
def study_folder(tmp_path) -> Path:
    from builders import write_study

    return write_study(tmp_path / "studies" / "tiny")


@pytest.mark.parametrize("module", ["report", "dashboard"])
def test_readers_refuse_what_is_not_a_store_and_write_nothing(module, tmp_path, other_db, study_folder):
    empty = tmp_path / "empty.db"
    empty.touch()
    before = {p: sha(p) for p in (other_db, empty)}
    head = ["studies/tiny"] if module == "report" else []
    for url, words in (
        (f"sqlite:///{other_db}", "is not an Optuna store: it holds other tables (users)"),
        (f"sqlite:///{empty}", "(an empty database)"),
        (f"sqlite:///{tmp_path}/missing.db?timeout=5", f"no store at {tmp_path}/missing.db: run"),
        (f"sqlite:///{other_db}?timeout=5", "is not an Optuna store"),
    ):
        refused(hpo(*head, "--storage", url, module=f"hpo.{module}", cwd=tmp_path), words)
    assert {p: sha(p) for p in before} == before
    assert not (tmp_path / "missing.db").exists()


def test_run_refuses_another_programs_sqlite_database(tmp_path, other_db, study_folder):
    before = sha(other_db)
    refused(hpo("--study", "tiny", "--storage", f"sqlite:///{other_db}", cwd=tmp_path), "is not an Optuna store")
    assert sha(other_db) == before
    with sqlite3.connect(other_db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL


def test_a_port_that_is_not_a_number_is_one_line_with_the_password_masked(tmp_path, study_folder):
    url = "postgresql+psycopg://me:hunter2@127.0.0.1:abc/db"
    for module, args in (("report", ["studies/tiny"]), ("dashboard", []), ("run", ["--study", "tiny"])):
        proc = hpo(*args, "--storage", url, module=f"hpo.{module}", cwd=tmp_path)
        refused(proc, "the port must be a number")
        assert "hunter2" not in proc.stderr


def test_a_new_store_says_where_it_is(tmp_path, monkeypatch, caplog):
    import logging

    from hpo.storage.store import open_storage

    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="hpo"):
        open_storage("sqlite:///tmp/x.db", create=True).engine.dispose()  # three slashes: relative, ./tmp/x.db
    assert f"created the store {tmp_path / 'tmp' / 'x.db'}" in caplog.text


# ---------------------------------------------------------------- PostgreSQL: a database of our own


@pytest.fixture
def pg_database():
    """A new, empty database on the test server, dropped afterwards: its URL and a table lister."""
    import sqlalchemy

    name = f"hpo_wt11_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)

    def tables() -> list[str]:
        with engine.connect() as conn:
            return sorted(sqlalchemy.inspect(conn).get_table_names())

    yield url, engine, tables
    engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


def test_postgresql_readers_create_no_tables_and_writers_refuse_a_foreign_schema(pg_database, tmp_path, study_folder):
    url, engine, tables = pg_database
    refused(hpo("studies/tiny", "--storage", url, module="hpo.report", cwd=tmp_path), "(an empty database)")
    refused(hpo("--storage", url, module="hpo.dashboard", cwd=tmp_path), "(an empty database)")
    assert tables() == []
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE invoices (id int)")
    refused(
        hpo("--study", "tiny", "--storage", url, cwd=tmp_path),
        "is not an Optuna store: it holds other tables (invoices)",
    )
    refused(hpo("studies/tiny", "--storage", url, module="hpo.report", cwd=tmp_path), "is not an Optuna store")
    assert tables() == ["invoices"]


def test_check_says_a_writer_creates_an_empty_store(tmp_path, other_db):
    assert schema.check(f"sqlite:///{tmp_path}/new.db", create=True) is True
    assert not (tmp_path / "new.db").exists()
    with pytest.raises(HpoError, match="no store at .*new.db: run"):
        schema.check(f"sqlite:///{tmp_path}/new.db", create=False)
    with pytest.raises(HpoError, match="not an Optuna store"):
        schema.check(f"sqlite:///file:{other_db}?mode=ro&uri=true", create=False)
