"""Write a study's report: ``python -m hpo.report studies/lenet_lr``.

Reads the study from the store (never creating one), computes its findings (``hpo.analysis.findings``) and
draws them (``hpo.analysis.figures``) into studies/NAME/report/: index.html (offline, interactive),
report.md with PNGs, trials.csv.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpo import cli
from hpo.analysis import branches, compare
from hpo.analysis.figures import write_report
from hpo.analysis.findings import complete_trials, compute
from hpo.config import STUDY_FILE, find_study
from hpo.errors import HpoError, counted
from hpo.records import count_states
from hpo.runs.outcome import report_command
from hpo.runs.plan import Plan
from hpo.search.study import load_existing
from hpo.storage.store import DEFAULT_STORAGE, GRACE_ENV, GRACE_S, env_seconds, open_storage, redact


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hpo.report", description="Write a study's report: figures, findings, trials.csv."
    )
    p.add_argument(
        "folder",
        nargs="+",
        help="the study folder (the one holding study.toml), e.g. studies/lenet_lr; "
        "two or more: one report comparing them",
    )
    p.add_argument(
        "--storage", default=DEFAULT_STORAGE, metavar="URL", help=f"Optuna storage URL (default: {DEFAULT_STORAGE})"
    )
    p.add_argument(
        "--study-name", default=None, metavar="NAME", help="the study in the store (default: the folder's name)"
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write the report (default: FOLDER/report; comparing: reports/A_vs_B)",
    )
    p.add_argument(
        "--no-png", action="store_true", help="skip the PNG export, which needs Chromium (default: write PNGs)"
    )
    return p


def writable_folder(out: Path) -> None:
    """The report's folder, made now: a file in its place or no right to write is one line."""
    if out.exists() and not out.is_dir():
        raise HpoError(f"--out {out} is a file, not a folder: name a folder for the report")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise HpoError(f"cannot write the report into {out}: {e.strerror or e}") from None


def load_study(url: str, name: str) -> optuna.Study:
    return load_existing(open_storage(url, create=False), name)  # a missing SQLite file is an error, never created


def looks_lost(study: optuna.Study) -> list[int]:
    """RUNNING trials whose heartbeat is older than the grace period (read only: failing them is a
    writer's job, hpo.run's)."""
    storage = getattr(study._storage, "_backend", study._storage)  # load_study wraps the RDB store in a cache
    stale = set(storage._get_stale_trial_ids(study._study_id))
    return sorted(
        t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t._trial_id in stale
    )


def commands(folder: Path, args, overrides=()) -> str:
    """The run (with the --set overrides the study last ran under) and this report, quoted for a shell."""
    run = Plan.of(study=str(folder), set=[str(o) for o in overrides], storage=args.storage, study_name=args.study_name)
    return run.command() + "\n" + report_command(folder, args.storage, args.study_name, args.out)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # plots warn about empty panels; the report says it in words
    if len(args.folder) > 1:
        return compare_main(args)
    args.folder = args.folder[0]
    folder = find_study(args.folder)
    name = args.study_name or folder.resolve().name
    study = load_study(args.storage, name)
    trials = study.get_trials(deepcopy=False)
    counts = count_states(trials)
    if not complete_trials(trials):
        raise HpoError(
            f"study {name} has no complete trials yet ({counts['running']} running, "
            f"{counts['pruned']} pruned, {counts['failed']} failed)"
        )
    try:
        source = (folder / STUDY_FILE).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HpoError(f"{folder / STUDY_FILE} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    findings = compute(
        study,
        storage=redact(args.storage),
        folder=str(folder),
        command=commands(folder, args, study.user_attrs.get("overrides") or ()),
        study_toml=source,
    )
    findings = branches.extend(findings, study)  # per-branch results, warm-started trials
    out = Path(args.out) if args.out else folder / "report"
    writable_folder(out)
    written = write_report(study, findings, out, png=not args.no_png)
    lost = looks_lost(study)
    if lost:
        cli.say(
            f"note: trial {', '.join(f'#{n}' for n in lost)} look{'s' * (len(lost) == 1)} lost: "
            f"RUNNING with no heartbeat for over {env_seconds(GRACE_ENV, GRACE_S)} s (its worker died); "
            f"the next hpo.run fails and retries "
            f"{'it' if len(lost) == 1 else 'them'} with the same parameters"
        )
    running = counts["running"] - len(lost)
    if running > 0:
        cli.say(
            f"note: {counted(running, 'trial')} {'is' if running == 1 else 'are'} still running; "
            f"the report covers the {len(complete_trials(trials))} complete ones"
        )
    if written.png_error:
        cli.say(f"warning: no PNGs ({written.png_error}); index.html and report.md are written without them")
    pngs = f"{len(written.pngs)} PNGs" if written.pngs else "no PNGs"
    print(f"report written to {written.index} (and report.md, trials.csv, {pngs})")
    return 0


def compare_main(args) -> int:
    """One report across the studies in ``args.folder``; every input is checked before anything is written."""
    if args.study_name:
        raise HpoError("--study-name names one study; comparing takes each study's name from its folder")
    folders = [find_study(a) for a in args.folder]
    names = [f.resolve().name for f in folders]
    if len(set(names)) < len(names):
        raise HpoError(f"the same study is given twice: {', '.join(args.folder)}")
    studies = [load_study(args.storage, n) for n in names]
    for name, study in zip(names, studies, strict=True):
        if not complete_trials(study.get_trials(deepcopy=False)):
            raise HpoError(f"study {name} has no complete trials yet: nothing to compare")
    entries = []
    for folder, study in zip(folders, studies, strict=True):
        source = (folder / STUDY_FILE).read_text(encoding="utf-8")
        f = compute(study, storage=redact(args.storage), folder=str(folder), study_toml=source)
        entries.append(compare.entry(str(folder), study, f))
    out = Path(args.out) if args.out else Path("reports") / "_vs_".join(names)
    index, error = compare.write(entries, out, png=not args.no_png)
    if error:
        cli.say(f"warning: no PNG ({error}); index.html and report.md are written without it")
    print(f"comparison written to {index} (and report.md)")
    return 0


if __name__ == "__main__":
    cli.run_main(main)
