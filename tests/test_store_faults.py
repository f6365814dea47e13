"""The store's fault handling (hpo.storage.store with hpo.storage.faults): PostgreSQL cut at a chosen
phase, with one worker and with two, for a moment (under $HPO_STORE_WAIT_S: ridden out) and for long
(over it: exit 75, and the supervisor starts the worker again). The cuts come from tests/pgproxy.py
on a statement the test names, and end on a line the test waits for: no sleeps, no timing. The
classification of the errors itself (no server) is in tests/test_faults.py.

Each study here has its own name and is deleted afterwards (other engineers share the server)."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid

import optuna
import pytest
from builders import PG, assert_exactly, write_study
from optuna.trial import TrialState
from pgproxy import Proxy, Trigger
from processes import hpo, start

from hpo.storage import faults, store
from hpo.storage.store import is_lost

TRAIN = "epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1"
BRIEF = {"HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "20", "HPO_STORE_WAIT_S": "20"}  # a cut ends long before the wait
SEARCH = "lr = { low = 0.01, high = 0.05 }"  # no trial diverges: each reaches the phases the cuts wait for
LONG = {"HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "4", "HPO_STORE_WAIT_S": "2"}  # a cut outlasts the wait


class Run:
    """``python -m hpo.run`` in the background, its stderr lines collected as they come."""

    def __init__(self, *args: str, cwd, env: dict):
        self.proc = start(*args, cwd=cwd, env=env)
        self.lines: list[str] = []
        self.out: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(s, d), daemon=True)
            for s, d in ((self.proc.stderr, self.lines), (self.proc.stdout, self.out))
        ]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def count(self, text: str, after: int = 0) -> int:
        return sum(text in line for line in self.lines[after:])

    def wait_for(self, text: str, count: int = 1, deadline: float = 120, after: int = 0) -> None:
        """Until ``count`` stderr lines (from line ``after`` on) contain ``text``; the run must not end first."""
        end = time.monotonic() + deadline
        while self.count(text, after) < count:
            if self.proc.poll() is not None:
                for r in self.readers:
                    r.join(5)
                if self.count(text, after) >= count:
                    return
                raise AssertionError(f"the run ended before {count} line(s) with {text!r}:\n{self.err[-4000:]}")
            if time.monotonic() > end:
                raise AssertionError(f"timed out waiting for {text!r}:\n{self.err[-4000:]}")
            time.sleep(0.05)

    def finish(self, timeout: float = 240) -> int:
        try:
            self.proc.wait(timeout)
        finally:
            self.proc.kill()
            for r in self.readers:
                r.join(5)
        return self.proc.returncode

    @property
    def err(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def pg_study(pg_study):
    """conftest's PostgreSQL study, with one-epoch trials that never diverge."""
    name, folder = pg_study
    write_study(folder, train=TRAIN, search=SEARCH)
    return name, folder


def trials_of(name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=PG).trials


# ---------------------------------------------------------------- the store out of reach, and lost trials


def test_a_refusing_server_is_setup_at_once_and_an_absent_one_is_waited_for(monkeypatch):
    monkeypatch.setenv("HPO_STORE_WAIT_S", "30")
    start = time.monotonic()
    with pytest.raises(faults.StoreSetupError, match='database "hpo_no_such_db" does not exist'):
        store.open_storage("postgresql+psycopg://postgres@127.0.0.1:5432/hpo_no_such_db", create=True)
    with pytest.raises(faults.StoreSetupError, match='role "hpo_no_such_role" does not exist'):
        store.open_storage("postgresql+psycopg://hpo_no_such_role@127.0.0.1:5432/test", create=True)
    assert time.monotonic() - start < 10  # not the 30 s wait
    monkeypatch.setenv("HPO_STORE_WAIT_S", "2")
    proxy = Proxy()
    proxy.cut()  # nothing answers
    start = time.monotonic()
    with pytest.raises(faults.StoreLost, match="out of reach for 2 s"):
        store.open_storage(proxy.url(), create=True)
    assert 1 <= time.monotonic() - start < 10  # about the wait, not the ping timeouts


def test_the_cli_says_lost_in_one_line_and_exits_75(pg_study, tmp_path):
    name, _ = pg_study
    proxy = Proxy()
    proxy.cut()
    run = Run("--study", name, "--trials", "1", "--storage", proxy.url(), cwd=tmp_path, env={"HPO_STORE_WAIT_S": "1"})
    assert run.finish(120) == 75, run.err
    assert run.lines[-1].startswith(f"error: lost the store {store.redact(proxy.url())}: out of reach for 1 s"), run.err
    assert "Traceback" not in run.err


