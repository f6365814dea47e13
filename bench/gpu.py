"""GPU figures for bench/gpu.sh: epoch times through ``hpo.training.loop.fit`` and ``--workers auto`` on one GPU.

    .venv/bin/python bench/gpu.py [--images 50000] [--trials 2]

1. LeNet-5 and ResNet-18 (CIFAR stem) on CIFAR-10-shaped data (3x32x32 uint8, 10 classes, random
   pixels: pixel content does not change the speed), batch 128, augmentation on, SGD; each with
   bf16 autocast (``train.amp``) on and off and ``train.channels_last`` on and off. Each runs two
   epochs; the second one's time counts (the first pays cuDNN's autotuning and the allocator).
2. ``python -m hpo.run --study lenet_lr --trials N --workers auto`` (on one GPU: two workers
   sharing it) against ``--workers 1``, whole commands on fresh SQLite stores, on the real
   Fashion-MNIST where it is found, else on random data in its file format.
Needs CUDA; bench/gpu.sh checks that first. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

from machine import cpu_model  # noqa: E402
from meter import measure  # noqa: E402

from hpo.config import DataSpec, ModelSpec, TrainConfig, TrainSpec  # noqa: E402
from hpo.training.data import Data, Split  # noqa: E402
from hpo.training.datasets import (  # noqa: E402
    DATASETS,  # noqa: E402
    IDX_FILES,
    SYSTEM_FASHION_MNIST,
)
from hpo.training.loop import fit  # noqa: E402

SEED = 0


def epoch_rate(model: str, amp: bool, channels_last: bool, images: int) -> tuple[float, float]:
    """(images/s of the second epoch, its seconds), data already on the GPU."""
    info = DATASETS["cifar10"]
    g = torch.Generator().manual_seed(SEED)
    x = torch.randint(0, 256, (images, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (images,), generator=g)
    held = Split(x[:512].cuda(), y[:512].cuda())
    data = Data(info, Split(x.cuda(), y.cuda()), held, held)
    config = TrainConfig(
        data=DataSpec(dataset="cifar10", augment=True),
        model=ModelSpec(name=model),
        train=TrainSpec(
            epochs=2,
            batch_size=128,
            optimizer="sgd",
            lr=0.01,
            momentum=0.9,
            device="cuda",
            amp=amp,
            channels_last=channels_last,
        ),
        seed=SEED,
    )
    result, _ = fit(config, data)
    seconds = result.curve[-1].seconds
    return images / seconds, seconds


def idx_file(path: Path, array: torch.Tensor) -> None:
    dims = list(array.shape)
    header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.numpy().tobytes())


def fashion_mnist_dir(tmp: Path) -> tuple[str, str]:
    """A data folder for hpo.run and what it holds: the real files where they are, else random
    images in Fashion-MNIST's format (speed does not depend on the pixels; accuracy does)."""
    for folder in (Path(os.environ.get("HPO_DATA_DIR", "data")) / "fashion-mnist", SYSTEM_FASHION_MNIST):
        if all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in IDX_FILES):
            return str(folder.parent), f"the real Fashion-MNIST ({folder})"
    folder = tmp / "fashion-mnist"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(SEED)
    for part, n in (("train", 60000), ("t10k", 10000)):
        idx_file(
            folder / f"{part}-images-idx3-ubyte", torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        )
        idx_file(folder / f"{part}-labels-idx1-ubyte", torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8))
    return str(tmp), "random images in Fashion-MNIST's format (no real copy here: accuracies mean nothing)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu.py", description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50000, help="training images per epoch (default: 50000, CIFAR-10's)")
    p.add_argument("--trials", type=int, default=2, help="trials of the --workers runs (default: 2)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial of the --workers runs (default: 3)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu.py: no CUDA device visible; nothing to measure")
        return 0
    print(
        f"machine   {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, "
        f"{cpu_model()}, {os.cpu_count()} cores"
    )
    print(
        f"software  python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}"
    )
    print(f"epochs    CIFAR-10-shaped, {args.images} images, batch 128, augment on, SGD; second epoch timed")
    print("| net | amp (bf16) | channels_last | img/s | epoch s |")
    print("|---|---|---|---|---|")
    for model in ("lenet5", "resnet18"):
        for amp in (True, False):
            for cl in (True, False):
                rate, seconds = epoch_rate(model, amp, cl, args.images)
                print(
                    f"| {model} | {'on' if amp else 'off'} | {'on' if cl else 'off'} | {rate:,.0f} | {seconds:.2f} |",
                    flush=True,
                )
    with tempfile.TemporaryDirectory(prefix="hpo-bench-gpu-") as tmp:
        data_dir, what = fashion_mnist_dir(Path(tmp))
        print(f"\nworkers   lenet_lr, {args.trials} trials x {args.epochs} epochs on {what}, one GPU")
        for workers in ("auto", "1"):
            store = Path(tmp) / f"w{workers}.db"
            cmd = [
                sys.executable,
                "-m",
                "hpo.run",
                "--study",
                "lenet_lr",
                "--trials",
                str(args.trials),
                "--workers",
                workers,
                "--storage",
                f"sqlite:///{store}",
                "--keep",
                "none",
                "--quiet",
                "--data-dir",
                data_dir,
                "--set",
                f"train.epochs={args.epochs}",
                "--set",
                "pruner.name=none",
            ]
            m = measure(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            split = [line for line in m.stderr.splitlines() if "] pid " in line]
            status = (
                "ok" if m.returncode == 0 else f"failed (exit {m.returncode}): {m.stderr.strip().splitlines()[-1:]}"
            )
            print(
                f"  --workers {workers:<4} {m.wall_s:6.1f} s  {args.trials / m.wall_s * 3600:6.0f} trials/h  "
                f"{m.cpu_s:6.1f} CPU s  peak RSS {m.peak_rss / 2**20:,.0f} MiB  {status}"
                + (f"  ({'; '.join(s.split('] ', 1)[1] for s in split)})" if split else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
