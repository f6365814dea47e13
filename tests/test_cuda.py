"""What runs only on a GPU: bf16 autocast, channels_last, deterministic mode, pinned copies, the
divergence check (every 25 steps there), and the workers' GPU round-robin. Marked ``cuda``: they skip
without a CUDA device, and bench/gpu.sh runs them where there is one (``pytest -m cuda``)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from builders import write_study

from hpo import config
from hpo.config import ModelSpec, TrainConfig, TrainSpec
from hpo.runs import workers
from hpo.training import data as data_mod
from hpo.training.loop import fit

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def cuda_data(empty_data_dir, fashion_subset):
    spec, cpu = fashion_subset
    return spec, cpu, data_mod.load(spec, 0, "cuda", root=empty_data_dir)


def _config(spec, **train) -> TrainConfig:
    train = {"epochs": 1, "lr": 0.05, "device": "cuda", **train}
    return TrainConfig(
        data=dataclasses.replace(spec, augment=False), model=ModelSpec("lenet5"), train=TrainSpec(**train), seed=0
    )


class Seen:
    """Every Conv2d's input memory format and output dtype during a fit (a global module hook:
    nothing of hpo is replaced)."""

    def __init__(self):
        self.formats, self.dtypes = set(), set()

    def __enter__(self):
        def hook(module, inputs, output):
            if isinstance(module, torch.nn.Conv2d):
                self.dtypes.add(output.dtype)
                x = inputs[0]
                if x.shape[1] > 1:  # one channel is laid out the same either way
                    self.formats.add(
                        "channels_last"
                        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
                        else "contiguous"
                    )

        self.handle = torch.nn.modules.module.register_module_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("amp, dtype", [(True, torch.bfloat16), (False, torch.float32)])
def test_amp_runs_the_convolutions_in_bf16(amp, dtype, cuda_data):
    spec, _, data = cuda_data
    with Seen() as seen:
        result, _ = fit(_config(spec, amp=amp), data)
    assert seen.dtypes == {dtype} and result.status == "ok" and result.final_val_acc > 50


@pytest.mark.parametrize("channels_last, fmt", [(True, "channels_last"), (False, "contiguous")])
def test_channels_last_reaches_the_convolutions(channels_last, fmt, cuda_data):
    spec, _, data = cuda_data
    with Seen() as seen:
        _, model = fit(_config(spec, channels_last=channels_last), data)
    assert seen.formats == {fmt}
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_deterministic_mode_gives_bit_identical_runs(cuda_data):
    spec, _, data = cuda_data
    runs = [fit(_config(spec, epochs=2, deterministic=True), data)[0] for _ in range(2)]
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert runs[0].curve[-1].train_loss == runs[1].curve[-1].train_loss
    assert [c.val_acc for c in runs[0].curve] == [c.val_acc for c in runs[1].curve]
    fit(_config(spec, deterministic=False), data)  # and back: the switch is per run
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def test_pinned_copies_arrive_whole(cuda_data):
    """The non-blocking copies from pinned memory: every byte on the GPU equals the CPU load's."""
    _, cpu, gpu = cuda_data
    for part in ("train", "val", "test"):
        a, b = getattr(cpu, part), getattr(gpu, part)
        assert b.images.is_cuda and b.labels.is_cuda
        assert torch.equal(a.images, b.images.cpu()) and torch.equal(a.labels, b.labels.cpu())


def test_a_diverging_run_is_caught_on_the_gpu(cuda_data):
    spec, _, data = cuda_data
    result, _ = fit(_config(spec, epochs=2, lr=1e6), data)
    assert result.status == "diverged" and result.reason.startswith("diverged: ")
    assert result.epochs_run == 0 and result.test_acc is None


def test_workers_go_round_robin_over_the_gpus(study_dir, tmp_path):
    from processes import hpo

    write_study(
        study_dir, train='epochs = 1\nbatch_size = 64\nlr = 0.05\nthreads = 1\ndevice = "auto"', pruner='name = "none"'
    )
    n = torch.cuda.device_count()
    assert workers.devices(config.load(study_dir)) == [f"cuda:{i}" for i in range(n)]
    code, out, err = hpo("--study", "tiny", "--trials", "4", "--workers", "4", cwd=tmp_path)
    assert code == 0, err[-3000:]
    trials = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'storage/hpo.db'}").trials
    assert sorted(t.user_attrs["device"] for t in trials) == sorted(f"cuda:{i % n}" for i in range(4))
