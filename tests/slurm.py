"""A real single-node Slurm for the tests: munged (as user munge), slurmctld and slurmd (as root),
configured in a temporary folder, on ports of their own, and stopped afterwards.

setup.sh installs slurm-wlm and munge (Debian); this needs root, as slurmd does."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from processes import stop

CONF = """\
ClusterName=hpotest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
ReturnToService=2
MpiDefault=none
KillWait=10
NodeName={host} CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slurm:
    def __init__(self):
        for tool in ("munged", "slurmctld", "slurmd", "sbatch", "runuser"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise RuntimeError(f"{tool} is not installed: run ./setup.sh (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise RuntimeError("a test Slurm needs root (slurmd runs jobs as their users; munged runs as munge)")
        # Not under pytest's 0700 tmp folders: munged, as user munge, must reach its socket folder.
        self.root = Path(tempfile.mkdtemp(prefix="hpo-slurm-"))
        self.root.chmod(0o755)
        self.procs: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def start(self) -> Slurm:
        root, munge = self.root, self.root / "munge"
        for d in ("munge", "state", "spool"):
            (root / d).mkdir()
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(munge, "munge", "munge"), shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        cpus = len(os.sched_getaffinity(0))
        (root / "slurm.conf").write_text(
            CONF.format(host=socket.gethostname(), root=root, cpus=cpus, ctld_port=free_port(), d_port=free_port())
        )
        self._daemon(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                "/usr/sbin/munged",
                "-F",
                f"--key-file={key}",
                f"--socket={munge}/munge.sock",
                f"--pid-file={munge}/munged.pid",
                f"--log-file={munge}/munged.log",
                f"--seed-file={munge}/munged.seed",
            ],
            "munged",
        )
        self._wait(lambda: (munge / "munge.sock").exists(), "munged's socket")
        conf = str(root / "slurm.conf")
        self._daemon(["slurmctld", "-D", "-i", "-f", conf], "slurmctld")
        self._daemon(["slurmd", "-D", "-f", conf], "slurmd")
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%t", check=False).stdout.strip() == "idle", "an idle node")
        return self

    def _daemon(self, cmd: list[str], name: str) -> None:
        out = open(self.root / f"{name}.out", "w")
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env))

    def _wait(self, check, what: str, deadline: float = 60) -> None:
        end = time.time() + deadline
        while time.time() < end:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited ({p.returncode}) before {what}: {self.logs()}")
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"no {what} after {deadline} s: {self.logs()}")

    def logs(self) -> str:
        return " | ".join(
            f"{p.name}: {p.read_text()[-800:]}"
            for p in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log"))
        )

    def run(self, *cmd: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env, cwd=cwd, timeout=60)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
        return proc

    def sbatch(self, script: Path, *options: str, cwd: Path) -> str:
        """Submit; the job id."""
        return self.run("sbatch", "--parsable", *options, str(script), cwd=cwd).stdout.strip().split(";")[0]

    def queued(self, job: str) -> list[str]:
        """The job's array tasks still pending or running (``JOB_TASK``)."""
        out = self.run("squeue", "-h", "-r", "-j", job, "-o", "%i", check=False)
        return out.stdout.split() if out.returncode == 0 else []

    def stop(self) -> None:
        munged = self.root / "munge" / "munged.pid"
        for p in reversed(self.procs):  # slurmd, slurmctld, then munged
            if p is self.procs[0] and munged.exists():  # runuser's child, started by us: stop it by its pid
                try:
                    os.kill(int(munged.read_text()), 15)
                except (ValueError, ProcessLookupError):
                    pass
            stop(p, timeout=20)
        shutil.rmtree(self.root, ignore_errors=True)
