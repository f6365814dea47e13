"""hpo.training.loop: the seeded loop on a real Fashion-MNIST subset (2,000 train images, LeNet-5,
1-3 epochs), its schedules and optimizers by registry, the runtime (threads, device). The entry
point, ``python -m hpo.train``, is tested in tests/test_train.py."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from hpo.config import TrainConfig
from hpo.errors import HpoError
from hpo.training import loop
from hpo.training.data import Data, Split, batches
from hpo.training.loop import OPTIMIZERS, SCHEDULES, EpochStats, fit, lr_lambda, resolve_device, setup_runtime

COMPARED = [f.name for f in dataclasses.fields(EpochStats) if f.name != "seconds"]  # wall time varies

pytestmark = pytest.mark.usefixtures("restore_threads")  # fit pins torch's process-wide thread count


def numbers(result) -> list[tuple]:
    """A curve without its timings, for exact comparison."""
    return [tuple(getattr(s, f) for f in COMPARED) for s in result.curve]


def same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def record_lrs(monkeypatch, name="sgd") -> list[float]:
    """Wrap the registered optimizer so that each step logs the lr it actually used."""
    used: list[float] = []
    make = OPTIMIZERS[name]

    def recording(params, spec):
        optimizer = make(params, spec)
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
        return optimizer

    monkeypatch.setitem(OPTIMIZERS, name, recording)
    return used


def test_registries_implement_exactly_the_declared_names():
    from hpo.config import TrainSpec, declared

    assert set(OPTIMIZERS) == set(declared(TrainSpec, "optimizer"))
    assert set(SCHEDULES) == set(declared(TrainSpec, "schedule"))


def steps_per_epoch(config: TrainConfig, data: Data) -> int:
    return math.ceil(len(data.train) / config.train.batch_size)


# ---------------------------------------------------------------- reproducibility


@pytest.mark.parametrize(
    "model, epochs, size", [("lenet5", 2, 0), ("simple_cnn", 1, 512)]
)  # simple_cnn: dropout's RNG too
def test_same_seed_is_bit_identical(train_config, fashion_subset, model, epochs, size):
    _, data = fashion_subset
    if size:  # fewer images for the bigger net
        data = Data(data.info, *(Split(s.images[:size], s.labels[:size]) for s in (data.train, data.val, data.test)))
    config = train_config(seed=3, model=model, epochs=epochs)  # augment on: the crop draws are seeded too
    first, first_model = fit(config, data)
    torch.manual_seed(12345)  # whatever the global RNG holds before a run must not matter
    torch.rand(1000)
    second, second_model = fit(config, data)
    assert first.status == second.status == "ok"
    assert numbers(first) == numbers(second)  # exact float equality, field by field
    assert (first.test_acc, first.best_val_acc, first.final_val_acc) == (
        second.test_acc,
        second.best_val_acc,
        second.final_val_acc,
    )
    assert same_state(first_model, second_model)

    other, other_model = fit(dataclasses.replace(config, seed=4), data)
    assert other.status == "ok"
    assert numbers(other) != numbers(first)
    assert not same_state(other_model, first_model)


def test_batch_order_follows_the_seed(train_config, fashion_subset, monkeypatch):
    """The shuffle (and crop) generator is seeded from the config's seed, not a fixed or global one."""
    _, data = fashion_subset
    firsts = []

    def first_batch_only(split, batch_size, info, **kwargs):
        assert kwargs["generator"] is not None
        x, y = next(batches(split, batch_size, info, **kwargs))
        firsts.append(y.clone())
        yield x, y

    monkeypatch.setattr(
        loop,
        "batches",
        lambda split, *args, **kwargs: (
            first_batch_only(split, *args, **kwargs) if split is data.train else batches(split, *args, **kwargs)
        ),
    )
    for seed in (3, 3, 4):
        fit(train_config(seed=seed, epochs=1), data)
    assert torch.equal(firsts[0], firsts[1])
    assert not torch.equal(firsts[0], firsts[2])


# ---------------------------------------------------------------- the result and the epoch hook


