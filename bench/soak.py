"""Soak: a real study run for a long time with faults injected at random, then checked.

    sudo .venv/bin/python bench/soak.py [--minutes 30] [--trials 200] [--seed 0]

Faults, at seeded random times: kill -9 of a worker; SIGTERM to the supervisor (the same command
is then run again, as a user or a scheduler would); a restart of PostgreSQL (a private server this
script starts with initdb and pg_ctl, so restarting it disturbs nobody); a full disk for models/
(a small tmpfs, filled for a few seconds). The dashboard and the report read the store meanwhile.

Then it checks what "no work is lost, no evidence is mixed" means: exactly the trials asked for
finished, none RUNNING or WAITING, none counted twice (one finished trial per logical trial, its
retries included), every COMPLETE trial's value equal to the value of its configuration trained
undisturbed (retrained here: CPU, one thread, bit-identical), no checkpoint file left.
Needs root (tmpfs, runuser postgres). tests/test_soak.py runs a short one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import optuna  # noqa: E402
from machine import Neighbours, cpu_model  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

FAULTS = ("kill_worker", "term_supervisor", "restart_postgres", "fill_disk")
ENV = {"HPO_HEARTBEAT_S": "1", "HPO_GRACE_S": "5", "HPO_STORE_WAIT_S": "60", "PYTHONPATH": str(REPO)}
STUDY = """
description = "soak: a small real study, disturbed"
seed = 0
[data]
dataset = "fashion_mnist"
train_size = {train_size}
test_size = 200
[model]
name = "lenet5"
[train]
epochs = {epochs}
batch_size = 64
momentum = 0.9
threads = 1
[search]
lr = {{ low = 0.005, high = 0.05, log = true }}
[pruner]
name = "none"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """A real PostgreSQL server of its own (trust auth on loopback), to restart at will."""

    def __init__(self):
        self.bin = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: float(p.parent.name))
        self.root = Path(tempfile.mkdtemp(prefix="hpo-soak-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.port = free_port()
        self._as_postgres("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _as_postgres(self, tool: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / tool), *args], check=True, capture_output=True
        )

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", options, *args)

    def start(self) -> None:
        self._ctl("-w", "start")

    def restart(self) -> None:
        self._ctl("-w", "-m", "fast", "restart")  # fast: every client's connection is cut

    def close(self) -> None:
        self._ctl("-w", "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


class SmallDisk:
    """A tmpfs of ``mib`` MiB at ``path`` (models/), filled to the last byte on demand."""

    def __init__(self, path: Path, mib: int):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)], check=True)
        self.filler = path / ".filler"

    def fill(self) -> None:
        with open(self.filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 16))
                    f.flush()
            except OSError:  # ENOSPC: full
                pass

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Readers(threading.Thread):
    """The dashboard (one process, polled) and the report (run again and again) read the store."""

    def __init__(self, cwd: Path, url: str, env: dict, every_s: float):
        super().__init__(daemon=True)
        self.cwd, self.url, self.env, self.every = cwd, url, env, every_s
        self.port = free_port()
        self.dashboard = subprocess.Popen(
            [sys.executable, "-m", "hpo.dashboard", "--storage", url, "--port", str(self.port)],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.polls, self.reports = Counter(), Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/studies", timeout=10) as r:
                    self.polls["ok" if r.status == 200 else f"http {r.status}"] += 1
            except Exception as e:  # a restarting server, a dashboard not up yet
                self.polls[type(e).__name__] += 1
            report = subprocess.run(
                [sys.executable, "-m", "hpo.report", "studies/soak", "--storage", self.url],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
            )
            said = report.stderr.strip().splitlines()[-1:] if report.returncode else []
            self.reports[f"exit {report.returncode}" + "".join(f": {line[:100]}" for line in said)] += 1

    def close(self) -> dict:
        self.stop.set()
        self.join(120)
        alive = self.dashboard.poll() is None
        self.dashboard.terminate()
        self.dashboard.wait(30)
        return {"dashboard_alive": alive, "dashboard_polls": dict(self.polls), "reports": dict(self.reports)}


def supervise(cwd: Path, url: str, trials: int, env: dict) -> subprocess.Popen:
    command = ["--study", "soak", "--until", str(trials), "--workers", "2", "--storage", url, "--quiet"]
    return subprocess.Popen(
        [sys.executable, "-m", "hpo.run", *command],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(cwd / "runs.log", "a"),  # noqa: SIM115 (the child holds it)
    )


def inject(rng: random.Random, fault: str, proc: subprocess.Popen, pg: PrivatePostgres, disk: SmallDisk) -> bool:
    """One fault; False where it had nothing to act on (no worker yet)."""
    if fault == "kill_worker":
        end = time.monotonic() + 30
        while not children(proc.pid) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.2)  # the supervisor is starting its workers
        workers = children(proc.pid)
        if not workers:
            return False
        os.kill(rng.choice(workers), signal.SIGKILL)
    elif fault == "term_supervisor":
        proc.send_signal(signal.SIGTERM)
    elif fault == "restart_postgres":
        pg.restart()
    else:
        disk.fill()
        time.sleep(rng.uniform(2, 6))
        disk.free()
    return True


