"""What every benchmark prints about the machine it ran on."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def busy_seconds() -> float | None:
    """CPU seconds every core has spent busy since boot (/proc/stat, all but idle and iowait)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Neighbours:
    """How many cores other processes kept busy while something ran (Linux): /proc/stat's busy
    time less our own. ``own()`` gives our CPU seconds so far; by default this process's and its
    waited-for children's. Near 0: the figure is clean; near the core count: it shared the CPU."""

    def __init__(self, own=lambda: sum(os.times()[:4])):
        self.own = own
        self.start = (busy_seconds(), own(), time.perf_counter())

    def cores(self, own_end: float | None = None) -> float | None:
        busy, own, now = busy_seconds(), self.own() if own_end is None else own_end, time.perf_counter()
        if busy is None or self.start[0] is None:
            return None
        return max(0.0, (busy - self.start[0]) - (own - self.start[1])) / (now - self.start[2])
