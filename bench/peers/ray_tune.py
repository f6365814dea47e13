"""Ray Tune: the same study through Ray's documented function-trainable pattern.

The pattern of Ray's "Hyperparameter tuning with Ray Tune" PyTorch tutorial
(https://docs.ray.io/en/latest/tune/examples/tune-pytorch-cifar.html) and Ray's OptunaSearch
example: a function trainable that loads a torchvision dataset with per-image transforms into
``DataLoader``s, trains, validates and calls ``tune.report`` each epoch; ``Tuner`` with
``OptunaSearch`` (Optuna's TPE) as the search algorithm and ``ASHAScheduler`` (max_t = epochs,
grace period 1, reduction factor 2, as the tutorial) stopping poor trials early;
``max_concurrent_trials`` = the cores, one CPU per trial, CPU only. As in the Optuna peer
(optuna_simple.py): LeNet-5 from ``hpo.training.nets``, SGD's lr, momentum and batch size, 10 % of the
training set held out, normalised; ``DataLoader(num_workers=0)``: a trial has one CPU.

    python bench/peers/ray_tune.py --data-dir DIR [--trials 30] [--epochs 6] [--train-size 0] [--cpus N]

Prints one JSON line: each trial's (wall-clock time, val acc %) per epoch. Needs ``pip install
'ray[tune]'`` (hpo's ``bench`` extra); without it, or when Ray cannot start, it prints
``unavailable: <why>`` on stdout and exits 3.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.data
from torchvision import datasets, transforms

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # hpo.training.nets, without installing
from hpo.training.nets import build  # noqa: E402

MEAN, STD = (0.2860,), (0.3530,)
VAL_FRACTION = 0.1
SEED = 0
UNAVAILABLE = 3


def load_data(data_dir: str, train_size: int):
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.FashionMNIST(data_dir, train=True, download=True, transform=transform)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SEED))
    n_valid = round(len(order) * VAL_FRACTION)  # as hpo splits: 6,000 held out, train_size cut from the rest
    train = order[n_valid:][: train_size or None]
    return torch.utils.data.Subset(dataset, train.tolist()), torch.utils.data.Subset(dataset, order[:n_valid].tolist())


def train_fashion_mnist(config, data_dir: str, epochs: int, train_size: int):
    from ray import tune

    model = build("lenet5", 1, 28, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    trainset, valset = load_data(data_dir, train_size)
    trainloader = torch.utils.data.DataLoader(
        trainset, batch_size=int(config["batch_size"]), shuffle=True, num_workers=0
    )
    valloader = torch.utils.data.DataLoader(valset, batch_size=int(config["batch_size"]), shuffle=True, num_workers=0)
    for _epoch in range(epochs):
        model.train()
        for inputs, labels in trainloader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for inputs, labels in valloader:
                correct += (model(inputs).argmax(1) == labels).sum().item()
                total += labels.size(0)
        tune.report({"val_acc": 100.0 * correct / total, "t": time.time(), "threads": torch.get_num_threads()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data", help="folder holding FashionMNIST/raw (default: data)")
    p.add_argument("--trials", type=int, default=30, help="trials (default: 30)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial (default: 6)")
    p.add_argument(
        "--train-size",
        type=int,
        default=0,
        help="training images, 0: all 54,000 left after the validation split (default: 0)",
    )
    p.add_argument(
        "--cpus",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="CPUs for Ray and max_concurrent_trials (default: the usable cores)",
    )
    args = p.parse_args(argv)
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except Exception as e:  # not installed, or broken against this Python/Optuna
        print(f"unavailable: Ray Tune cannot be imported ({type(e).__name__}: {e}); pip install 'ray[tune]'")
        return UNAVAILABLE
    try:
        ray.init(
            num_cpus=args.cpus,
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=100 * 1024 * 1024,
            configure_logging=False,
        )
    except Exception as e:
        print(f"unavailable: Ray cannot start here ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return UNAVAILABLE

    trainable = tune.with_resources(
        tune.with_parameters(
            train_fashion_mnist,
            data_dir=str(Path(args.data_dir).resolve()),
            epochs=args.epochs,
            train_size=args.train_size,
        ),
        resources={"cpu": 1},
    )
    param_space = {
        "lr": tune.loguniform(1e-4, 1.0),
        "momentum": tune.uniform(0.5, 0.99),
        "batch_size": tune.choice([32, 64, 128, 256]),
    }
    with tempfile.TemporaryDirectory(prefix="hpo-bench-ray-") as tmp:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric="val_acc",
                mode="max",
                num_samples=args.trials,
                max_concurrent_trials=args.cpus,
                search_alg=OptunaSearch(seed=SEED),
                scheduler=ASHAScheduler(max_t=args.epochs, grace_period=1, reduction_factor=2),
            ),
            run_config=tune.RunConfig(storage_path=tmp, name="peers", verbose=0),
        )
        results = tuner.fit()
        trials = []
        for r in results:
            frame = r.metrics_dataframe
            epochs = (
                []
                if frame is None or frame.empty
                else [[float(t), float(a)] for t, a in zip(frame["t"], frame["val_acc"], strict=True)]
            )
            state = "fail" if r.error else ("complete" if len(epochs) == args.epochs else "pruned")
            trials.append({"state": state, "epochs": epochs})
            threads = int(frame["threads"].iloc[-1]) if epochs else 0
    ray.shutdown()
    print(json.dumps({"trials": trials, "threads": threads, "ray": ray.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