def soak(
    cwd: Path, seconds: float, trials: int, seed: int = 0, epochs: int = 3, train_size: int = 1500, verify: int = 0
) -> dict:
    """Run the study with faults for ``seconds``, ``trials`` trials at a time (a run that finishes
    early is followed by ``--until`` the next ``trials`` more, as a user extends a study), then the
    checks. ``verify``: retrain every trial a fault touched and this many others at random (0: all)."""
    (cwd / "studies" / "soak").mkdir(parents=True, exist_ok=True)
    (cwd / "studies" / "soak" / "study.toml").write_text(STUDY.format(epochs=epochs, train_size=train_size))
    rng, faults, rounds, codes, target = random.Random(seed), Counter(), 0, Counter(), trials
    pg, disk = PrivatePostgres(), SmallDisk(cwd / "models", 16)
    env = {**os.environ, **ENV}
    readers, schedule = None, []
    start = time.monotonic()
    try:
        while True:
            rounds += 1
            proc = supervise(cwd, pg.url, target, env)
            while proc.poll() is None:
                time.sleep(rng.uniform(2, 8))
                if readers is None and "soak" in optuna.get_all_study_names(pg.url):
                    readers = Readers(cwd, pg.url, env, every_s=max(5.0, seconds / 20))  # once there is a store
                    readers.start()
                if time.monotonic() - start < seconds and proc.poll() is None:
                    if not schedule:  # every kind once, in a random order, then again
                        schedule = rng.sample(FAULTS, len(FAULTS))
                    fault = schedule.pop()
                    faults[fault] += inject(rng, fault, proc, pg, disk)
            codes[proc.returncode] += 1
            if proc.returncode == 0 and time.monotonic() - start < seconds:
                target += trials  # done before the time is up: ask for more
            elif proc.returncode == 0:
                break
            if rounds > 200:
                raise RuntimeError(f"the study never finished: exit codes {dict(codes)}; see {cwd / 'runs.log'}")
        wall = time.monotonic() - start
        read = readers.close() if readers is not None else {}
        figures = {"seconds": round(wall), "rounds": rounds, "exit_codes": dict(codes), "faults": dict(faults), **read}
        figures.update(check(cwd, pg.url, target, random.Random(seed), verify))
        return figures
    finally:
        if readers is not None:
            readers.stop.set()
            readers.dashboard.kill()
        disk.close()
        pg.close()


def check(cwd: Path, url: str, trials: int, rng: random.Random, verify: int) -> dict:
    """The end state, and the COMPLETE trials retrained undisturbed (see ``soak``'s ``verify``)."""
    from hpo import config
    from hpo.search.space import trial_config
    from hpo.storage.store import is_lost
    from hpo.training import data as data_mod
    from hpo.training.loop import fit, setup_runtime

    all_trials = optuna.load_study(study_name="soak", storage=url).trials
    counted = [t for t in all_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    logical = Counter(t.user_attrs.get("checkpoint_of", t.number) for t in counted)
    spec = config.load(cwd / "studies" / "soak")
    equal, differ = 0, []
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    if verify:  # every retry (of a lost or interrupted trial) and a random sample of the rest
        touched = [t for t in complete if t.user_attrs.get("checkpoint_of", t.number) != t.number]
        rest = [t for t in complete if t not in touched]
        complete = touched + rng.sample(rest, min(verify, len(rest)))
    for t in complete:
        cfg = dataclasses.replace(
            trial_config(optuna.trial.FixedTrial(t.params, t.number), spec), seed=t.user_attrs["seed"]
        )
        assert json.loads(json.dumps(cfg.to_dict())) == t.user_attrs["config"], f"trial #{t.number}: another recipe"
        setup_runtime(cfg)
        result, _ = fit(cfg, data_mod.load(cfg.data, spec.seed, "cpu"))
        if result.final_val_acc == t.value:
            equal += 1
        else:
            differ.append((t.number, t.value, result.final_val_acc))
    left = [p.name for p in (cwd / "models" / "checkpoints").glob("*.pt")] if (cwd / "models").exists() else []
    return {
        "asked": trials,
        "finished": len(counted),
        "complete": sum(t.state == TrialState.COMPLETE for t in counted),
        "lost_and_retried": sum(is_lost(t) for t in all_trials),
        "interrupted_and_retried": sum(t.user_attrs.get("status") == "interrupted" for t in all_trials),
        "resumed_from_checkpoint": sum(bool(t.user_attrs.get("resumed_from_epoch")) for t in counted),
        "unfinished": [t.number for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)],
        "counted_twice": sorted(n for n, k in logical.items() if k > 1),
        "values_checked": len(complete),
        "values_equal_undisturbed": equal,
        "values_differ": differ,
        "checkpoints_left": left,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30, help="how long faults are injected (default: %(default)s)")
    ap.add_argument("--trials", type=int, default=100, help="trials asked for at a time (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=3, help="(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the faults and their times (default: %(default)s)")
    ap.add_argument(
        "--verify", type=int, default=40, help="retrain every retried trial and N others (0: all; default: %(default)s)"
    )
    args = ap.parse_args()
    neighbours = Neighbours()
    with tempfile.TemporaryDirectory(prefix="hpo-soak-") as tmp:
        figures = soak(Path(tmp), args.minutes * 60, args.trials, args.seed, args.epochs, verify=args.verify)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; other processes used {neighbours.cores():.2f} cores")
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