def test_result_fields(train_config, fashion_subset):
    _, data = fashion_subset
    result, model = fit(train_config(epochs=2), data)
    assert (result.status, result.reason, result.epochs_run) == ("ok", "", 2)
    assert [s.epoch for s in result.curve] == [1, 2]
    assert result.final_val_acc == result.curve[-1].val_acc
    assert result.best_val_acc == max(s.val_acc for s in result.curve)
    assert result.curve[-1].train_loss < result.curve[0].train_loss  # it learns
    # 2 epochs on 2,000 images: well above chance (10%). The exact figure depends on the CPU's
    # kernels (above 40% on the AMD EPYC it was written on, 39.97% on an Intel Xeon): the bar is 3x chance.
    assert result.curve[-1].val_acc > 30
    assert (result.device, result.threads, result.params) == ("cpu", 1, 61_706)
    assert result.wall_time_s > sum(s.seconds for s in result.curve) * 0.99 > 0
    assert result.images_per_s > 0
    # test_acc is the returned model's accuracy on the test split
    x, y = next(batches(data.test, len(data.test), data.info))
    with torch.no_grad():
        accuracy = 100.0 * (model.eval()(x).argmax(1) == y).float().mean().item()
    assert result.test_acc == pytest.approx(accuracy, abs=0.2)
    as_dict = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert as_dict["curve"][0]["epoch"] == 1 and set(as_dict["curve"][0]) == {
        f.name for f in dataclasses.fields(EpochStats)
    }


def test_on_epoch_once_per_epoch(train_config, fashion_subset):
    _, data = fashion_subset
    seen: list[EpochStats] = []
    result, _ = fit(train_config(epochs=3, lr=0.02), data, on_epoch=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3]
    assert tuple(seen) == result.curve  # the hook sees exactly what the curve records


def test_on_epoch_exception_stops_the_run(train_config, fashion_subset):
    """That is how pruning works: the objective raises in the hook, fit lets it through."""
    _, data = fashion_subset

    class Stop(Exception):
        pass

    seen = []

    def hook(stats):
        seen.append(stats.epoch)
        if stats.epoch == 2:
            raise Stop("pruned")

    with pytest.raises(Stop, match="pruned"):
        fit(train_config(epochs=4, lr=0.02), data, on_epoch=hook)
    assert seen == [1, 2]


# ---------------------------------------------------------------- divergence is a result


def test_divergence_in_the_first_epoch(train_config, fashion_subset, monkeypatch):
    _, data = fashion_subset
    seen = []
    steps = record_lrs(monkeypatch)
    config = train_config(lr=1e6)
    result, _ = fit(config, data, on_epoch=seen.append)
    assert result.status == "diverged"
    assert "epoch 1" in result.reason and result.reason.startswith("diverged:")
    # On the CPU the loss is checked every step: the run stops at the first non-finite one.
    assert len(steps) < steps_per_epoch(config, data)
    assert f"epoch 1, step {len(steps)}" in result.reason
    assert result.test_acc is None
    assert (result.epochs_run, result.curve, seen) == (0, (), [])
    assert (result.best_val_acc, result.final_val_acc) == (0.0, 0.0)


def test_divergence_after_a_good_epoch(train_config, fashion_subset):
    """A step schedule with gamma > 1 turns a sane lr into 5e6 from epoch 2 on."""
    _, data = fashion_subset
    seen = []
    result, _ = fit(train_config(epochs=3, schedule="step", milestones=(1,), gamma=1e8), data, on_epoch=seen.append)
    assert result.status == "diverged" and "epoch 2" in result.reason
    assert result.test_acc is None
    assert result.epochs_run == 1 and [s.epoch for s in seen] == [1]
    assert result.best_val_acc == result.final_val_acc == result.curve[0].val_acc > 10


def test_divergence_on_an_epochs_last_step(train_config, fashion_subset):
    """The loss is taken before the step; when the epoch's last step breaks the weights, only the
    validation loss shows it. That is divergence too, not an "ok" run with a NaN in its curve."""
    _, data = fashion_subset
    one_batch = Data(data.info, Split(data.train.images[:128], data.train.labels[:128]), data.val, data.test)
    result, _ = fit(train_config(epochs=1, lr=1e12, batch_size=128), one_batch)
    assert result.status == "diverged" and "epoch 1" in result.reason
    assert result.test_acc is None and result.curve == ()
    json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: no NaN anywhere


# ---------------------------------------------------------------- learning-rate schedules


def multipliers(config: TrainConfig, per_epoch: int = 10) -> list[float]:
    f = lr_lambda(config, per_epoch)
    return [f(step) for step in range(config.train.epochs * per_epoch)]


def test_constant(train_config):
    assert multipliers(train_config(epochs=4)) == [1.0] * 40


