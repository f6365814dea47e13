"""hpo.dashboard as a user meets it: a real subprocess serving a real SQLite store and artifact
folder, read through optuna-dashboard's JSON API and rendered by a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.distributions import FloatDistribution
from processes import hpo, stop

ROOT = Path(__file__).resolve().parents[1]
STUDY = "lenet_lr"
WEIGHTS = b"not really weights " * 64


def _build_store(root: Path) -> int:
    """storage/hpo.db with one study of 5 trials under ``root``; the last trial ran through
    ask/tell, as hpo.run's trials do, and uploaded its weights to ``root / "models"``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (root / "storage").mkdir()
    (root / "models").mkdir()
    study = optuna.create_study(
        study_name=STUDY, storage=f"sqlite:///{root / 'storage' / 'hpo.db'}", direction="maximize"
    )
    study.set_user_attr("metrics", ["val_acc"])
    space = {"lr": FloatDistribution(1e-4, 1.0, log=True), "momentum": FloatDistribution(0.0, 0.99)}
    for i in range(4):
        study.add_trial(
            optuna.create_trial(
                params={"lr": 10 ** (-3 + i / 2), "momentum": 0.5 + i / 10},
                distributions=space,
                value=80.0 + i,
                intermediate_values={1: 50.0 + i, 2: 70.0 + i, 3: 80.0 + i},
                user_attrs={"status": "ok", "epochs_run": 3},
            )
        )
    study.enqueue_trial({"lr": 0.05, "momentum": 0.9})
    trial = study.ask(space)
    for epoch in (1, 2, 3):
        trial.report(60.0 + epoch, epoch)
    weights = root / "weights.pt"
    weights.write_bytes(WEIGHTS)
    artifact_id = upload_artifact(
        artifact_store=FileSystemArtifactStore(root / "models"), file_path=str(weights), study_or_trial=trial
    )
    trial.set_user_attr("status", "ok")
    trial.set_user_attr("weights_artifact_id", artifact_id)
    study.tell(trial, 90.0)
    return study._study_id


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return hpo(*args, module="hpo.dashboard", cwd=cwd, env={"PYTHONPATH": str(ROOT)}, timeout=60)


@contextmanager
def _serving(*args: str, cwd: Path):
    """The dashboard as a subprocess on a free port, until it says it serves there and the port
    answers; stopped on the way out. Yields (process, log, port). A port found free can be taken
    before the dashboard binds it: then it says so (exit 2) and the next free port is tried.
    Its output goes to a file: a pipe nobody reads would stall the server once full."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(5):
        port = _free_port()
        log = cwd / f"dashboard-{port}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpo.dashboard", *args, "--port", str(port)],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    if f"port {port} on" in log.read_text() and "is in use" in log.read_text():
                        break  # taken in between: another port
                    pytest.fail(f"the dashboard exited with {proc.returncode}:\n{log.read_text()}")
                try:
                    if f"http://127.0.0.1:{port}/" in log.read_text():  # it bound the port and says so
                        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                        yield proc, log, port
                        return
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"the dashboard did not answer on port {port} in 30 s:\n{log.read_text()}")
                time.sleep(0.1)
        finally:
            stop(proc, timeout=10)
    pytest.fail("five free ports were each taken before the dashboard could bind them")


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.read()


def _listeners(port: int) -> set[str]:
    """Local addresses listening on ``port``, from the kernel's socket tables (hex, as Linux writes them)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


LOOPBACK_V4 = "0100007F"  # 127.0.0.1, little-endian hex
ANY_V4 = "00000000"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    return root, _build_store(root)


@pytest.fixture(scope="module")
def served(store):
    """The dashboard over the test store, with every option but --host given, as the brief's user runs it."""
    root, study_id = store
    with _serving(
        "--storage", f"sqlite:///{root / 'storage' / 'hpo.db'}", "--artifact-dir", str(root / "models"), cwd=root
    ) as (_, log, port):
        yield root, study_id, port, log


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.fail("Chromium is missing: run ./setup.sh (it installs Debian's chromium)")
    return exe


def _browse(chromium: str, url: str, profile: Path, *extra: str) -> str:
    """Load ``url`` in headless Chromium, letting the page run 15 s of virtual time (its API calls
    and rendering) first; returns what Chromium printed on stdout."""
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *extra,
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def _text(html: str) -> str:
    """Rendered DOM to its words: tags out, whitespace squeezed."""
    import re

    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


# ---------------------------------------------------------------- the API


