"""The seeded training loop. It knows nothing of Optuna: a plain config in, a result out, and an
``on_epoch`` callback (the pruning hook) in between. ``python -m hpo.train`` runs it once.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from hpo.config import TrainConfig, cpu_count
from hpo.errors import HpoError
from hpo.training.data import Data, batches
from hpo.training.nets import build_for, count_parameters

OPTIMIZERS = {
    "sgd": lambda params, t: torch.optim.SGD(
        params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
    ),
    "adam": lambda params, t: torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay),
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
}

# Each schedule maps (epoch as a float since the end of warmup, epochs after warmup, spec) to a
# multiplier of the base lr; warmup is applied on top, so every schedule gets it.
SCHEDULES = {
    "constant": lambda e, total, t: 1.0,
    "step": lambda e, total, t: t.gamma ** sum(1 for m in t.milestones if e + t.warmup_epochs >= m),
    "cosine": lambda e, total, t: 0.5 * (1 + math.cos(math.pi * min(e / max(total, 1e-9), 1.0))),
}


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float  # percent
    val_loss: float
    val_acc: float  # percent
    lr: float  # the lr of the epoch's first step (the scheduler moves it every step)
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    status: str  # "ok" or "diverged"
    reason: str  # why it stopped early, "" when it did not
    epochs_run: int
    best_val_acc: float
    final_val_acc: float
    test_acc: float | None  # None when the run diverged
    class_test_acc: dict[str, float | None] | None  # each class's test accuracy, by class name (None: diverged)
    curve: tuple[EpochStats, ...]
    wall_time_s: float
    images_per_s: float  # training images per second of training steps (evaluation excluded)
    device: str
    params: int
    threads: int

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # "cuda:x", "cuda:-1": torch's message lists every backend it knows
        raise HpoError(f"train.device = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise HpoError(f"train.device = {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HpoError(f'train.device = {name!r} but no CUDA device is visible; use "auto" or "cpu"')
        if (device.index or 0) >= torch.cuda.device_count():
            raise HpoError(f"train.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def keep_freed_memory() -> None:
    """Keep memory the process frees instead of handing it back to the OS after every step.

    A training step frees its whole working set (batch, activations, gradients). glibc then trims
    the heap top and unmaps its larger blocks, so the next step faults every page back in: for
    LeNet-5 on CPU, about 2,000 page faults a step and a quarter of the loop's speed. Fixed
    thresholds keep the pages (the process stays at one step's peak, which it reaches anyway).
    Results do not change; other C libraries have no mallopt and are left as they are."""
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum: blocks up to 32 MiB come from the heap
    mallopt(M_TRIM_THRESHOLD, 1 << 30)  # and the heap gives memory back only past 1 GiB free


def setup_runtime(config: TrainConfig) -> tuple[torch.device, int]:
    """Device, thread count and determinism switches. Threads are always pinned: the CPU kernels'
    reduction order depends on the thread count, and bit-identical reruns need the same one."""
    t = config.train
    device = resolve_device(t.device)
    threads = t.threads or cpu_count()
    torch.set_num_threads(threads)
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not t.deterministic
        torch.backends.cudnn.deterministic = t.deterministic
        torch.use_deterministic_algorithms(t.deterministic, warn_only=True)
        if t.deterministic:  # cuBLAS needs this for deterministic matmuls
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return device, threads


def lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    t = config.train
    warmup_steps = t.warmup_epochs * steps_per_epoch
    after = max(t.epochs - t.warmup_epochs, 0)
    shape = SCHEDULES[t.schedule]

    def multiplier(step: int) -> float:
        if step < warmup_steps:  # linear warmup from 1/warmup_steps to 1
            return (step + 1) / warmup_steps
        return shape((step - warmup_steps) / steps_per_epoch, after, t)

    return multiplier


@torch.no_grad()
def evaluate(model, split, info, batch_size: int, autocast, channels_last: bool) -> tuple[float, float, list]:
    """(mean loss, accuracy in percent, each class's accuracy in percent: None for a class the split
    does not hold) over a split."""
    model.eval()
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros(info.num_classes, device=device, dtype=torch.long)
    for x, y in batches(split, max(batch_size, 256), info, channels_last=channels_last):
        with autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        hits += torch.bincount(y[logits.argmax(1) == y], minlength=info.num_classes)
    n = max(len(split), 1)
    sizes = torch.bincount(split.labels, minlength=info.num_classes).tolist()
    each = [100.0 * h / k if k else None for h, k in zip(hits.tolist(), sizes, strict=True)]
    return loss_sum.item() / n, 100.0 * hits.sum().item() / n, each


def fit(
    config: TrainConfig,
    data: Data,
    on_epoch: Callable[[EpochStats], None] | None = None,
    resume: dict | None = None,
    on_checkpoint: Callable[[dict], None] | None = None,
) -> tuple[TrainResult, torch.nn.Module]:
    """Train ``config`` on ``data``; returns the result and the trained model. ``on_epoch`` sees
    every epoch's stats and may raise to stop the run (the objective raises optuna.TrialPruned
    there); a non-finite loss ends it as ``diverged``, which is a result, not an exception.

    ``on_checkpoint`` gets, every ``train.checkpoint_every`` epochs and before that epoch's
    ``on_epoch``, the whole training state (``training_state``; valid during the call); ``resume``
    takes such a state and goes on from the epoch after it, as if the run had never stopped."""
    start = time.perf_counter()
    t, info = config.train, data.info
    device, threads = setup_runtime(config)
    if data.train.images.device.type != device.type:
        raise ValueError(f"data is on {data.train.images.device}, training on {device}")
    cuda = device.type == "cuda"
    channels_last = cuda and t.channels_last

    torch.manual_seed(config.seed)  # model init and dropout
    model = build_for(config, info)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = OPTIMIZERS[t.optimizer](model.parameters(), t)
    steps_per_epoch = math.ceil(len(data.train) / t.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, steps_per_epoch))
    # Batch order and augmentation: a stream apart from every model-init seed (trial seeds are
    # consecutive integers below 2**31, so seed + 1 would be the next trial's init).
    shuffle = torch.Generator().manual_seed(config.seed + (1 << 32))
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and t.amp else nullcontext
    # A host sync per step costs little on the CPU but stalls a GPU; check less often there.
    check_every = 25 if cuda else 1

    curve, train_seconds, seen, status, reason = [], 0.0, 0, "ok", ""
    first = 1
    if resume is not None:
        curve, train_seconds, seen = restore(resume, model, optimizer, scheduler, shuffle, device)
        first, start = resume["epoch"] + 1, start - resume["wall_time_s"]
    for epoch in range(first, t.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        n = 0
        for step, (x, y) in enumerate(
            batches(
                data.train,
                t.batch_size,
                info,
                generator=shuffle,
                augment=config.data.augment,
                channels_last=channels_last,
            )
        ):
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            n += len(y)
            if step % check_every == 0 and not torch.isfinite(loss_sum):
                status, reason = "diverged", f"diverged: loss {loss.item()} at epoch {epoch}, step {step + 1}"
                break
        if status == "ok" and not torch.isfinite(loss_sum):
            status, reason = "diverged", f"diverged: non-finite loss in epoch {epoch}"
        if cuda:
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - epoch_start
        seen += n
        if status != "ok":
            break
        val_loss, val_acc, _ = evaluate(model, data.val, info, t.batch_size, autocast, channels_last)
        if not math.isfinite(val_loss):  # the epoch's last steps broke the weights after its loss was taken
            status, reason = "diverged", f"diverged: validation loss {val_loss} after epoch {epoch}"
            break
        stats = EpochStats(
            epoch,
            loss_sum.item() / n,
            100.0 * correct.item() / n,
            val_loss,
            val_acc,
            lr,
            time.perf_counter() - epoch_start,
        )
        curve.append(stats)
        if on_checkpoint is not None and t.checkpoint_every and epoch % t.checkpoint_every == 0:
            on_checkpoint(
                training_state(
                    epoch,
                    model,
                    optimizer,
                    scheduler,
                    shuffle,
                    device,
                    curve,
                    train_seconds,
                    seen,
                    time.perf_counter() - start,
                )
            )
        if on_epoch is not None:
            on_epoch(stats)

    test_acc, class_test_acc = None, None
    if status == "ok":
        _, test_acc, each = evaluate(model, data.test, info, t.batch_size, autocast, channels_last)
        names = info.class_names or tuple(str(c) for c in range(info.num_classes))
        class_test_acc = dict(zip(names, each, strict=True))
    val = [s.val_acc for s in curve]
    return TrainResult(
        status=status,
        reason=reason,
        epochs_run=len(curve),
        best_val_acc=max(val, default=0.0),
        final_val_acc=val[-1] if val else 0.0,
        test_acc=test_acc,
        class_test_acc=class_test_acc,
        curve=tuple(curve),
        wall_time_s=time.perf_counter() - start,
        images_per_s=seen / train_seconds if train_seconds else 0.0,
        device=str(device),
        params=count_parameters(model),
        threads=threads,
    ), model


def training_state(epoch, model, optimizer, scheduler, shuffle, device, curve, train_seconds, seen, wall) -> dict:
    """Everything the loop needs to go on exactly after ``epoch``: weights, optimizer and schedule,
    every RNG it draws from (init/dropout: torch's global one, and CUDA's; batch order and
    augmentation: ``shuffle``) and the curve. No AMP scaler: bf16 autocast needs none.
    Plain tensors, dicts, lists and numbers, so ``torch.load(..., weights_only=True)`` reads it."""
    rng = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "curve": [asdict(s) for s in curve],
        "train_seconds": train_seconds,
        "seen": seen,
        "wall_time_s": wall,
    }


def restore(state: dict, model, optimizer, scheduler, shuffle, device) -> tuple[list[EpochStats], float, int]:
    """Load a ``training_state`` into a freshly built loop; returns (curve, train seconds, images seen)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])  # after the scheduler's construction, which set the lr
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"].cpu())
    shuffle.set_state(rng["shuffle"].cpu())
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"].cpu(), device)
    return [EpochStats(**s) for s in state["curve"]], float(state["train_seconds"]), int(state["seen"])