def test_step(train_config):
    m = multipliers(train_config(epochs=6, schedule="step", milestones=(2, 4), gamma=0.1))
    assert m[:20] == [1.0] * 20  # epochs 1-2 (steps 0-19)
    assert m[20:40] == pytest.approx([0.1] * 20)  # from the first step of epoch 3: milestones count epochs done
    assert m[40:] == pytest.approx([0.01] * 20)
    assert multipliers(train_config(epochs=3, schedule="step", gamma=0.1)) == [1.0] * 30  # no milestones


def test_cosine(train_config):
    m = multipliers(train_config(epochs=4, schedule="cosine"))
    assert m[0] == 1.0
    assert m[20] == pytest.approx(0.5)  # half way
    assert m[-1] < 0.002  # ~0 on the last step: 0.5 * (1 + cos(pi * 39/40))
    assert lr_lambda(train_config(epochs=4, schedule="cosine"), 10)(40) == pytest.approx(0.0, abs=1e-15)  # 0 at the end
    assert all(a > b for a, b in zip(m, m[1:], strict=False))  # falls every step, not once an epoch
    assert m[10] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_warmup_rises_linearly_then_hands_over(train_config, schedule):
    config = train_config(epochs=5, warmup_epochs=2, schedule=schedule, milestones=(4,), gamma=0.1)
    m = multipliers(config)
    assert m[:20] == pytest.approx([(k + 1) / 20 for k in range(20)])  # 1/20 ... 1 over 2 epochs
    assert m[19] == m[20] == 1.0  # the schedule takes over at full lr
    after = multipliers(dataclasses.replace(config, train=dataclasses.replace(config.train, warmup_epochs=0, epochs=3)))
    if schedule == "step":  # milestones stay in epochs since the start
        assert m[20:40] == [1.0] * 20 and m[40:] == pytest.approx([0.1] * 10)
    else:  # the shape runs over the epochs after warmup
        assert m[20:] == pytest.approx(after)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_every_schedule_starts_at_the_base_lr(train_config, schedule):
    m = multipliers(train_config(epochs=3, schedule=schedule, milestones=(1, 2)))
    assert m[0] == 1.0 and all(0 <= v <= 1 for v in m)


@pytest.mark.parametrize(
    "extra",
    [
        {"schedule": "constant"},
        {"schedule": "step", "milestones": (1,), "gamma": 0.5},
        {"schedule": "cosine"},
        {"schedule": "cosine", "warmup_epochs": 1},
    ],
    ids=["constant", "step", "cosine", "warmup+cosine"],
)
def test_lr_used_per_step_and_in_the_curve(train_config, fashion_subset, monkeypatch, extra):
    _, data = fashion_subset
    used = record_lrs(monkeypatch)
    config = train_config(epochs=2, lr=0.04, **extra)
    result, _ = fit(config, data)
    per_epoch = steps_per_epoch(config, data)
    f = lr_lambda(config, per_epoch)
    assert len(used) == 2 * per_epoch
    assert used == pytest.approx([0.04 * f(k) for k in range(2 * per_epoch)], rel=1e-12)
    # The curve's lr is the one used on the epoch's first step.
    assert [s.lr for s in result.curve] == [used[0], used[per_epoch]]
    expected = (
        {
            "constant": [0.04, 0.04],
            "step": [0.04, 0.02],
            "cosine": [0.04, 0.02],  # cos(pi/2): half way through 2 epochs
        }.get(extra["schedule"])
        if "warmup_epochs" not in extra
        else [0.04 / per_epoch, 0.04]
    )
    assert [s.lr for s in result.curve] == pytest.approx(expected)


# ---------------------------------------------------------------- optimizers and losses


LR = {"sgd": 0.05}  # adaptive optimizers want a smaller step
OTHER_LR = 2e-3


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains(train_config, fashion_subset, name):
    _, data = fashion_subset
    result, _ = fit(train_config(optimizer=name, lr=LR.get(name, OTHER_LR), epochs=2), data)
    assert result.status == "ok"
    first, second = result.curve
    assert second.train_loss < first.train_loss
    assert second.val_loss < first.val_loss
    assert second.val_acc > 30  # 3x chance (see test_result_fields)


