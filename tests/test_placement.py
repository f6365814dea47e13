"""Where each worker runs and what it proposes: the worker index (--worker-index, $SLURM_ARRAY_TASK_ID,
$JOB_COMPLETION_INDEX; machine m x K + i under --workers K), --workers auto, the cores // K thread
split and the GPU round-robin. Broken, array tasks would silently propose the same parameters."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import optuna
import pytest
from builders import write_study
from processes import Watched

from hpo import cli, config, run
from hpo.errors import HpoError
from hpo.runs import workers
from hpo.runs.plan import PLAN_ENV, WORKER_FLAG, Plan, parse
from hpo.training.loop import cpu_count

INDEX_VARS = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")


@pytest.fixture
def no_index_env(monkeypatch):
    for name in INDEX_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    "arg, env, expected",
    [
        (None, {}, 0),
        (None, {"SLURM_ARRAY_TASK_ID": "5"}, 5),
        (None, {"JOB_COMPLETION_INDEX": "6"}, 6),
        (None, {"SLURM_ARRAY_TASK_ID": "5", "JOB_COMPLETION_INDEX": "6"}, 5),  # Slurm first
        (None, {"SLURM_ARRAY_TASK_ID": " ", "JOB_COMPLETION_INDEX": "6"}, 6),  # blank is unset
        (2, {"SLURM_ARRAY_TASK_ID": "5", "JOB_COMPLETION_INDEX": "6"}, 2),  # the option wins
        (0, {"SLURM_ARRAY_TASK_ID": "5"}, 0),
    ],
)
def test_worker_index_comes_from_the_option_then_slurm_then_kubernetes(arg, env, expected, no_index_env):
    for name, value in env.items():
        no_index_env.setenv(name, value)
    assert cli.worker_index(argparse.Namespace(worker_index=arg)) == expected


def test_a_worker_index_that_is_no_number_is_one_line(no_index_env):
    no_index_env.setenv("JOB_COMPLETION_INDEX", "pod-3")
    with pytest.raises(HpoError, match=r"\$JOB_COMPLETION_INDEX = 'pod-3' is not a worker index; pass --worker-index"):
        cli.worker_index(argparse.Namespace(worker_index=None))


def _first_proposal(folder: Path, db: str, *args: str) -> dict:
    assert run.main(["--study", str(folder), "--trials", "1", "--storage", f"sqlite:///{db}", "--quiet", *args]) == 0
    (trial,) = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}").trials
    return trial.params


def test_array_tasks_propose_what_their_index_says(study_dir, tmp_path, no_index_env):
    """Fresh stores, so only the index differs: each source of index 1 gives index 1's proposal."""
    write_study(study_dir, train="epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1", pruner='name = "none"')
    plain = _first_proposal(study_dir, "a.db")
    option = _first_proposal(study_dir, "b.db", "--worker-index", "1")
    no_index_env.setenv("SLURM_ARRAY_TASK_ID", "1")
    slurm = _first_proposal(study_dir, "c.db")
    no_index_env.delenv("SLURM_ARRAY_TASK_ID")
    no_index_env.setenv("JOB_COMPLETION_INDEX", "1")
    kubernetes = _first_proposal(study_dir, "d.db")
    assert option != plain
    assert slurm == option and kubernetes == option


