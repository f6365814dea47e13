"""A store password never reaches a worker's command line (where `ps` shows it to every user):
the supervisor hands the URL over in the environment, in the worker's plan ($HPO_PLAN). A real two-worker run on
the PostgreSQL test server (trust auth ignores the password), each worker's /proc/PID/cmdline
read while it runs."""

from __future__ import annotations

import os
import re
import signal
import time
import uuid

import optuna
from processes import start

from hpo.runs.plan import PLAN_ENV, WORKER_FLAG, Plan

SECRET = "hunter2-wt11"
URL = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/test"


def test_workers_get_the_store_url_through_the_environment_never_argv(study_dir, tmp_path):
    name = f"tiny_wt11_{uuid.uuid4().hex[:8]}"
    proc = start(
        "--study",
        "tiny",
        "--study-name",
        name,
        "--trials",
        "2",
        "--workers",
        "2",
        "--keep",
        "none",
        "--storage",
        URL,
        "--set",
        "data.train_size=300",
        "--set",
        "train.epochs=30",  # workers that outlive the reads of their /proc entries on a busy machine
        cwd=tmp_path,
    )
    try:
        pids, lines, deadline = [], [], time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline:  # "[worker i] pid N: ..." as each starts
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            pids += [int(p) for p in re.findall(r"^\[worker \d\] pid (\d+):", line)]
        assert len(pids) == 2, "".join(lines)
        for pid in pids:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode().split("\0")
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().decode()
            assert "hpo.run" in argv and WORKER_FLAG in argv, (argv, proc.poll(), "".join(lines))
            assert not any(SECRET in a for a in argv) and "--storage" not in argv, argv
            plan = next(kv.split("=", 1)[1] for kv in environ.split("\0") if kv.startswith(f"{PLAN_ENV}="))
            assert Plan.from_json(plan).storage == URL  # readable by this user only (/proc/PID/environ is 0400)
            assert oct(os.stat(f"/proc/{pid}/environ").st_mode & 0o777) == "0o400"
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert SECRET not in "".join(lines) + out + err
        study = optuna.load_study(study_name=name, storage=URL)
        assert len(study.trials) == 2 and SECRET not in repr(study.user_attrs)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        try:
            optuna.delete_study(study_name=name, storage=URL)
        except KeyError:
            pass
