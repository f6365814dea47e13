"""hpo.store: opening the study store safely (real SQLite files; PostgreSQL faults are in test_store_faults.py)."""
from __future__ import annotations

import pytest

from hpo import store
from hpo.errors import HpoError


def test_missing_sqlite_store_is_not_created(tmp_path):
    path = tmp_path / "none.db"
    with pytest.raises(HpoError, match="no store at"):
        store.open_storage(f"sqlite:///{path}", create=False)
    assert not path.exists()


def test_store_uses_wal_and_heartbeats(tmp_path):
    storage = store.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert storage.heartbeat_interval == store.HEARTBEAT_S and storage.grace_period == store.GRACE_S


def test_sqlite_path_reads_plain_urls_only():
    assert str(store.sqlite_path("sqlite:///storage/hpo.db")) == "storage/hpo.db"
    assert store.sqlite_path("sqlite:///file:storage/hpo.db?mode=ro&uri=true") is None  # SQLite resolves it
    assert store.sqlite_path("postgresql+psycopg://postgres@127.0.0.1/test") is None
    with pytest.raises(HpoError, match="malformed SQLite URL"):
        store.sqlite_path("sqlite://storage/hpo.db")


def test_redact_hides_the_password():
    assert store.redact("postgresql+psycopg://u:secret@db/x") == "postgresql+psycopg://u:***@db/x"