def test_workers_of_machine_m_get_index_m_times_k_plus_i_and_a_share_of_the_cores(study_dir, tmp_path):
    # threads unset (0: all cores), so the supervisor splits them; long trials keep the workers alive
    write_study(study_dir, train="epochs = 200\nbatch_size = 64\nlr = 0.05", pruner='name = "none"')
    share = max(1, cpu_count() // 2)
    watched = Watched(
        "--study",
        "tiny",
        "--trials",
        "4",
        "--workers",
        "2",
        cwd=tmp_path,
        env={"SLURM_ARRAY_TASK_ID": "3", "JOB_COMPLETION_INDEX": ""},
    )  # machine 3 of an array
    try:
        started = [watched.wait_line(rf"^\[worker {i}\] pid (\d+): (.*)$") for i in (0, 1)]
        pids = [int(m.group(1)) for m in started]
        for i in (0, 1):  # each worker is up (its command line is readable once it says something)
            watched.wait_line(rf"^\[worker {i}\] study 'tiny' in ")
        argv = [Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0") for pid in pids]
        environ = [
            dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in kv)
            for pid in pids
        ]
    finally:
        watched.proc.send_signal(signal.SIGTERM)
        watched.finish(120)
    assert [m.group(2) for m in started] == [f"2 trials, {share} thread{'s' * (share > 1)}"] * 2
    for i, (words, env) in enumerate(zip(argv, environ, strict=True)):
        assert words[-3:] == ["hpo.run", WORKER_FLAG, ""]  # the plan, not a re-spelled command line
        plan = Plan.from_json(env[PLAN_ENV])
        assert plan.worker_index == 3 * 2 + i
        assert plan.spec.base.train.threads == share and env["OMP_NUM_THREADS"] == str(share)
    assert watched.proc.returncode == 130, watched.err[-2000:]


def _supervisor(plan, k: int, threads: int | None, gpus: list[str]) -> workers.Supervisor:
    """A supervisor as its prepare() leaves it (no data loaded): its thread share and GPUs."""
    sup = workers.Supervisor(plan, k)
    sup.threads, sup.gpus, sup.deadline = threads, gpus, None
    return sup


def test_a_thread_count_the_study_sets_is_kept(study_dir, tmp_path):
    plan = parse(["--study", str(study_dir), "--workers", "2", "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    worker = _supervisor(plan, 2, None, []).worker_plan(0, 2)  # the tiny study sets threads = 1
    assert worker.worker.threads is None and worker.spec.base.train.threads == 1


def test_gpus_are_dealt_round_robin(study_dir, tmp_path, no_index_env):
    plan = parse(
        [
            "--study",
            str(study_dir),
            "--workers",
            "4",
            "--worker-index",
            "1",
            "--storage",
            f"sqlite:///{tmp_path / 'x.db'}",
        ]
    )
    sup = _supervisor(plan, 4, 1, ["cuda:0", "cuda:1"])
    plans = [sup.worker_plan(slot, 2) for slot in range(4)]
    assert [p.worker_index for p in plans] == [4, 5, 6, 7]
    assert [p.worker.device for p in plans] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]


@pytest.mark.parametrize(
    "model, search, cores, gpus, expected",
    [
        ("lenet5", "", 8, 0, 8),  # small net on the CPU: one worker per core
        ("simple_cnn", "", 2, 0, 2),
        ("resnet18", "", 8, 0, 1),  # ResNet-18 keeps every core busy: one worker
        ("lenet5", '"model.name" = { choices = ["lenet5", "resnet18"] }', 8, 0, 1),  # the largest net searched decides
        ("lenet5", "", 8, 2, 4),  # two small trials per GPU
        ("resnet18", "", 8, 2, 2),  # one large trial per GPU
    ],
)
def test_auto_worker_count(model, search, cores, gpus, expected, study_dir):
    write_study(study_dir, model=f'name = "{model}"', search=search or "lr = { low = 0.01, high = 0.1 }")
    assert workers.auto_workers(config.load(study_dir), cores, gpus) == expected


@pytest.mark.parametrize(
    "asked",
    [["--workers", "auto"], [], ["--workers", "auto", "HPO_WORKERS=1"]],
    ids=["option", "default", "option-over-env"],
)
def test_workers_auto_runs_one_worker_per_core_with_one_thread_each(asked, study_dir, tmp_path, monkeypatch):
    """auto is the default (the suite's conftest sets $HPO_WORKERS=1; a user's environment has none),
    and --workers wins over $HPO_WORKERS."""
    cores = cpu_count()
    if cores < 2:
        pytest.skip("one core: auto is one worker, run here")
    monkeypatch.delenv(run.WORKERS_ENV)
    for pair in [a for a in asked if "=" in a]:
        monkeypatch.setenv(*pair.split("="))
    write_study(study_dir, train="epochs = 1\nbatch_size = 64\nlr = 0.05", pruner='name = "none"')  # threads unset
    watched = Watched("--study", "tiny", "--trials", str(cores), *[a for a in asked if "=" not in a], cwd=tmp_path)
    assert watched.finish() == 0, watched.err[-3000:]
    assert f"adding {cores} with {cores} workers (auto)" in watched.err
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'storage/hpo.db'}").trials
    assert len(trials) == cores and len({t.user_attrs["worker"] for t in trials}) == cores
    assert [t.user_attrs["threads"] for t in trials] == [1] * cores  # cores // K, recorded by each trial


def test_hpo_workers_sets_the_default_and_a_bad_one_is_named(study_dir, tmp_path, monkeypatch):
    write_study(study_dir, train="epochs = 1\nbatch_size = 64\nlr = 0.05", pruner='name = "none"')
    monkeypatch.setenv(run.WORKERS_ENV, "1")
    one = Watched("--study", "tiny", "--trials", "2", cwd=tmp_path)
    assert one.finish() == 0, one.err[-3000:]
    assert "[worker" not in one.err  # one process: no supervisor
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'storage/hpo.db'}").trials
    assert len({t.user_attrs["worker"] for t in trials}) == 1
    monkeypatch.setenv(run.WORKERS_ENV, "two")
    bad = Watched("--study", "tiny", "--trials", "2", cwd=tmp_path)
    assert bad.finish() == 2
    assert bad.err.strip().splitlines() == ["error: $HPO_WORKERS must be a number >= 1 or auto, got 'two'"], bad.err