def test_a_lost_trial_is_retried_at_most_twice(tmp_path, monkeypatch):
    """MAX_RETRY: a trial lost three times (its worker dying each time) is retried twice, not a third time."""
    monkeypatch.setenv("HPO_HEARTBEAT_S", "1")
    monkeypatch.setenv("HPO_GRACE_S", "2")
    storage = store.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    study = optuna.create_study(storage=storage)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    for loss in range(3):
        storage.record_heartbeat(trial._trial_id)  # then the worker "dies": no more beats
        end = time.monotonic() + 30
        while storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            assert time.monotonic() < end, "the trial never went stale"
            time.sleep(0.2)
            optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        if loss < 2:
            assert len(waiting) == 1 and waiting[0].params == trial.params
            trial = study.ask()  # the retry, popped
            assert trial.params == waiting[0].params
        else:
            assert waiting == []
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3


# ---------------------------------------------------------------- cuts, phase by phase

# Each phase of a worker's life and the statement the cut lands on; "after": the statement (and
# the COMMIT that follows it) reached the server, which committed, but the client never heard so.
PHASES = {
    "opening": ((b"FROM alembic_version",), False),  # the schema version check
    "study": ((b"INSERT INTO studies",), False),  # creating the study
    "ask": ((b"INSERT INTO trials",), False),  # a new trial
    "ask-committed": ((b"INSERT INTO trials", b"COMMIT"), True),
    "params": ((b"INSERT INTO trial_params",), False),  # the sampler's suggestion
    "epoch": ((b"INSERT INTO trial_intermediate_values",), False),  # an epoch's records
    "heartbeat": ((b"INSERT INTO trial_heartbeats",), False),  # the heartbeat thread
    "tell": ((b"UPDATE trials SET state",), False),  # the result
    "tell-committed": ((b"UPDATE trials SET state", b"COMMIT"), True),
}


def at(phase: str, apps=None) -> Trigger:
    pattern, after = PHASES[phase]
    return Trigger(pattern, after=after, apps=apps)


def ride_out(run: Run, proxy: Proxy, cuts: int) -> None:
    """Each cut in turn: wait for it, then for the run to feel it (a retry line after the cut:
    it is waiting for the store), then mend the network."""
    for k in range(cuts):
        end = time.monotonic() + 180
        while len(proxy.fires) <= k:
            assert run.proc.poll() is None and time.monotonic() < end, (
                f"cut {k + 1} of {cuts} never came ({len(proxy.fires)} came):\n{run.err[-4000:]}"
            )
            time.sleep(0.05)
        run.wait_for("retrying for up to", after=proxy.fires[k])
        proxy.mend()


def test_one_worker_rides_out_a_brief_cut_in_every_phase(pg_study, tmp_path):
    """One run, cut in each phase in turn (each cut armed once the one before is over)."""
    name, _ = pg_study
    order = ["opening", "study", "ask", "params", "epoch", "tell", "ask-committed", "heartbeat", "tell-committed"]
    proxy = Proxy()
    proxy.cuts_on([at(phase) for phase in order])
    run = Run("--study", name, "--trials", "3", "--storage", proxy.url(), "--quiet", cwd=tmp_path, env=BRIEF)
    proxy.on_fire = lambda: len(run.lines)
    ride_out(run, proxy, len(order))
    assert run.finish() == 0, run.err
    assert "Traceback" not in run.err and "error" not in run.err
    assert_exactly(trials_of(name), 3, lost=0, clean=True)  # no trial lost, none written twice


