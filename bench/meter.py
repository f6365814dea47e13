"""One command, measured whole: wall time, CPU seconds and peak memory of its process tree, and
the cores other processes used meanwhile (Linux /proc)."""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from machine import Neighbours

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, int, float] | None:
    """(parent pid, start time, CPU seconds) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / TICK


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class TreeMeter(threading.Thread):
    """Samples a process and all its descendants every ``interval`` s: the sum of their resident
    memory (its peak is kept) and each one's CPU seconds (its last sample is kept). Daemons that
    nobody waits for (Ray's) are counted too, which getrusage(RUSAGE_CHILDREN) would miss."""

    def __init__(self, root: int, interval: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = 0
        self.cpu: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds
        self.done = threading.Event()

    def sample(self) -> None:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                s = _stat(int(entry.name))
                if s is not None:
                    stats[int(entry.name)] = s
        tree, grew = {self.root}, True
        while grew:
            more = {pid for pid, (ppid, _, _) in stats.items() if ppid in tree} - tree
            tree |= more
            grew = bool(more)
        rss = 0
        for pid in tree:
            if pid in stats:
                self.cpu[(pid, stats[pid][1])] = stats[pid][2]
                rss += _rss(pid)
        self.peak_rss = max(self.peak_rss, rss)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.sample()

    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    start: float  # time.time() at the start: the origin of "time to ..." figures
    wall_s: float
    cpu_s: float
    peak_rss: int  # bytes, the whole tree at once
    neighbours: float | None  # cores other processes used meanwhile


def measure(cmd: list[str], **popen) -> Measured:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start, t0 = time.time(), time.perf_counter()
    own = lambda: sum(os.times()[:2])  # noqa: E731  this process (the meter's sampling), not its children
    neighbours = Neighbours(own=own)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    meter = TreeMeter(proc.pid)
    meter.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    meter.done.set()
    meter.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    # Both are lower bounds of the same total: getrusage misses daemons nobody waits for, the
    # samples miss the last quarter second of each process.
    cpu = max(waited, meter.cpu_seconds())
    return Measured(proc.returncode, out, err, start, wall, cpu, meter.peak_rss, neighbours.cores(own_end=own() + cpu))
