"""Several workers on one machine sharing one study: ``python -m hpo.run --study S --trials N --workers K``.

A small supervisor. It checks the input and creates or resumes the study once (directions and
study attributes are in the store before the workers race), then runs each worker as a real
``python -m hpo.run`` subprocess that adds its quota of the N trials (N // K, one more for the
first N % K), with its own sampler seed (``--worker-index``), its share of the CPU threads and,
with GPUs, its own device (round-robin). Each ask() creates or pops exactly one trial, so the
quotas add up to exactly N.

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
from hpo.runs.outcome import count_states, report_command, run_command, summary
from hpo.search import warmstart
from hpo.search.study import create_or_resume, make_pruner, make_sampler
from hpo.storage.store import (
    GRACE_ENV,
    GRACE_S,
    STORAGE_ENV,
    env_seconds,
    is_lost,
    open_storage,
    redact,
    store_error,
    worker_tag,
)
from hpo.training import data as data_mod
from hpo.training.datasets import DATASETS
from hpo.training.loop import cpu_count, resolve_device
from hpo.training.nets import build, count_parameters

POLL_S = 0.5  # how often the supervisor looks at its workers
PROGRESS_S = 5.0  # at most one study-wide progress line this often
MAX_RESTARTS = 3  # per worker: one that keeps dying is a problem to look at, not to hide
SMALL_NET = 1_000_000  # parameters; lenet5 (62k) and simple_cnn are small, resnet18 (11M) is not
SMALL_PER_GPU = 2  # small trials leave a GPU idle between kernels; two share one well


def model_names(spec) -> set[str]:
    names = {spec.base.model.name}
    for p in spec.search:
        if p.key == "model.name":
            names |= set(p.choices)
    return names


def largest_net(spec) -> int:
    info = DATASETS[spec.base.data.dataset]
    return max(count_parameters(build(n, info.channels, info.size, info.num_classes)) for n in model_names(spec))


def auto_workers(spec, cores: int, gpus: int) -> int:
    """``--workers auto``. CPU, small net (LeNet-5, the simple CNN): one worker per core, one thread
    each. Two torch threads in one process were the slowest setting in every run on 2 shared cores
    (1.2x to 10x: the OpenMP pool waits at each barrier for a thread that lost its core), while a
    second process on a free core runs a second trial for a start of about 3 CPU s. A large net
    (ResNet-18) keeps all threads busy with long kernels: one worker. GPU: two small trials per GPU
    (one leaves it idle between kernels), one large. Figures in bench/README.md ("workers.py"),
    with the case the rule does not cover: when other jobs already hold every core, a single
    one-thread worker is faster (--workers 1 --set train.threads=1)."""
    small = largest_net(spec) < SMALL_NET
    if gpus:
        return gpus * (SMALL_PER_GPU if small else 1)
    return cores if small else 1


def devices(spec) -> list[str]:
    """The devices workers are spread over: every visible GPU when train.device is auto; none
    (each worker uses what the study says) otherwise."""
    if spec.base.train.device == "auto" and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return []


def worker_count(text: str, spec, source: str = "--workers") -> int:
    """``--workers`` (or ``source``, where the text came from): a number >= 1, or auto (for this
    machine's cores and GPUs)."""
    if text == "auto":
        gpus = len(devices(spec)) or spec.base.train.device.startswith("cuda")
        return auto_workers(spec, cpu_count(), gpus)
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
    def __init__(self, args, spec, trials: int, k: int, threads: int | None, gpus: list[str]):
        self.args, self.spec, self.trials, self.k, self.threads, self.gpus = args, spec, trials, k, threads, gpus
        self.base = cli.worker_index(args) * k  # several supervisors (a Slurm array of them) get disjoint indices
        self.grace = env_seconds(GRACE_ENV, GRACE_S)
        self.study = create_or_resume(
            spec, open_storage(args.storage, create=True), worker=self.base, same_study=args.same_study
        )
        # Progress reads go through a reader: on SQLite a plain snapshot that never holds the write lock.
        self.reader = optuna.load_study(study_name=spec.name, storage=open_storage(args.storage, create=False))
        # Queued trials (retries) are not done yet: this run adds them.
        self.before = {t.number for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}
        self.running: list[Worker] = []
        self.pending: list[Replacement] = []
        self.stopped: list[tuple[Worker, int]] = []  # workers that ended with an error, not replaced
        self.unplanned: list[tuple[Worker, int]] = []  # to replace once the store answers again
        self.signals = 0
        self.said_stopping = False
        self.changed = threading.Event()
        self.last_done = 0
        self.print_lock = threading.Lock()
        self.deadline = time.monotonic() + args.timeout if args.timeout else None
        self.start_time = time.monotonic()

    # ------------------------------------------------------------ workers

    def command(self, slot: int, quota: int) -> list[str]:
        a = self.args
        # --until: every worker runs until the study holds N; the study, not a quota, says when to stop.
        amount = ["--until", str(a.until)] if a.until is not None else ["--trials", str(quota)]
        cmd = [
            sys.executable,
            "-m",
            "hpo.run",
            "--study",
            a.study,
            *amount,
            "--workers",
            "1",
            "--worker-index",
            str(self.base + slot),
            "--keep",
            a.keep,
            "--supervised",
        ]  # the store: $HPO_STORAGE
        cmd += ["--study-name", a.study_name] if a.study_name else []
        cmd += ["--same-study"] if a.same_study else []
        if a.data_dir:
            cmd += ["--data-dir", a.data_dir]
        if a.checkpoint_dir:
            cmd += ["--checkpoint-dir", a.checkpoint_dir]
        if self.deadline is not None:
            cmd += ["--timeout", f"{max(self.deadline - time.monotonic(), 1.0):.0f}"]
        for text in a.set:
            cmd += ["--set", text]
        for option, value in (
            ("--patience", a.patience),
            ("--min-delta", a.min_delta),
        ):  # each worker watches the plateau
            cmd += [option, str(value)] if value is not None else []
        if self.threads:
            cmd += ["--set", f"train.threads={self.threads}"]
        if self.gpus:
            cmd += ["--set", f"train.device={self.gpus[slot % len(self.gpus)]}"]
        return cmd

    def start(self, slot: int, quota: int, restarts: int = 0) -> Worker:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", STORAGE_ENV: self.args.storage}  # a password never in argv (ps)
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        # A session of its own: Ctrl-C reaches the supervisor only, which forwards one SIGTERM.
        proc = subprocess.Popen(
            self.command(slot, quota),
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

    def run(self) -> int:
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for slot, quota in enumerate(quotas(self.trials, self.k)):
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
        return self.finish()

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
                if t.user_attrs.get("worker") == worker.tag and t.number not in self.before
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
            worker.quota if self.args.until is not None else worker.quota - done
        )  # --until: it stops when the study is done
        why = f"was killed ({signal.Signals(-code).name})" if code < 0 else "lost the store"
        text = f"[worker {worker.slot}] pid {worker.proc.pid} {why} after {done} of its {worker.quota} trials"
        if stuck:
            text += (
                f"; trial {_numbers(stuck)} is failed as lost once its heartbeat is {self.grace} s old, "
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
                    f"trial {_numbers(plan.stuck)} never wrote a heartbeat (its worker died as it started): "
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

    def fail_lost(self, numbers: set[int]) -> None:
        storage = self.study._storage
        for t in self.reader.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in numbers and storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                storage.get_heartbeat_stale_trial_callback()(self.study, storage.get_trial(t._trial_id))

    # ------------------------------------------------------------ reporting

    def added(self, study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
        return [t for t in study.get_trials(deepcopy=False) if t.number not in self.before]

    def progress(self) -> None:
        try:
            added = self.added(self.reader)
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
            + ", ".join(f"{counts[w]} {w}" for w in ("complete", "pruned", "failed"))
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

    def resume_command(self, added: list[optuna.trial.FrozenTrial]) -> str:
        """The same command for the trials still to do (interrupted and lost trials are redone)."""
        done = sum(
            t.state.is_finished() and not is_lost(t) and t.user_attrs.get("status") != "interrupted" for t in added
        )
        a = self.args
        return run_command(
            a.study,
            max(self.trials - done, 1),
            a.set,
            a.storage,
            workers=a.workers_asked,
            study_name=a.study_name,
            until=a.until,
        )

    def finish(self) -> int:
        added = self.added(self.study)
        done = [t for t in added if t.state.is_finished() and not is_lost(t)]
        left_running = sorted(t.number for t in added if t.state == TrialState.RUNNING)
        later = (
            f"; trial {_numbers(left_running)} was left RUNNING by a killed worker: the next run fails it as lost "
            f"{self.grace} s after its last heartbeat and retries it"
            if left_running
            else ""
        )
        if self.signals:
            marked = [t.number for t in added if t.user_attrs.get("status") == "interrupted"]
            self.say(
                f"interrupted: {'trial ' + _numbers(marked) + ' marked FAIL' if marked else 'no trial was running'}"
                f"{later}; the store is consistent; resume with: {self.resume_command(added)}"
            )
            return 130
        print(summary(self.study, self.spec, [t for t in added if not is_lost(t)]))
        lost = [t for t in added if is_lost(t)]
        if lost:
            print(
                f"lost with their worker and retried with the same parameters: trial {_numbers(t.number for t in lost)} "
                f"(kept as FAIL records)"
            )
        if self.stopped:
            why = "; ".join(
                f"worker {w.slot}: {w.last or f'exit code {code}'}"
                for w, code in sorted(self.stopped, key=lambda wc: wc[0].slot)
            )  # in slot order, not exit order
            raise HpoError(
                f"{len(self.stopped)} worker(s) stopped early ({why}); the study got {len(done)} of the "
                f"{self.trials} trials{later}; resume with: {self.resume_command(added)}"
            )
        if done and all(t.state == TrialState.FAIL for t in done):  # fewer than three each: no worker stopped
            last = done[-1].user_attrs.get("reason", "see the log above")
            raise HpoError(f"every trial failed ({len(done)}); last: {last}")
        print("report: " + report_command(self.spec.folder, self.args.storage, study_name=self.args.study_name))
        return 0


def _numbers(numbers) -> str:
    return ", ".join(f"#{n}" for n in sorted(numbers))


def run_workers(args, spec, trials: int, k: int) -> int:
    """``hpo.run`` with ``k`` > 1 workers: check everything, then supervise them."""
    gpus, cores = devices(spec), cpu_count()
    # Everything that can be wrong with the input fails here, before the store is touched.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make_sampler(spec, 0), make_pruner(spec)
    resolve_device(spec.base.train.device)
    cli.worker_index(args)
    env_seconds(GRACE_ENV, GRACE_S)
    data_mod.load(spec.base.data, spec.seed, "cpu", root=args.data_dir)  # files there, subset sizes fit
    threads = max(1, cores // k) if spec.base.train.threads == 0 else None  # a set thread count is kept
    supervisor = Supervisor(args, spec, trials, k, threads, gpus)
    warm = warmstart.enqueue(supervisor.study, getattr(args, "warm_plan", []))  # once, here: not in each worker
    amount = f"until {trials} are finished" if args.until is not None else f"adding {trials}"
    supervisor.say(
        f"study {spec.name!r} in {redact(args.storage)}: {len(supervisor.before)} trials so far, {amount} "
        f"with {min(k, trials)} workers"
        + (f" ({args.workers})" if args.workers == "auto" else "")
        + (f", first {len(warm)} warm-started from {', '.join(warm)}" if warm else "")
    )
    return supervisor.run()
