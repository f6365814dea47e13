"""Plain Optuna: the study as a user of optuna-examples would write it.

A transcription of optuna-examples ``pytorch/pytorch_simple.py``
(https://github.com/optuna/optuna-examples/blob/main/pytorch/pytorch_simple.py): a torchvision
``FashionMNIST`` dataset with per-image transforms, fresh ``DataLoader``s built inside the
objective for every trial, ``trial.suggest_*``, a plain epoch loop, ``trial.report`` and
``trial.should_prune`` after each epoch's validation, ``create_study(direction="maximize")`` with
its default pruner (``MedianPruner()``), one process, torch's default threads. Changed only where
the comparison with hpo needs it:
- the network is LeNet-5, the very module hpo trains (``hpo.training.nets``), not the example's MLP, and
  the search is SGD's lr (log 1e-4..1), momentum (0.5..0.99) and batch size (32..256), not layers,
  units, dropout and optimizer;
- all of the training set, 10 % of it held out (seeded) for validation: the example caps training
  at 30 batches and validates on the test set; images normalised with Fashion-MNIST's mean and std,
  as hpo does;
- the data come from a local folder in torchvision's raw layout (``download=True`` finds them and
  downloads nothing); the sampler is seeded; there is no ``timeout``;
- each ``trial.report`` also notes the wall-clock time, and the end prints one JSON line of them.

    python bench/peers/optuna_simple.py --data-dir DIR [--trials 30] [--epochs 6] [--train-size 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F
import torch.optim as optim
import torch.utils.data
from optuna.trial import TrialState
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # hpo.training.nets, without installing
from hpo.training.nets import build  # noqa: E402

DEVICE = torch.device("cpu")
CLASSES = 10
MEAN, STD = (0.2860,), (0.3530,)  # Fashion-MNIST's training set, as hpo normalises
VAL_FRACTION = 0.1
SEED = 0

ARGS = argparse.Namespace(data_dir="data", epochs=6, train_size=0)
REPORTS: dict[int, list[tuple[float, float]]] = {}  # trial number -> (wall-clock time, val acc %) per epoch


def define_model(trial):
    return build("lenet5", 1, 28, CLASSES)


def get_mnist(batch_size):
    # Load FashionMNIST dataset.
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    dataset = datasets.FashionMNIST(ARGS.data_dir, train=True, download=True, transform=transform)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(SEED))
    n_valid = round(len(order) * VAL_FRACTION)  # as hpo splits: 6,000 held out, train_size cut from the rest
    train = order[n_valid:][: ARGS.train_size or None]
    train_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, train.tolist()),
        batch_size=batch_size,
        shuffle=True,
    )
    valid_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order[:n_valid].tolist()),
        batch_size=batch_size,
        shuffle=True,
    )
    return train_loader, valid_loader


def objective(trial):
    # Generate the model.
    model = define_model(trial).to(DEVICE)

    # Generate the optimizer.
    lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
    momentum = trial.suggest_float("momentum", 0.5, 0.99)
    batch_size = trial.suggest_categorical("batch_size", [32, 64, 128, 256])
    optimizer = optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    # Get the FashionMNIST dataset.
    train_loader, valid_loader = get_mnist(batch_size)
    reports = REPORTS.setdefault(trial.number, [])

    # Training of the model.
    for epoch in range(ARGS.epochs):
        model.train()
        for data, target in train_loader:
            data, target = data.to(DEVICE), target.to(DEVICE)
            optimizer.zero_grad()
            output = model(data)
            loss = F.cross_entropy(output, target)
            loss.backward()
            optimizer.step()

        # Validation of the model.
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in valid_loader:
                data, target = data.to(DEVICE), target.to(DEVICE)
                output = model(data)
                # Get the index of the max log-probability.
                pred = output.argmax(dim=1, keepdim=True)
                correct += pred.eq(target.view_as(pred)).sum().item()

        accuracy = correct / len(valid_loader.dataset)
        reports.append((time.time(), 100.0 * accuracy))

        trial.report(accuracy, epoch)

        # Handle pruning based on the intermediate value.
        if trial.should_prune():
            raise optuna.exceptions.TrialPruned()

    return accuracy


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
        "--threads", type=int, default=0, help="torch threads, 0: torch's default, as the example (default: 0)"
    )
    args = p.parse_args(argv)
    ARGS.__dict__.update(vars(args))
    if args.threads:
        torch.set_num_threads(args.threads)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=SEED))
    study.optimize(objective, n_trials=args.trials)

    pruned_trials = study.get_trials(deepcopy=False, states=[TrialState.PRUNED])
    complete_trials = study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])
    print("Study statistics: ", file=sys.stderr)
    print(f"  Number of finished trials: {len(study.trials)}", file=sys.stderr)
    print(f"  Number of pruned trials: {len(pruned_trials)}", file=sys.stderr)
    print(f"  Number of complete trials: {len(complete_trials)}", file=sys.stderr)
    if complete_trials:
        print(f"  Best trial: value {study.best_trial.value}, params {study.best_trial.params}", file=sys.stderr)
    trials = [{"state": t.state.name.lower(), "epochs": REPORTS.get(t.number, [])} for t in study.trials]
    print(json.dumps({"trials": trials, "threads": torch.get_num_threads()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
