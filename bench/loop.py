"""Training-loop speed: hpo's loop against the coursework's DataLoader loop and the compute bound.

    .venv/bin/python bench/loop.py [--model lenet5] [--batch-size 128] [--images 20000] [--epochs 2]

Three loops train the same model (same init), batch size, optimizer (SGD, momentum 0.9) and
CIFAR-10-shaped data (3x32x32 uint8, 10 classes; random pixels, since CIFAR-10 cannot be
downloaded everywhere and pixel content does not change the speed):

1. hpo:        ``hpo.training.loop.fit`` with augment on (random crop, pad 4, and flip, as cifar10 uses);
               its ``images_per_s`` counts training steps only, not evaluation.
2. coursework: torchvision's ``CIFAR10`` reading real CIFAR-10-format batch files written to a
               temporary folder, per-image ``RandomCrop(32, 4) / RandomHorizontalFlip / ToTensor /
               Normalize`` on PIL images, ``DataLoader(shuffle=True, num_workers=2)``, then the same
               step, as the coursework write-ups did (workers restart each epoch, as theirs did).
3. compute:    the same step on batches already in memory as normalised float tensors: no data
               work at all, the bound the other two approach.

Each loop first runs a few warm-up batches (kernel selection, allocator), then is timed over
``--epochs`` passes of ``--images`` images. The three run ``--rounds`` times in turn and each
one's fastest round counts: on a shared CPU a neighbour can only slow a loop down, and taking
turns spreads a neighbour's burst over all three. A benchmark, not a test: it prints figures and
the machine, and never fails on a slow result.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import pickle
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from machine import Neighbours, cpu_model, load_average  # noqa: E402  (bench/machine.py)
from torch.utils.data import DataLoader
from torchvision import transforms

from hpo.config import DataSpec, ModelSpec, TrainConfig, TrainSpec, cpu_count  # noqa: E402
from hpo.training.data import Data, Split  # noqa: E402
from hpo.training.datasets import DATASETS  # noqa: E402
from hpo.training.loop import OPTIMIZERS, fit, keep_freed_memory  # noqa: E402
from hpo.training.nets import NETS, build  # noqa: E402

INFO = DATASETS["cifar10"]
SEED = 0
EVAL_IMAGES = 256  # hpo's val/test splits: evaluation is not timed, so keep it short


# ---------------------------------------------------------------- the data


def make_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    images = torch.randint(0, 256, (n, INFO.channels, INFO.size, INFO.size), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, INFO.num_classes, (n,), generator=g)


def write_cifar(root: Path, images: torch.Tensor, labels: torch.Tensor) -> type[torchvision.datasets.CIFAR10]:
    """``images`` as CIFAR-10 batch files (the official pickled format: rows of R, G, B planes)
    under ``root``, spread over data_batch_1..5, and a CIFAR10 subclass carrying their md5s so
    torchvision's integrity check passes with download=False."""
    base = torchvision.datasets.CIFAR10
    folder = root / base.base_folder
    folder.mkdir(parents=True)
    rows = images.reshape(len(images), -1).numpy()
    parts = np.array_split(np.arange(len(images)), 5)

    def write(name: str, data: np.ndarray, targets: list[int]) -> list[str]:
        blob = pickle.dumps({"data": data, "labels": targets, "batch_label": name}, protocol=2)
        (folder / name).write_bytes(blob)
        return [name, hashlib.md5(blob).hexdigest()]

    train_list = [write(f"data_batch_{i + 1}", rows[p], labels.numpy()[p].tolist()) for i, p in enumerate(parts)]
    test_list = [write("test_batch", rows[:EVAL_IMAGES], labels[:EVAL_IMAGES].tolist())]
    meta = pickle.dumps({"label_names": [f"class{i}" for i in range(INFO.num_classes)]}, protocol=2)
    (folder / "batches.meta").write_bytes(meta)
    return type(
        "BenchCIFAR10",
        (base,),
        {
            "train_list": train_list,
            "test_list": test_list,
            "meta": {"filename": "batches.meta", "key": "label_names", "md5": hashlib.md5(meta).hexdigest()},
        },
    )


# ---------------------------------------------------------------- the loops


def new_model(name: str):
    torch.manual_seed(SEED)
    model = build(name, INFO.channels, INFO.size, INFO.num_classes)
    return model, OPTIMIZERS["sgd"](model.parameters(), TrainSpec(lr=0.01, momentum=0.9))


def step(model, optimizer, x, y) -> None:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def run_hpo(args, images, labels) -> float:
    def config(epochs: int) -> TrainConfig:
        return TrainConfig(
            data=DataSpec(dataset="cifar10", augment=True),
            model=ModelSpec(name=args.model),
            train=TrainSpec(
                epochs=epochs,
                batch_size=args.batch_size,
                optimizer="sgd",
                lr=0.01,
                momentum=0.9,
                device="cpu",
                threads=args.threads,
            ),
            seed=SEED,
        )

    held_out = Split(images[:EVAL_IMAGES], labels[:EVAL_IMAGES])
    warm = args.warmup_batches * args.batch_size
    fit(config(1), Data(INFO, Split(images[:warm], labels[:warm]), held_out, held_out))
    result, _ = fit(config(args.epochs), Data(INFO, Split(images, labels), held_out, held_out))
    if result.status != "ok":
        print(f"  note: hpo's run ended early ({result.reason}); its rate covers the steps it ran")
    return result.images_per_s