def test_api_serves_the_study_trials_and_weights(served):
    root, study_id, port, log = served
    summaries = json.loads(_get(port, "/api/studies"))["study_summaries"]
    assert [(s["study_name"], s["directions"]) for s in summaries] == [(STUDY, ["maximize"])]
    assert summaries[0]["study_id"] == study_id

    detail = json.loads(_get(port, f"/api/studies/{study_id}"))
    assert detail["name"] == STUDY and detail["directions"] == ["maximize"]
    trials = detail["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
    assert all(t["state"] == "Complete" for t in trials)
    last = trials[4]
    assert {p["name"]: p["param_internal_value"] for p in last["params"]} == {"lr": 0.05, "momentum": 0.9}
    assert last["values"] == [90.0]
    assert [(v["step"], v["value"]) for v in last["intermediate_values"]] == [(1, 61.0), (2, 62.0), (3, 63.0)]
    assert {a["key"]: a["value"] for a in last["user_attrs"]}["status"] == "ok"
    assert [t["number"] for t in detail["best_trials"]] == [4]

    # The weights the trial uploaded are offered, and are the bytes that went in.
    assert json.loads(_get(port, "/api/meta"))["artifact_is_available"] is True
    (artifact,) = last["artifacts"]
    assert artifact["filename"] == "weights.pt"
    assert _get(port, f"/artifacts/{study_id}/{last['trial_id']}/{artifact['artifact_id']}") == WEIGHTS

    assert f"open http://127.0.0.1:{port}/dashboard" in log.read_text()


# ---------------------------------------------------------------- the page, in a real browser


def test_browser_renders_the_study_list_and_pages(served, chromium, tmp_path):
    root, study_id, port, _ = served
    base = f"http://127.0.0.1:{port}/dashboard"

    home = _text(_browse(chromium, base, tmp_path / "profile", "--dump-dom"))
    assert STUDY in home, f"the study list does not name {STUDY!r}: {home[:500]}"

    study = _text(_browse(chromium, f"{base}/studies/{study_id}", tmp_path / "profile", "--dump-dom"))
    assert f"{STUDY} (id={study_id})" in study
    assert "Best Trial (number=4) 90 Params = [lr: 0.05, momentum: 0.9]" in study, study[:1500]
    for number in range(5):  # the intermediate-values chart's legend: one curve per trial
        assert f"trial #{number}" in study, f"trial {number} missing from the study page: {study[:1500]}"

    trials = _text(_browse(chromium, f"{base}/studies/{study_id}/trials?numbers=4", tmp_path / "profile", "--dump-dom"))
    for number in range(5):
        assert f"Trial {number}" in trials, f"trial {number} missing from the trial list: {trials[:800]}"
    # The selected trial's detail: its parameters and the weights it uploaded.
    assert "lr 0.05 momentum 0.9" in trials
    assert "Artifacts weights.pt" in trials

    shot = tmp_path / "study.png"
    _browse(
        chromium,
        f"{base}/studies/{study_id}",
        tmp_path / "profile",
        "--window-size=1400,1000",
        f"--screenshot={shot}",
        "--hide-scrollbars",
    )
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 1400 and int.from_bytes(png[20:24], "big") == 1000
    assert len(png) > 20_000, f"a {len(png)}-byte screenshot is a blank page, not the study's charts"


# ---------------------------------------------------------------- where it listens


def test_listens_on_loopback_only_by_default(served):
    _, _, port, log = served
    assert _listeners(port) == {LOOPBACK_V4}
    assert "warning" not in log.read_text()


def test_open_to_all_warns_and_defaults_find_the_store(store, tmp_path):
    """--host 0.0.0.0 says who can reach it. Run from the project folder with no --storage or
    --artifact-dir, it finds storage/hpo.db and models/ by itself."""
    root, study_id = store
    with _serving("--host", "0.0.0.0", cwd=root) as (_, log, port):
        assert _listeners(port) == {ANY_V4}
        assert json.loads(_get(port, "/api/studies"))["study_summaries"][0]["study_name"] == STUDY
        assert json.loads(_get(port, "/api/meta"))["artifact_is_available"] is True
        text = log.read_text()
    (warning,) = [line for line in text.splitlines() if line.startswith("warning:")]
    assert "0.0.0.0" in warning and "anyone who can reach" in warning and "read and change" in warning
    assert f"open http://127.0.0.1:{port}/dashboard" in text


def test_missing_artifact_folder_runs_without_artifacts(store, tmp_path):
    root, _ = store
    with _serving(
        "--storage",
        f"sqlite:///{root / 'storage' / 'hpo.db'}",
        "--artifact-dir",
        str(tmp_path / "nowhere"),
        cwd=tmp_path,
    ) as (_, log, port):
        assert json.loads(_get(port, "/api/meta"))["artifact_is_available"] is False
        assert json.loads(_get(port, "/api/studies"))["study_summaries"][0]["study_name"] == STUDY
        assert f"no artifact folder at {tmp_path / 'nowhere'}" in log.read_text()
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- bad input: one line, exit 2


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


def test_missing_store_is_one_line_and_not_created(tmp_path):
    line = _one_error_line(_dashboard("--port", str(_free_port()), cwd=tmp_path))
    assert line == "error: no store at storage/hpo.db: run `python -m hpo.run --study NAME` first"
    assert not (tmp_path / "storage").exists()

    elsewhere = tmp_path / "other.db"
    line = _one_error_line(_dashboard("--storage", f"sqlite:///{elsewhere}", cwd=tmp_path))
    assert str(elsewhere) in line and not elsewhere.exists()


@pytest.mark.parametrize(
    "url, says",
    [
        ("not-a-url", "malformed storage URL"),
        ("sqlite://storage/hpo.db", "malformed SQLite URL"),
        ("postgresql://user:hunter2@127.0.0.1:1/hpo", "store postgresql://user:***@127.0.0.1:1/hpo is out of reach"),
    ],
)
def test_bad_storage_url_is_one_line(tmp_path, url, says):
    line = _one_error_line(_dashboard("--storage", url, cwd=tmp_path))
    assert says in line and "hunter2" not in line
    assert list(tmp_path.iterdir()) == []


def test_port_in_use_is_one_line(store):
    root, _ = store
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(_dashboard("--port", str(port), cwd=root))
    assert line == f"error: port {port} on 127.0.0.1 is in use: pick another with --port"


def test_every_option_states_its_default():
    done = _dashboard("--help", cwd=ROOT)
    assert done.returncode == 0
    help_text = " ".join(done.stdout.split())
    for default in (
        "(default: sqlite:///storage/hpo.db)",
        "(default: models)",
        "(default: 127.0.0.1)",
        "(default: 8080)",
    ):
        assert default in help_text