@pytest.mark.parametrize(
    "options", [[], ["--workers", "2"], ["--confirm", "1"]], ids=["one process", "two workers", "confirm"]
)
def test_a_cut_at_the_first_statement_of_the_store_check_is_ridden_out(options, pg_study, tmp_path):
    """A server that takes the connection and drops it at its first statement (a restart while the
    workers open the store, a pooler failing over) while hpo asks whether it is an Optuna store:
    waited out like any other cut, not a setup error. With workers: the supervisor's check, then a
    worker's; with --confirm, its own check that a search ran first."""
    name, _ = pg_study
    searched = 2 if "--confirm" in options else 0
    if searched:
        hpo("--study", name, "--trials", str(searched), "--storage", PG, cwd=tmp_path, check=0)
    workers = ["--workers", "2"] if "--workers" in options else []
    proxy = Proxy()
    amount = [] if searched else ["--trials", "2"]  # --confirm adds its own: 2 configurations x 1 seed
    run = Run("--study", name, *amount, *options, "--storage", proxy.url(), "--quiet", cwd=tmp_path, env=BRIEF)
    proxy.on_fire = lambda: len(run.lines)
    first = (b"BEGIN",)  # the first statement of a process's first connection: the store check's
    triggers = [Trigger(first)]
    if workers:
        supervisor = f"hpo pid {run.proc.pid}"
        triggers.append(Trigger(first, apps=lambda app: app != supervisor))
    proxy.cuts_on(triggers)
    ride_out(run, proxy, len(triggers))
    assert run.finish() == 0, run.err
    said = [line for line in run.err.splitlines() if "cut off while opening" in line]
    # the supervisor's (or the lone process's) check once; with workers, each cut drops every open
    # connection, so a worker opening at the same moment as the one that tripped it rides it out too
    assert sum(not line.startswith("[worker") for line in said) == 1, run.err
    by_workers = sum(line.startswith("[worker") for line in said)
    assert (1 <= by_workers <= 2) if workers else by_workers == 0, run.err
    assert "Traceback" not in run.err and "error" not in run.err
    assert_exactly(trials_of(name), searched + 2, lost=0, clean=True)  # confirm: 2 configurations x 1 seed


def test_two_workers_ride_out_brief_cuts_of_a_worker_and_of_the_supervisor(pg_study, tmp_path):
    """The phases where a second process changes something: workers open and create and finish
    trials at once (a cut lands on one worker's statement while the other's are in flight), and
    the supervisor's own reads."""
    name, _ = pg_study
    proxy = Proxy()
    run = Run("--study", name, "--trials", "4", "--workers", "2", "--storage", proxy.url(), cwd=tmp_path, env=BRIEF)
    proxy.on_fire = lambda: len(run.lines)
    supervisor = f"hpo pid {run.proc.pid}"
    worker, itself = (lambda app: app != supervisor), (lambda app: app == supervisor)
    proxy.cuts_on(
        [
            at("opening", worker),
            at("ask-committed", worker),
            Trigger((b"FROM trials",), apps=itself),
            at("tell-committed", worker),
        ]
    )
    ride_out(run, proxy, 4)
    assert run.finish() == 0, run.err
    assert "Traceback" not in run.err and "stopped early" not in run.err and "lost the store" not in run.err
    trials = trials_of(name)
    assert_exactly(trials, 4, lost=0, clean=True)
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_a_long_cut_stops_the_workers_with_75_and_the_supervisor_starts_them_again(pg_study, tmp_path):
    """An outage longer than $HPO_STORE_WAIT_S mid-training: each worker stops (exit 75), its trial
    in hand is failed as lost and retried, new workers take the rest: exactly N trials."""
    name, folder = pg_study
    write_study(
        folder, train="epochs = 3\nbatch_size = 64\nlr = 0.05\nthreads = 1", pruner='name = "none"', search=SEARCH
    )
    proxy = Proxy()
    run = Run("--study", name, "--trials", "4", "--workers", "2", "--storage", proxy.url(), cwd=tmp_path, env=LONG)
    supervisor = f"hpo pid {run.proc.pid}"
    proxy.cut_on(b"INSERT INTO trial_intermediate_values", apps=lambda app: app != supervisor)  # training
    assert proxy.fired.wait(120), f"no cut:\n{run.err}"
    run.wait_for("error: lost the store", count=2)  # both workers waited 2 s, and stopped
    proxy.mend()
    assert run.finish() == 0, run.err
    assert len(re.findall(r"\[worker \d\] pid \d+ lost the store after", run.err)) == 2, run.err
    assert "Traceback" not in run.err and "stopped early" not in run.err
    assert_exactly(trials_of(name), 4, lost=None, clean=True)
    assert any(is_lost(t) for t in trials_of(name))  # the cut caught a trial in training


