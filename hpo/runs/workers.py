"""Several workers on one machine sharing one study: ``python -m hpo.run --study S --trials N --workers K``.

A small supervisor, an executor of hpo.runs.lifecycle: the lifecycle checks the input and creates
or resumes the study once (directions and study attributes are in the store before the workers
race); the supervisor then runs each worker as a real ``python -m hpo.run`` subprocess that gets
the run's own plan (hpo.runs.plan) in its environment, with its quota of the N trials (N // K, one
more for the first N % K), its own sampler seed index, its share of the CPU threads and, with
GPUs, its own device (round-robin). Each ask() creates or pops exactly one trial, so the quotas
add up to exactly N.

Faults. A worker killed by a signal that did not come from here (kill -9, the OOM killer), or one
that lost the store, is replaced. Its trial in hand stops beating; once the heartbeat is older
than the grace period the supervisor fails it (Optuna's ``fail_stale_trials``), which queues a
retry with the same parameters and seed (``RetryHeartbeatStaleTrialCallback``); then a new worker
starts with the quota left, and it, or another worker, pops the retry. The study still gets N
trials; the lost one stays in the store as an extra FAIL record (``hpo.storage.store.is_lost``). A worker
that stops with an error (three failed trials in a row, a bad setup) is not replaced: the others
go on, and the command ends with the error. Ctrl-C or SIGTERM: forwarded to the workers as SIGTERM;
each marks its running trial FAIL (status "interrupted") and exits; a second one kills them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from hpo import cli
from hpo.errors import EXIT_STORE_LOST, HpoError, reason
from hpo.records import ENDED_WORDS, WORKER_ATTR, count_states
from hpo.runs.lifecycle import added_trials, left_running_text, numbers
from hpo.runs.plan import PLAN_ENV, WORKER_FLAG, Plan, Share
from hpo.storage.store import GRACE_ENV, GRACE_S, env_seconds, is_lost, open_storage, store_error, worker_tag
from hpo.training import data as data_mod
from hpo.training.loop import cpu_count
from hpo.training.nets import built, count_parameters, net_variants

POLL_S = 0.5  # how often the supervisor looks at its workers
PROGRESS_S = 5.0  # at most one study-wide progress line this often
MAX_RESTARTS = 3  # per worker: one that keeps dying is a problem to look at, not to hide
SMALL_NET = 1_000_000  # parameters; lenet5 (62k) and simple_cnn are small, resnet18 (11M) is not
SMALL_PER_GPU = 2  # small trials leave a GPU idle between kernels; two share one well


def largest_net(spec, root=None) -> int:
    """Parameters of the largest net the study can build: each net, searched name and searched
    model.args value built once (your own net included)."""
    return max(count_parameters(built(where, config, info)) for where, config, info in net_variants(spec, root))


def auto_workers(spec, cores: int, gpus: int, root=None) -> int:
    """``--workers auto``. CPU, small net (LeNet-5, the simple CNN): one worker per core, one thread
    each. Two torch threads in one process were the slowest setting in every run on 2 shared cores
    (1.2x to 10x: the OpenMP pool waits at each barrier for a thread that lost its core), while a
    second process on a free core runs a second trial for a start of about 3 CPU s. A large net
    (ResNet-18) keeps all threads busy with long kernels: one worker. GPU: two small trials per GPU
    (one leaves it idle between kernels), one large. Figures in bench/README.md ("workers.py"),
    with the case the rule does not cover: when other jobs already hold every core, a single
    one-thread worker is faster (--workers 1 --set train.threads=1)."""
    small = largest_net(spec, root) < SMALL_NET
    if gpus:
        return gpus * (SMALL_PER_GPU if small else 1)
    return cores if small else 1


def devices(spec) -> list[str]:
    """The devices workers are spread over: every visible GPU when train.device is auto; none
    (each worker uses what the study says) otherwise."""
    if spec.base.train.device == "auto" and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return []


def worker_count(text: str, spec, source: str = "--workers", root=None) -> int:
    """``--workers`` (or ``source``, where the text came from): a number >= 1, or auto (for this
    machine's cores and GPUs)."""
    if text == "auto":
        gpus = len(devices(spec)) or spec.base.train.device.startswith("cuda")
        return auto_workers(spec, cpu_count(), gpus, root)
    k = int(text) if text.strip().isdigit() else 0
    if k < 1:
        raise HpoError(f"{source} must be a number >= 1 or auto, got {text!r}")
    return k


def quotas(trials: int, k: int) -> list[int]:
    """N trials over K workers: N // K each, one more for the first N % K; no empty worker."""
    return [trials // k + (i < trials % k) for i in range(min(trials, k))]


@dataclass
class Worker:
    slot: int  # 0..K-1: which share of the trials (a replacement keeps the slot)
    quota: int
    proc: subprocess.Popen
    restarts: int = 0
    last: str = ""  # its last line: the reason when it stops with an error
    relay: threading.Thread | None = None
    unplanned: int = 0  # times its replacement could not be planned (the store out of reach)

    @property
    def tag(self) -> str:
        return worker_tag(self.proc.pid)


@dataclass
class Replacement:
    slot: int
    quota: int
    restarts: int
    stuck: set[int] = field(default_factory=set)  # trial numbers the dead worker left RUNNING
    since: float = field(default_factory=time.monotonic)


class Supervisor:
    """Runs a plan's trials in K worker processes (an hpo.runs.lifecycle executor)."""

    stop_when_lost = False  # its own reads wait for the store and say so; a worker that lost it is replaced

    def __init__(self, plan: Plan, k: int):
        self.plan, self.workers = plan, k
        self.base = plan.index * k  # several supervisors (a Slurm array of them) get disjoint indices
        self.grace = env_seconds(GRACE_ENV, GRACE_S)
        self.running: list[Worker] = []
        self.pending: list[Replacement] = []
        self.stopped: list[tuple[Worker, int]] = []  # workers that ended with an error, not replaced
        self.unplanned: list[tuple[Worker, int]] = []  # to replace once the store answers again
        self.signals = 0
        self.said_stopping = False
        self.changed = threading.Event()
        self.last_done = 0
        self.print_lock = threading.Lock()

    def prepare(self, spec, say) -> None:
        """The data files are there and the subset sizes fit (each worker loads its own copy)."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.gpus, cores = devices(spec), cpu_count()
        data_mod.load(spec.base.data, spec.seed, "cpu", root=self.plan.data_dir)
        self.threads = max(1, cores // self.workers) if spec.base.train.threads == 0 else None  # a set count is kept

    def left(self, study: optuna.Study, adding: int) -> int:
        return adding  # --until: every worker waits for what others run, and stops at N

    # ------------------------------------------------------------ workers

    def worker_plan(self, slot: int, quota: int) -> Plan:
        """The run's own plan, for one worker: its quota (--until: the study, not a quota, says when to
        stop), its sampler seed index, its threads and GPU, and what is left of --timeout."""
        plan = self.plan
        share = Share(slot, self.threads, self.gpus[slot % len(self.gpus)] if self.gpus else None)
        options = {"workers": "1", "worker_index": self.base + slot}
        if plan.until is None:
            options["trials"] = quota
        if self.deadline is not None:
            options["timeout"] = max(self.deadline - time.monotonic(), 1.0)
        return plan.for_worker(share, **options)

    def start(self, slot: int, quota: int, restarts: int = 0) -> Worker:
        # The plan, with the store's URL and any password in it, in the environment (never in argv: ps).
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PLAN_ENV: self.worker_plan(slot, quota).to_json()}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        # A session of its own: Ctrl-C reaches the supervisor only, which forwards one SIGTERM.
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpo.run", WORKER_FLAG],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        worker = Worker(slot, quota, proc, restarts)
        where = ", ".join(
            x
            for x in (
                f"{self.threads} thread{'s' * (self.threads > 1)}" if self.threads else "",
                self.gpus[slot % len(self.gpus)] if self.gpus else "",
            )
            if x
        )
        self.say(f"[worker {slot}] pid {proc.pid}: {quota} trial{'s' * (quota > 1)}" + (f", {where}" if where else ""))
        worker.relay = threading.Thread(target=self.relay, args=(worker,), daemon=True)
        worker.relay.start()
        self.running.append(worker)
        return worker

    def relay(self, worker: Worker) -> None:
        """A worker's lines, whole and prefixed, on our stderr."""
        for line in worker.proc.stdout:
            line = line.rstrip()
            if line:
                worker.last = line
                self.say(f"[worker {worker.slot}] {line}")
                self.changed.set()

    def say(self, text: str) -> None:
        with self.print_lock:
            cli.say(text)

    # ------------------------------------------------------------ the loop

    def run(self, study: optuna.Study, spec, adding: int, before: set[int]) -> None:
        """Supervise the workers until they are done; a signal is forwarded, then raised as KeyboardInterrupt."""
        self.study, self.spec, self.trials, self.before = study, spec, adding, before
        # Progress reads go through a reader: on SQLite a plain snapshot that never holds the write lock.
        self.reader = optuna.load_study(study_name=spec.name, storage=open_storage(self.plan.storage, create=False))
        self.deadline = time.monotonic() + self.plan.timeout if self.plan.timeout else None
        self.start_time = time.monotonic()
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot, quota in enumerate(quotas(self.trials, self.workers)):
                if not self.signals:
                    self.start(slot, quota)
            last_progress = 0.0
            while self.running or self.pending or self.unplanned:
                time.sleep(POLL_S)
                if self.signals and not self.said_stopping:
                    self.said_stopping = True
                    self.pending.clear()
                    self.forward(signal.SIGTERM)  # again: one may have started as the signal came
                    self.say(
                        "stopping: each worker marks its running trial FAIL (status interrupted) and exits; "
                        "a second Ctrl-C kills them (their trials are then failed as lost and retried on resume)"
                    )
                self.reap()
                for worker, code in self.unplanned[:]:  # dead while the store was away: plan them now
                    self.unplanned.remove((worker, code))
                    self.plan_replacement(worker, code)
                self.replace()
                if self.changed.is_set() and time.monotonic() - last_progress >= PROGRESS_S and not self.signals:
                    self.changed.clear()
                    last_progress = time.monotonic()
                    self.progress()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.signals:
            raise KeyboardInterrupt

    def on_signal(self, signum, frame) -> None:
        # Only a count and kill() here: the loop does the rest (a print from a handler can
        # re-enter a print in progress).
        self.signals += 1
        self.forward(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)

    def forward(self, sig: int) -> None:
        for worker in list(self.running):
            try:
                os.kill(worker.proc.pid, sig)  # a worker ignores a second SIGTERM (hpo.run.Interrupts)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        for worker in [w for w in self.running if w.proc.poll() is not None]:
            self.running.remove(worker)
            worker.relay.join(timeout=5)  # its last lines before ours
            code = worker.proc.returncode
            if code == 0 or self.signals:
                continue
            if (code < 0 or code == EXIT_STORE_LOST) and worker.restarts < MAX_RESTARTS and not self.out_of_time():
                self.plan_replacement(worker, code)
            else:
                self.stopped.append((worker, code))

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def plan_replacement(self, worker: Worker, code: int) -> None:
        try:
            mine = [
                t
                for t in self.reader.get_trials(deepcopy=False)
                if t.user_attrs.get(WORKER_ATTR) == worker.tag and t.number not in self.before
            ]
        except Exception as e:
            if not store_error(e):
                raise
            worker.unplanned += 1
            if worker.unplanned <= MAX_RESTARTS:  # each try waited $HPO_STORE_WAIT_S: ask again at the next poll
                self.unplanned.append((worker, code))
                return
            self.say(f"[worker {worker.slot}] stopped and the store is out of reach ({reason(e)}): not replaced")
            self.stopped.append((worker, code))
            return
        done = sum(t.state.is_finished() and not is_lost(t) for t in mine)
        stuck = {t.number for t in mine if t.state == TrialState.RUNNING}
        left = (
            worker.quota if self.plan.until is not None else worker.quota - done
        )  # --until: it stops when the study is done
        why = f"was killed ({signal.Signals(-code).name})" if code < 0 else "lost the store"
        text = f"[worker {worker.slot}] pid {worker.proc.pid} {why} after {done} of its {worker.quota} trials"
        if stuck:
            text += (
                f"; trial {numbers(stuck)} is failed as lost once its heartbeat is {self.grace} s old, "
                f"and retried with the same parameters"
            )
        self.say(text + (f"; a new worker takes the {left} left" if left > 0 else ""))
        if left > 0:
            self.pending.append(Replacement(worker.slot, left, worker.restarts + 1, stuck))

    def replace(self) -> None:
        if self.signals:
            return
        for plan in list(self.pending):
            if plan.stuck and time.monotonic() - plan.since > 2 * self.grace + 10:
                # A trial with no heartbeat, which Optuna never counts as stale: hpo's store writes
                # the first beat with the trial, so only a store written by an older hpo or another
                # tool has one. Its worker is gone, so it is failed here and retried as the check would.
                try:
                    self.fail_lost(plan.stuck)
                except Exception as e:
                    if not store_error(e):
                        raise
                    continue  # the store is away: try again at the next poll
                self.say(
                    f"trial {numbers(plan.stuck)} never wrote a heartbeat (its worker died as it started): "
                    f"failed as lost and retried with the same parameters"
                )
                plan.stuck = set()
            if plan.stuck:
                try:
                    optuna.storages.fail_stale_trials(self.study)  # queues the retries (the store's callback)
                    running = {t.number for t in self.reader.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
                except Exception as e:
                    if not store_error(e):
                        raise
                    continue  # the store is away: try again at the next poll
                plan.stuck &= running
                if plan.stuck:
                    continue
            self.pending.remove(plan)
            self.start(plan.slot, plan.quota, plan.restarts)

    def fail_lost(self, stuck: set[int]) -> None:
        storage = self.study._storage
        for t in self.reader.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in stuck and storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                storage.get_heartbeat_stale_trial_callback()(self.study, storage.get_trial(t._trial_id))

    # ------------------------------------------------------------ reporting

    def progress(self) -> None:
        try:
            added = added_trials(self.reader, self.before)
        except Exception as e:
            if not store_error(e):
                raise
            return
        done = [t for t in added if t.state.is_finished() and not is_lost(t)]
        if len(done) == self.last_done:
            return
        self.last_done = len(done)
        counts = count_states(done)
        lost = sum(is_lost(t) for t in added)
        text = (
            f"[study] {len(done)}/{self.trials} trials: "
            + ", ".join(f"{counts[w]} {w}" for w in ENDED_WORDS)
            + (f", {lost} lost and retried" if lost else "")
        )
        if len(self.spec.objective.metrics) == 1:
            with contextlib.suppress(ValueError):  # no complete trial yet
                best = self.reader.best_trial
                text += f"; best {best.value:.4g} (#{best.number})"
        if done and len(done) < self.trials:
            elapsed = time.monotonic() - self.start_time
            text += f"; ETA {tqdm.format_interval(elapsed / len(done) * (self.trials - len(done)))}"
        self.say(text)

    # ------------------------------------------------------------ how it ended (hpo.runs.lifecycle asks)

    def mine(self, trial: optuna.trial.FrozenTrial) -> bool:
        return True  # every trial it added ran in one of its workers

    def left_running(self, added: list[optuna.trial.FrozenTrial]) -> list[int]:
        return sorted(t.number for t in added if t.state == TrialState.RUNNING)

    def done_line(self) -> str:
        return ""  # each worker said its own

    def error(self, added: list[optuna.trial.FrozenTrial], resume: str) -> str:
        if not self.stopped:
            return ""
        done = [t for t in added if t.state.is_finished() and not is_lost(t)]
        why = "; ".join(
            f"worker {w.slot}: {w.last or f'exit code {code}'}"
            for w, code in sorted(self.stopped, key=lambda wc: wc[0].slot)
        )  # in slot order, not exit order
        return (
            f"{len(self.stopped)} worker(s) stopped early ({why}); the study got {len(done)} of the "
            f"{self.trials} trials{left_running_text(self.left_running(added))}; resume with: {resume}"
        )