def run_coursework(args, dataset_class, root: str) -> float:
    transform = transforms.Compose(
        [
            transforms.RandomCrop(INFO.size, padding=INFO.crop_padding),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(INFO.mean, INFO.std),
        ]
    )
    dataset = dataset_class(root, train=True, download=False, transform=transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    torch.manual_seed(SEED)  # the loader's shuffle and the transforms' draws
    model, optimizer = new_model(args.model)
    model.train()
    for i, (x, y) in enumerate(loader):  # warm-up: its workers are shut down when it is dropped
        if i == args.warmup_batches:
            break
        step(model, optimizer, x, y)
    seen, start = 0, time.perf_counter()
    for _ in range(args.epochs):
        for x, y in loader:
            step(model, optimizer, x, y)
            seen += len(y)
    return seen / (time.perf_counter() - start)


def run_compute(args, images, labels) -> float:
    mean = torch.tensor(INFO.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(INFO.std).view(1, -1, 1, 1) * 255
    x_all = (images.float() - mean) / std  # normalised once, up front: no data work in the loop
    model, optimizer = new_model(args.model)
    model.train()
    b = args.batch_size
    for i in range(args.warmup_batches):
        step(model, optimizer, x_all[i * b : (i + 1) * b], labels[i * b : (i + 1) * b])
    seen, start = 0, time.perf_counter()
    for _ in range(args.epochs):
        for s in range(0, len(labels), b):
            y = labels[s : s + b]
            step(model, optimizer, x_all[s : s + b], y)
            seen += len(y)
    return seen / (time.perf_counter() - start)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/loop.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(NETS), default="lenet5", help="network (default: lenet5)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size of all three loops (default: 128)")
    parser.add_argument("--images", type=int, default=20000, help="CIFAR-10-shaped training images (default: 20000)")
    parser.add_argument("--epochs", type=int, default=2, help="timed passes over the images (default: 2)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads for all three loops; 0: all cores (default: 0)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="coursework DataLoader workers (default: 2, as the coursework used)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each loop runs, interleaved; its best counts (default: 3)"
    )
    parser.add_argument("--warmup-batches", type=int, default=10, help="untimed batches before each loop (default: 10)")
    args = parser.parse_args(argv)
    if (
        args.images < args.batch_size
        or args.batch_size < 1
        or args.epochs < 1
        or args.threads < 0
        or args.warmup_batches < 1
        or args.rounds < 1
    ):
        parser.error(
            "need --images >= --batch-size >= 1, --epochs >= 1, --rounds >= 1, --threads >= 0, --warmup-batches >= 1"
        )
    args.warmup_batches = min(args.warmup_batches, args.images // args.batch_size)
    args.threads = args.threads or cpu_count()
    torch.set_num_threads(args.threads)  # fit sets the same value from its config
    keep_freed_memory()  # fit sets this allocator switch for its process; the other two loops get it too

    total = args.epochs * args.images
    print(
        f"machine   {cpu_model()}, {os.cpu_count()} cores ({cpu_count()} usable), "
        f"{platform.system()} {platform.release()}"
    )
    print(
        f"software  python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, "
        f"torch threads {args.threads}, mkldnn {torch.backends.mkldnn.is_available()}"
    )
    print(
        f"settings  {args.model}, batch {args.batch_size}, SGD momentum 0.9, {args.images} CIFAR-10-shaped images x "
        f"{args.epochs} epochs = {total} timed images per loop, {args.warmup_batches} warm-up batches, "
        f"coursework workers {args.workers}"
    )
    print(f"date      {datetime.datetime.now().isoformat(timespec='seconds')}, load average {load_average()}")

    images, labels = make_images(args.images)
    names = {"compute": "compute bound", "hpo": "hpo", "coursework": "coursework"}
    rates: dict[str, list[float]] = {k: [] for k in names}
    busy: dict[str, list[float]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
        dataset_class = write_cifar(Path(tmp), images, labels)
        # Rounds interleave the loops, so a neighbour's burst on a shared CPU lands on all of them.
        for r in range(1, args.rounds + 1):
            for key, run in (
                ("compute", lambda: run_compute(args, images, labels)),
                ("hpo", lambda: run_hpo(args, images, labels)),
                ("coursework", lambda: run_coursework(args, dataset_class, tmp)),
            ):
                torch.set_num_threads(args.threads)
                neighbours = Neighbours()
                rates[key].append(run())
                others = neighbours.cores()
                busy[key].append(others if others is not None else float("nan"))
                print(
                    f"  round {r}  {names[key]:<14} {rates[key][-1]:>9,.0f} img/s   other processes used "
                    f"{busy[key][-1]:.2f} cores",
                    flush=True,
                )

    best = {k: max(v) for k, v in rates.items()}
    print(f"result (best of {args.rounds} round{'s' if args.rounds > 1 else ''}; spread = slowest/fastest round)")
    for key, name in names.items():
        i = rates[key].index(best[key])
        print(
            f"  {name:<14} {best[key]:>9,.0f} img/s   spread {min(rates[key]) / best[key]:.2f}   "
            f"other processes used {busy[key][i]:.2f} cores in that round"
        )
    print(f"  hpo / coursework     {best['hpo'] / best['coursework']:5.2f}x")
    print(f"  hpo / compute bound  {best['hpo'] / best['compute']:5.2f}x")
    print(f"load average after   {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