@pytest.mark.parametrize("phase", ["epoch", "ask-committed"])
def test_one_worker_stops_with_75_after_a_long_cut_and_the_resume_retries_its_trial(phase, pg_study, tmp_path):
    """In training (its heartbeats stop), and once a new trial's INSERT has committed, before
    Optuna's heartbeat thread has written a beat: the trial was claimed (a heartbeat, its worker) in
    the transaction that made it, so it goes stale too, and the resume fails it as lost and retries it."""
    name, _ = pg_study
    proxy = Proxy()
    proxy.cuts_on([at(phase)])
    env = {**LONG, "HPO_GRACE_S": "2"}
    run = Run("--study", name, "--trials", "2", "--storage", proxy.url(), "--quiet", cwd=tmp_path, env=env)
    assert run.finish() == 75, run.err
    assert re.search(
        r"^error: lost the store .*: out of reach for 2 s .*; resume with: python -m hpo.run", run.err, re.M
    ), run.err
    assert "Traceback" not in run.err
    (stuck,) = [t for t in trials_of(name) if t.state == TrialState.RUNNING]
    assert stuck.user_attrs["worker"] == store.worker_tag(run.proc.pid)
    proxy.mend()
    resume = Run("--study", name, "--trials", "2", "--storage", proxy.url(), "--quiet", cwd=tmp_path, env=env)
    assert resume.finish() == 0, resume.err
    trials = trials_of(name)
    assert_exactly(trials, 2, lost=1, clean=True)
    assert [t.number for t in trials if is_lost(t)] == [stuck.number]


class MendOnRetry(logging.Handler):
    """Mends the proxy when the store says it is retrying: the cut is over once the client felt it."""

    def __init__(self, proxy: Proxy):
        super().__init__()
        self.proxy = proxy

    def emit(self, record):
        if "retrying for up to" in record.getMessage():
            self.proxy.mend()


@pytest.mark.parametrize("queue", ["enqueue_trial", "add_trial"])
def test_a_queued_trial_whose_commit_went_unheard_is_written_once(queue, monkeypatch):
    """enqueue_trial and add_trial (warm starts, --confirm, the retry of an interrupted trial): the
    INSERT commits, the client never hears so, the store retries, and finds the trial by its key."""
    monkeypatch.setenv("HPO_STORE_WAIT_S", "20")
    name = f"q{uuid.uuid4().hex[:10]}"
    proxy = Proxy()
    storage = store.open_storage(proxy.url(), create=True)
    study = optuna.create_study(study_name=name, storage=storage)
    handler = MendOnRetry(proxy)
    logging.getLogger("hpo.storage.store").addHandler(handler)
    try:
        proxy.cut_on(b"INSERT INTO trials", b"COMMIT", after=True)
        x = optuna.distributions.FloatDistribution(0, 1)
        if queue == "enqueue_trial":
            study.enqueue_trial({"x": 0.5})
        else:
            study.add_trial(
                optuna.trial.create_trial(state=TrialState.WAITING, params={"x": 0.5}, distributions={"x": x})
            )
        assert proxy.fired.is_set()  # the commit was cut, and ridden out
        trials = optuna.load_study(study_name=name, storage=PG).trials
        assert [(t.state, t.system_attrs.get("fixed_params", t.params)) for t in trials] == [
            (TrialState.WAITING, {"x": 0.5})
        ]
    finally:
        logging.getLogger("hpo.storage.store").removeHandler(handler)
        optuna.delete_study(study_name=name, storage=PG)


def test_workers_that_never_reach_the_store_are_started_again_at_most_max_restarts_times(pg_study, tmp_path):
    name, _ = pg_study
    proxy = Proxy()
    run = Run(
        "--study",
        name,
        "--trials",
        "2",
        "--workers",
        "2",
        "--storage",
        proxy.url(),
        cwd=tmp_path,
        env={**LONG, "HPO_STORE_WAIT_S": "1"},
    )
    supervisor = f"hpo pid {run.proc.pid}"
    proxy.refuse = lambda app: app != supervisor  # the supervisor reaches the store; its workers never do
    assert run.finish() == 2, run.err
    for slot in (0, 1):  # started once, then again MAX_RESTARTS = 3 times
        assert len(re.findall(rf"^\[worker {slot}\] pid \d+: 1 trial", run.err, re.M)) == 4, run.err
        assert len(re.findall(rf"^\[worker {slot}\] error: lost the store", run.err, re.M)) == 4
    assert run.lines[-1].startswith("error: 2 worker(s) stopped early"), run.err
    assert "the study got 0 of the 2 trials" in run.lines[-1]
    assert trials_of(name) == []
