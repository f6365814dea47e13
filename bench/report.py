"""How long `python -m hpo.report` takes on a study of N trials: the whole command (PNGs included),
and with --no-png, in interleaved rounds, with the machine and the neighbour load printed.

    .venv/bin/python bench/report.py [--trials 100] [--rounds 3]

The study is tests/truth.py's ground-truth "cliff" study (lr with an optimum, a momentum cliff
where trials diverge, an irrelevant batch size; 6 epochs, pruned trials among them), written into
a real SQLite store as hpo records trials, so the report does all its work: importances at two
epochs, effects with intervals and partial dependence, early-stop regions, eight PNGs.
Target (issue 20): at most 15 s for 100 trials on these 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import truth  # noqa: E402  (tests/truth.py: the ground-truth studies)
from machine import cpu_model, load_average  # noqa: E402  (bench/machine.py)
from meter import measure  # noqa: E402

STUDY_FILE = 'description = "ground truth: cliff"\n[search]\nlr = { low = 1e-4, high = 1.0, log = true }\n'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "studies" / "cliff").mkdir(parents=True)
        (root / "studies" / "cliff" / "study.toml").write_text(STUDY_FILE)
        (root / "storage").mkdir()
        truth.build(f"sqlite:///{root / 'storage' / 'hpo.db'}", "cliff", "cliff", n=args.trials)
        print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average before: {load_average()}")
        print(f"study: tests/truth.py cliff, {args.trials} trials x {truth.EPOCHS} epochs")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        runs: dict[str, list] = {"whole command": [], "--no-png": []}
        for r in range(args.rounds):  # interleaved: a busy spell falls on both
            for name, extra in (("whole command", []), ("--no-png", ["--no-png"])):
                m = measure([sys.executable, "-m", "hpo.report", "studies/cliff", *extra], cwd=root, env=env)
                if m.returncode:
                    print(m.stderr[-2000:], file=sys.stderr)
                    return 1
                runs[name].append(m)
                print(
                    f"round {r + 1} {name}: {m.wall_s:.1f} s wall, {m.cpu_s:.1f} CPU s, "
                    f"neighbours {m.neighbours:.2f} cores"
                )
        print(f"load average after: {load_average()}")
        print("| run | fastest wall s | median wall s | median CPU s | neighbour cores (median) |")
        print("|---|---|---|---|---|")
        for name, ms in runs.items():
            print(
                f"| {name} | {min(m.wall_s for m in ms):.1f} | {statistics.median(m.wall_s for m in ms):.1f} | "
                f"{statistics.median(m.cpu_s for m in ms):.1f} | {statistics.median(m.neighbours for m in ms):.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
