"""The soak, short: a real study on two workers and a PostgreSQL server of its own, with every
fault bench/soak.py knows injected at random (kill -9 of a worker, SIGTERM to the supervisor, a
server restart, a full disk under models/) while the dashboard and the report read the store.
At the end nothing is lost, nothing counted twice, and every complete trial's value is the one its
configuration gives undisturbed. The long run and its figures: bench/soak.py, bench/README.md."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import soak  # noqa: E402

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None or not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")),
    reason="the soak mounts a tmpfs and starts its own PostgreSQL as user postgres: it needs root",
)


def test_a_disturbed_study_loses_nothing_counts_nothing_twice_and_trains_as_undisturbed(tmp_path):
    figures = soak.soak(tmp_path, seconds=75, trials=10, seed=1)
    assert set(figures["faults"]) == set(soak.FAULTS) and all(figures["faults"].values()), figures
    assert figures["asked"] % 10 == 0 and figures["finished"] == figures["asked"], figures  # 10, more if time was left
    assert figures["unfinished"] == [], figures
    assert figures["counted_twice"] == [], figures
    assert (
        figures["values_equal_undisturbed"] == figures["values_checked"] == figures["complete"]
        and not figures["values_differ"]
    ), figures
    assert figures["checkpoints_left"] == [], figures
    assert figures["dashboard_alive"] and figures["dashboard_polls"].get("ok"), figures
    assert figures["reports"].get("exit 0"), figures
