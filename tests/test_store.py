"""hpo.storage.store: opening the study store safely (real SQLite files; PostgreSQL faults are in
test_store_faults.py, the classification of store errors in test_faults.py)."""

from __future__ import annotations

import pytest

from hpo.errors import HpoError
from hpo.storage import store


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


def test_a_trial_is_claimed_in_the_transaction_that_makes_it_running(tmp_path, monkeypatch):
    """Its first heartbeat and its worker are written with the trial itself, so a worker that dies
    between ask() and Optuna's heartbeat thread leaves a trial that goes stale and is retried (Optuna
    never fails a RUNNING trial without a heartbeat); a popped retry is claimed by its new worker."""
    import time

    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    monkeypatch.setenv(store.HEARTBEAT_ENV, "1")
    monkeypatch.setenv(store.GRACE_ENV, "2")
    storage = store.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    study = optuna.create_study(storage=storage)
    born = study.ask({"x": FloatDistribution(0, 1)})  # no heartbeat thread: its worker "dies" here
    assert storage.get_trial(born._trial_id).user_attrs[store.WORKER_ATTR] == store.worker_tag()
    end = time.monotonic() + 30
    while storage.get_trial(born._trial_id).state == TrialState.RUNNING:
        assert time.monotonic() < end, "a trial without a beat of its own never went stale"
        time.sleep(0.2)
        optuna.storages.fail_stale_trials(study)
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.params == born.params and retry.user_attrs[store.WORKER_ATTR] == store.worker_tag()  # inherited
    storage.set_trial_user_attr(retry._trial_id, store.WORKER_ATTR, "elsewhere:1")
    popped = study.ask()
    assert popped.number == retry.number
    assert storage.get_trial(popped._trial_id).user_attrs[store.WORKER_ATTR] == store.worker_tag()
    assert storage._get_stale_trial_ids(study._study_id) == []  # claimed now, not at the lost run's beat
