"""Entry points as real subprocesses, and waiting for what they say: a line on stderr, with a
deadline, never a fixed sleep. Plain helpers for the tests that watch a run as it goes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


def start(*args: str, cwd: Path | None = None, env: dict | None = None, module: str = "hpo.run") -> subprocess.Popen:
    """``python -m MODULE ARGS`` in the background, its stdout and stderr piped (read them with
    ``communicate``); ``env`` adds to this process's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


class Watched:
    """``python -m MODULE ARGS`` with its stderr read line by line as it comes (a thread keeps the
    pipe drained, so the process never stalls on a full pipe), and its stdout collected at the end."""

    def __init__(self, *args: str, cwd: Path, env: dict | None = None, module: str = "hpo.run"):
        self.proc = start(*args, cwd=cwd, env=env, module=module)
        self.lines: list[str] = []
        self.grew = threading.Condition()
        self.out = ""
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._out = threading.Thread(target=self._read_out, daemon=True)
        self._err.start(), self._out.start()

    def _read_err(self) -> None:
        for chunk in self.proc.stderr:
            # tqdm redraws its bar with \r: each redraw counts as a line of its own
            with self.grew:
                self.lines += [part for part in chunk.rstrip("\n").split("\r") if part.strip()]
                self.grew.notify_all()
        with self.grew:
            self.grew.notify_all()

    def _read_out(self) -> None:
        self.out = self.proc.stdout.read()

    @property
    def err(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, deadline: float = 120) -> re.Match:
        """The first stderr line that matches ``pattern`` (a regex), waiting for it up to ``deadline`` s."""
        regex, end, seen = re.compile(pattern), time.monotonic() + deadline, 0
        with self.grew:
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                seen = len(self.lines)
                if not self._err.is_alive():
                    raise AssertionError(
                        f"the process ended (code {self.proc.poll()}) without a line like "
                        f"{pattern!r}:\n{self.err[-3000:]}"
                    )
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line like {pattern!r} in {deadline} s:\n{self.err[-3000:]}")
                self.grew.wait(min(left, 1.0))

    def finish(self, timeout: float = 240) -> int:
        """Wait for the end; the exit code."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._err.join(10), self._out.join(10)
        return self.proc.returncode


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` s; reaped either way."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Ran(subprocess.CompletedProcess):
    """A finished entry point: ``.returncode``, ``.stdout``, ``.stderr``, or unpacked as
    ``code, out, err = hpo(...)``."""

    def __iter__(self):
        return iter((self.returncode, self.stdout, self.stderr))


def hpo(
    *args: str,
    cwd: Path | None = None,
    env: dict | None = None,
    module: str = "hpo.run",
    timeout: float = 300,
    inherit: bool = True,
    check: int | None = None,
) -> Ran:
    """Run an entry point to its end. ``env`` adds to this process's environment, or is the whole
    environment with ``inherit=False``; ``check``: the exit code it must end with (else an
    AssertionError with the end of its stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})} if inherit else env,
    )
    if check is not None:
        assert proc.returncode == check, proc.stderr[-3000:]
    return Ran(proc.args, proc.returncode, proc.stdout, proc.stderr)
