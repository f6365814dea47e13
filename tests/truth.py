"""Ground-truth studies: built in the store as hpo records them (optuna.create_trial, no training),
with effects the test knows, for checking the report's words against the truth.

- ``cliff``: validation accuracy depends on lr alone (peak at lr 0.03); momentum >= 0.9 makes every
  trial diverge by epoch 2; batch size does nothing; the worst trials are pruned at epoch 2 or 3.
- ``lucky_batch``: as ``cliff`` without the momentum cliff, but batch size 256 drew the good lrs,
  so its raw mean looks better although batch size does nothing.
- ``confounded``: lr raises accuracy, momentum lowers it, and the sampler paired high momentum
  with high lr, so raw momentum means rise while its true effect falls.
- ``choice``: a real categorical effect: gelu trains 4 points better than relu and tanh (which
  are alike), lr as in ``cliff`` (no cliff), and an irrelevant ``width`` (16, 32, 64).
- ``thin``: five trials of ``cliff``.
"""

from __future__ import annotations

import datetime as dt
import math
import warnings

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

BEST_LR = 0.03
CLIFF_MOMENTUM = 0.9
EPOCHS = 6
BATCHES = [32, 64, 128, 256]
NOISE = 0.6  # seed-to-seed sd of the final accuracy, in points
ACTIVATIONS = {"relu": 0.0, "tanh": 0.0, "gelu": 4.0}  # the true gain of each activation, in points
WIDTHS = [16, 32, 64]


def lr_acc(lr: float) -> float:
    return max(10.0, 90.0 - 15.0 * math.log10(lr / BEST_LR) ** 2)


def confounded_acc(lr: float, momentum: float) -> float:
    u = (math.log10(lr) + 4) / 3
    return 80.0 + 10.0 * u - 6.0 * (momentum - 0.5) / 0.49


def _attrs(
    number: int, params: dict, status: str, reason: str, curve: list[float], final: float | None, test: float | None
) -> dict:
    return {
        "status": status,
        "reason": reason,
        "val_acc": curve[-1] if curve else 0.0,
        "best_val_acc": max(curve, default=0.0),
        **({"test_acc": test} if test is not None else {}),
        "epochs_run": len(curve),
        "wall_time_s": 2.0 * len(curve),
        "images_per_s": 10000.0,
        "device": "cpu",
        "threads": 1,
        "params": 61706,
        "seed": number,
        "curve": [
            {
                "epoch": e,
                "train_loss": 1.0,
                "train_acc": v,
                "val_loss": 1.0,
                "val_acc": v,
                "lr": params.get("lr", 0.01),
                "seconds": 2.0,
            }
            for e, v in enumerate(curve, 1)
        ],
        "config": {"train": {"epochs": EPOCHS, **params}, "seed": number},
        "versions": {"python": "3.11", "torch": "2", "torchvision": "0", "optuna": optuna.__version__, "hpo": "0.1.0"},
    }


def _curve(final: float, epochs: int) -> list[float]:
    return [final - 1.5 * (EPOCHS - e) for e in range(1, epochs + 1)]


def build(url: str, name: str, kind: str = "cliff", n: int = 80, seed: int = 0) -> optuna.Study:
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    for key, value in {
        "description": f"ground truth: {kind}",
        "seed": seed,
        "metrics": ["val_acc"],
        "epochs": EPOCHS,
        "study_file": f"studies/{name}/study.toml",
    }.items():
        study.set_user_attr(key, value)
    with warnings.catch_warnings():  # experimental in Optuna, and what hpo.search.study does too
        warnings.simplefilter("ignore")
        study.set_metric_names(["val_acc"])
    if kind == "thin":
        kind, n = "cliff", 5
    dists = {
        "lr": FloatDistribution(1e-4, 1.0, log=True),
        "momentum": FloatDistribution(0.5, 0.99),
        "batch_size": CategoricalDistribution(BATCHES),
    }
    if kind == "confounded":
        dists = {"lr": FloatDistribution(1e-4, 0.1, log=True), "momentum": FloatDistribution(0.5, 0.99)}
    if kind == "choice":
        dists = {
            "lr": FloatDistribution(1e-4, 1.0, log=True),
            "activation": CategoricalDistribution(list(ACTIVATIONS)),
            "width": CategoricalDistribution(WIDTHS),
        }
    rows = []
    for number in range(n):
        if kind == "choice":
            params = {
                "lr": float(10 ** rng.uniform(-3, -0.5)),
                "activation": list(ACTIVATIONS)[int(rng.integers(3))],
                "width": WIDTHS[int(rng.integers(3))],
            }
            acc = lr_acc(params["lr"]) + ACTIVATIONS[params["activation"]] - 4.0 + rng.normal(0, NOISE)
        elif kind == "confounded":
            u = rng.uniform()
            params = {
                "lr": float(10 ** (-4 + 3 * u)),
                "momentum": float(np.clip(0.5 + 0.49 * (u + rng.normal(0, 0.15)), 0.5, 0.99)),
            }
            acc = confounded_acc(params["lr"], params["momentum"]) + rng.normal(0, NOISE)
        else:
            params = {
                "lr": float(10 ** rng.uniform(-4, 0)),
                "momentum": float(rng.uniform(0.5, 0.99)),
                "batch_size": BATCHES[int(rng.integers(4))],
            }
            acc = lr_acc(params["lr"]) + rng.normal(0, NOISE)
            if kind == "lucky_batch":  # batch size does nothing, but the good lrs landed on 256
                params["momentum"] = float(rng.uniform(0.5, 0.89))
                params["batch_size"] = 256 if acc > 80 and rng.uniform() < 0.7 else BATCHES[int(rng.integers(3))]
        rows.append((number, params, acc))
    # The pruner stops the worst of the trials that did not diverge, at epoch 2 or 3.
    alive = [r for r in rows if not (kind == "cliff" and r[1]["momentum"] >= CLIFF_MOMENTUM)]
    pruned = (
        {r[0] for r in sorted(alive, key=lambda r: r[2])[: int(0.27 * len(alive))]}
        if kind not in ("confounded", "choice")
        else set()
    )
    start = dt.datetime(2026, 1, 5, 9, 0, 0)
    for number, params, acc in rows:
        if kind == "cliff" and params["momentum"] >= CLIFF_MOMENTUM:
            epochs = number % 2  # diverges in epoch 1 (nothing recorded) or epoch 2 (epoch 1 at chance)
            curve = [10.0 + rng.uniform(0, 1)] * epochs
            state, status, reason = TrialState.PRUNED, "diverged", f"diverged: loss nan at epoch {epochs + 1}, step 3"
            final = test = None
        elif number in pruned:
            epochs = 2 + number % 2
            curve = _curve(acc, epochs)
            state, status, reason = (
                TrialState.PRUNED,
                "pruned",
                f"pruned at epoch {epochs}: behind the other trials (median pruner)",
            )
            final = test = None
        else:
            curve = _curve(acc, EPOCHS)
            state, status, reason, final, test = TrialState.COMPLETE, "ok", "", acc, acc - 0.4
        trial = optuna.create_trial(
            state=state,
            value=final,
            params=params,
            distributions=dists,
            user_attrs=_attrs(number, params, status, reason, curve, final, test),
            intermediate_values={e: v for e, v in enumerate(curve, 1)},
        )
        trial.datetime_start = start + dt.timedelta(seconds=30 * number)
        trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=2 * max(1, len(curve)))
        study.add_trial(trial)
    return study