def test_sgd_options_reach_the_optimizer(train_config, fashion_subset, monkeypatch):
    _, data = fashion_subset
    built = []
    make = OPTIMIZERS["sgd"]
    monkeypatch.setitem(OPTIMIZERS, "sgd", lambda params, spec: built.append(make(params, spec)) or built[-1])
    config = train_config(epochs=1, lr=0.03, momentum=0.8, nesterov=True, weight_decay=5e-4)
    fit(config, data)
    (optimizer,) = built
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["initial_lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.03, 0.8, True, 5e-4)


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_optimizer_registry(train_config, name, cls):
    params = [torch.nn.Parameter(torch.zeros(3))]
    spec = train_config(lr=0.007, weight_decay=0.01, momentum=0.5).train
    optimizer = OPTIMIZERS[name](params, spec)
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.007, 0.01)
    if name == "sgd":
        assert (group["momentum"], group["nesterov"]) == (0.5, False)


def test_label_smoothing_changes_the_loss(train_config, fashion_subset):
    """With a vanishing lr the weights stay put, so the epoch's mean training loss is the (smoothed)
    cross-entropy of the initial model over the training images. Near-uniform initial outputs make
    the two losses close (1e-4 apart), so the match is checked far tighter than that."""
    _, data = fashion_subset
    x, y = next(batches(data.train, len(data.train), data.info))
    for smoothing, other in ((0.0, 0.2), (0.2, 0.0)):
        result, model = fit(train_config(epochs=1, lr=1e-12, augment=False, label_smoothing=smoothing), data)
        with torch.no_grad():
            logits = model(x)
        own, theirs = (F.cross_entropy(logits, y, label_smoothing=e).item() for e in (smoothing, other))
        assert abs(own - theirs) > 5e-5
        assert result.curve[0].train_loss == pytest.approx(own, abs=2e-6)
    # And in a real run the loss values part ways.
    losses = [fit(train_config(epochs=1, label_smoothing=e), data)[0].curve[0].train_loss for e in (0.0, 0.2)]
    assert abs(losses[0] - losses[1]) > 1e-3


# ---------------------------------------------------------------- runtime: threads and device


def test_setup_runtime_pins_threads(train_config):
    device, threads = setup_runtime(train_config(threads=1))
    assert (device.type, threads, torch.get_num_threads()) == ("cpu", 1, 1)
    device, threads = setup_runtime(train_config(threads=0))  # 0: all the cores this process may use
    assert threads == len(os.sched_getaffinity(0)) == loop.cpu_count()
    assert torch.get_num_threads() == threads


def test_fit_reports_its_threads(train_config, fashion_subset):
    _, data = fashion_subset
    # A handful of images: two threads on a busy two-core machine stall at every barrier.
    few = Data(data.info, *(Split(s.images[:64], s.labels[:64]) for s in (data.train, data.val, data.test)))
    result, _ = fit(train_config(epochs=1, threads=2), few)
    assert result.threads == 2 == torch.get_num_threads()


def test_resolve_device_here():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():  # this machine: no GPU
        with pytest.raises(HpoError) as info:
            resolve_device("cuda")
        assert "\n" not in str(info.value)


def test_resolve_device_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    for name in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(
            HpoError, match=f'^train.device = \'{name}\' but no CUDA device is visible; use "auto" or "cpu"$'
        ):
            resolve_device(name)


def test_resolve_device_with_one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(HpoError, match="'cuda:1' but only 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("name", ["cuda:x", "cuda:-1", "cudax", "mps"])
def test_resolve_device_rejects_other_strings(name):
    with pytest.raises(HpoError, match=f"^train.device = '{name}' is not"):
        resolve_device(name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp, channels_last", [(True, True), (False, False)])
def test_fit_on_cuda(train_config, fashion_subset, empty_data_dir, amp, channels_last):
    from hpo.training import data as data_mod

    data = data_mod.load(fashion_subset[0], 0, "cuda", root=empty_data_dir)
    config = train_config(device="cuda", amp=amp, channels_last=channels_last, deterministic=True)
    result, model = fit(config, data)
    assert (result.status, result.device, result.epochs_run) == ("ok", "cuda", 2)
    assert next(model.parameters()).is_cuda
    assert result.curve[-1].val_acc > 40 and result.test_acc > 40  # it learns, as on the CPU
    again, _ = fit(config, data)
    assert numbers(again) == numbers(result)  # train.deterministic: the same seed, the same curve


def test_fit_refuses_data_on_another_device(train_config, fashion_subset, monkeypatch):
    _, data = fashion_subset
    monkeypatch.setattr(loop, "resolve_device", lambda name: torch.device("meta"))
    with pytest.raises(ValueError, match="data is on cpu, training on meta"):
        fit(train_config(), data)
