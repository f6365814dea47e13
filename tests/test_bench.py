"""bench/'s helpers with logic of their own (benchmarks themselves are not tests): the plain
Optuna peer runs the study and reports each epoch, the process-tree meter counts CPU that
getrusage cannot see, and bench/gpu.sh without CUDA says so in one line and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "peers"))

from fmnist import raw_layout  # noqa: E402
from meter import measure  # noqa: E402


def test_optuna_peer_reports_every_epoch(tmp_path, fashion_mnist_system):
    data = raw_layout(tmp_path / "data")
    before = time.time()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "peers" / "optuna_simple.py"),
            "--data-dir",
            str(data),
            "--trials",
            "2",
            "--epochs",
            "2",
            "--train-size",
            "300",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    trials = result["trials"]
    assert len(trials) == 2 and {t["state"] for t in trials} == {"complete"}  # MedianPruner's 5 startup trials
    assert [len(t["epochs"]) for t in trials] == [2, 2]
    times = [at for t in trials for at, _ in t["epochs"]]
    assert times == sorted(times) and times[0] > before  # wall-clock, in order: one process
    # percent of the 6,000 held-out images, as hpo holds out: acc * 60 counts correct images
    correct = [acc * 60 for t in trials for _, acc in t["epochs"]]
    assert all(0 <= c <= 6000 and c == pytest.approx(round(c), abs=1e-6) for c in correct)


def test_raw_layout_is_what_torchvision_reads(tmp_path, fashion_mnist_system):
    from torchvision import datasets

    root = raw_layout(tmp_path)
    assert raw_layout(tmp_path) == root  # again: the unpacked files are kept
    train = datasets.FashionMNIST(str(root), train=True, download=False)
    assert len(train) == 60000 and tuple(train.data.shape[1:]) == (28, 28)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        raw_layout(tmp_path / "other", source=tmp_path / "nowhere")


def test_meter_counts_a_grandchild_nobody_waits_for(tmp_path):
    # The child starts a grandchild that burns about 1 CPU s and exits without waiting for it, as
    # Ray's driver leaves its daemons: getrusage(RUSAGE_CHILDREN) never sees that CPU.
    script = tmp_path / "leave.py"
    script.write_text(
        textwrap.dedent("""
        import os, subprocess, sys, time
        spin = (
            "import time\\nt = time.process_time()\\n"
            "while time.process_time() - t < 1.0: pass\\nprint('done', flush=True)"
        )
        child = subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE, text=True)
        child.stdout.readline()  # the grandchild has spent its second; it is not waited for
        time.sleep(0.6)  # a few samples of the zombie
        os._exit(0)  # no clean-up: Popen.__del__ would reap it, and getrusage would count it
    """)
    )
    m = measure([sys.executable, str(script)])
    assert m.returncode == 0
    assert m.cpu_s >= 1.0
    assert m.peak_rss > 5 * 2**20  # two Python processes at once
    assert m.wall_s >= 1.0 and m.neighbours is not None and m.neighbours >= 0


def test_gpu_sh_without_cuda_is_one_line():
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 0
    assert proc.stdout.splitlines() == ["gpu.sh: no CUDA here (torch sees no CUDA device): nothing to run"]
    assert proc.stderr == ""
