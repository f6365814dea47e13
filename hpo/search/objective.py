"""The objective: adapts ``hpo.training.loop.fit`` to an Optuna trial (report, prune, record, keep weights).

Testable without a study: ``Objective(spec, ...)(optuna.trial.FixedTrial({...}))`` trains once.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna
import torch
import torchvision

import hpo
from hpo.config import DataSpec, StudySpec, TrainConfig
from hpo.errors import reason
from hpo.records import CONFIRMS, REASON, STATUS, WORKER_ATTR
from hpo.search import shadow
from hpo.search.interrupts import NO_INTERRUPTS, Interrupts, NoInterrupts
from hpo.search.resume import TrialCheckpoint, requeue
from hpo.search.space import trial_config
from hpo.storage.store import worker_tag
from hpo.training import custom
from hpo.training import data as data_mod
from hpo.training.checkpoints import Checkpoints
from hpo.training.loop import EpochStats, TrainResult, fit, resolve_device

log = logging.getLogger(__name__)  # the entry points print these lines (hpo.cli)
COLLAPSE_EPOCH = 2  # from this epoch on, chance-level validation accuracy means the model collapsed
COLLAPSE_MARGIN = 1.2  # "chance level": below 1.2 x 100/classes percent


class StopTrial(Exception):
    """Raised from the epoch hook to end a trial early, with the status and reason to record."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def versions(config: TrainConfig | None = None) -> dict:
    """The library versions, and for your own net the file it came from and its sha256."""
    net = custom.source(config.model.name) if config is not None else None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "optuna": optuna.__version__,
        "hpo": hpo.__version__,
        **({"net_file": net.path, "net_sha256": net.sha256} if net else {}),
    }


def result_attrs(result: TrainResult) -> dict:
    return {
        "val_acc": result.final_val_acc,
        "best_val_acc": result.best_val_acc,
        "test_acc": result.test_acc,
        "class_test_acc": result.class_test_acc,
        "epochs_run": result.epochs_run,
        "wall_time_s": result.wall_time_s,
        "images_per_s": result.images_per_s,
        "device": result.device,
        "threads": result.threads,
        "params": result.params,
    }


def objective_values(spec: StudySpec, result: TrainResult) -> list[float]:
    by_metric = {"val_acc": result.final_val_acc, "wall_time": result.wall_time_s, "params": float(result.params)}
    return [by_metric[m] for m in spec.objective.metrics]


def dominated(values: list[float], others: list[list[float]], directions: list[str]) -> bool:
    """True when some other point is at least as good everywhere and better somewhere."""
    sign = [1 if d == "maximize" else -1 for d in directions]
    # one value per objective everywhere: Optuna completes a trial only with one per direction
    mine = [s * v for s, v in zip(sign, values, strict=True)]
    for other in others:
        theirs = [s * v for s, v in zip(sign, other, strict=True)]
        if all(t >= m for t, m in zip(theirs, mine, strict=True)) and any(
            t > m for t, m in zip(theirs, mine, strict=True)
        ):
            return True
    return False


class Objective:
    def __init__(
        self,
        spec: StudySpec,
        data_dir: str | Path | None = None,
        keep: str = "best",
        artifacts: optuna.artifacts.FileSystemArtifactStore | None = None,
        on_epoch: Callable[[optuna.Trial, EpochStats], None] | None = None,
        guard: Interrupts | NoInterrupts = NO_INTERRUPTS,
        checkpoints: Checkpoints | None = None,
    ):
        self.spec, self.data_dir, self.keep, self.artifacts = spec, data_dir, keep, artifacts
        self.progress = on_epoch  # the progress bar's per-epoch hook
        self.guard = guard  # where a signal may stop a trial at once (hpo.run's Interrupts)
        self.checkpoints = checkpoints  # epoch checkpoints (hpo.search.resume); None: a stopped trial starts again
        self.multi = len(spec.objective.metrics) > 1
        self.device = resolve_device(spec.base.train.device)
        self._data: dict[DataSpec, data_mod.Data] = {}

    def data(self, spec: DataSpec) -> data_mod.Data:
        """Loaded once per process and per data setting; the split seed is the study seed, so
        every trial is scored on the same validation images."""
        spec = dataclasses.replace(spec, split_seed=data_mod.split_seed(spec, self.spec.seed))  # one key per split
        if spec not in self._data:
            self._data[spec] = data_mod.load(spec, self.spec.seed, self.device, root=self.data_dir)
        return self._data[spec]

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        trial.set_user_attr(WORKER_ATTR, worker_tag())  # hpo's store claims it at birth; this covers any other store
        # Every way a trial ends records a status, so a failed trial without one was lost with its
        # worker (hpo.storage.store.is_lost).
        try:
            config = trial_config(trial, self.spec)
            trial.set_user_attr("seed", config.seed)
            trial.set_user_attr("config", config.to_dict())
            trial.set_user_attr("versions", versions(config))
            data = self.data(config.data)
            saved = TrialCheckpoint(self.checkpoints, self.spec.name, trial, config, self.guard)
            resume = saved.load(self.device, report=not self.multi)
            with self.guard.armed():  # a signal stops the training at once
                result, model = fit(
                    config,
                    data,
                    self._epoch_hook(trial, data.info.num_classes, config.train.epochs, resume),
                    resume=resume,
                    on_checkpoint=saved.save if saved.path else None,
                )
        except StopTrial as stop:
            self._record(trial, stop.status, stop.reason)
            raise optuna.TrialPruned(stop.reason) from None
        except KeyboardInterrupt:
            self._record(trial, "interrupted", "interrupted: stopped by the user (SIGINT/SIGTERM)")
            requeue(trial)  # its retry goes on from the last checkpoint
            raise
        except Exception as e:  # the study goes on; the reason stays with the trial
            self._record(trial, "failed", "failed: " + reason(e, typed=True))
            raise
        for key, value in result_attrs(result).items():
            trial.set_user_attr(key, value)
        if result.status == "diverged":
            self._record(trial, "diverged", result.reason)
            raise optuna.TrialPruned(result.reason)
        self._record(trial, "ok", "")
        values = objective_values(self.spec, result)
        if self._should_keep(trial, values):
            self._keep_weights(trial, model)
        return values if self.multi else values[0]

    def _keep_weights(self, trial: optuna.Trial, model: torch.nn.Module) -> None:
        """A trained result is never lost to its weights: a failed save is a warning on the trial."""
        try:
            self._save_weights(trial, model)
        except Exception as e:  # a full disk, an unwritable models/, a lost artifact store
            why = reason(e, typed=True)
            trial.set_user_attr("weights_error", why)
            log.warning(f"warning: trial #{trial.number}: its weights were not kept ({why}); its result is")

    def _epoch_hook(
        self, trial: optuna.Trial, num_classes: int, epochs: int, resume: dict | None = None
    ) -> Callable[[EpochStats], None]:
        """What each epoch does: record the curve, report to the pruner, stop a pruned or collapsed trial."""
        curve: list[dict] = list(resume["curve"]) if resume else []  # a resumed trial's curve is the whole curve
        chance = 100.0 / num_classes

        def on_epoch(stats: EpochStats) -> None:
            with self.guard.held():  # a signal waits until the epoch's store writes are done
                curve.append(dataclasses.asdict(stats))
                trial.set_user_attr("curve", curve)
                trial.set_user_attr("epochs_run", stats.epoch)
                if self.progress:
                    self.progress(trial, stats)
                if not self.multi:  # Optuna prunes single-objective studies only
                    trial.report(stats.val_acc, stats.epoch)
                prune = not self.multi and trial.should_prune()
                if self.multi and not isinstance(trial, optuna.trial.FixedTrial) and shadow.prunable(trial.study):
                    prune = shadow.should_prune(trial, curve)  # on val_acc, through a single-objective shadow
                # A confirmation's full value is the point: never pruned, whichever run pops it (a
                # resumed --confirm run is an ordinary run with the study file's pruner).
                prune = prune and CONFIRMS not in trial.user_attrs
                # After the last epoch a stop saves nothing and would throw a full result away.
                prune = prune and stats.epoch < epochs
            if stats.epoch >= COLLAPSE_EPOCH and stats.val_acc < COLLAPSE_MARGIN * chance:
                raise StopTrial(
                    "collapsed",
                    f"collapsed: validation accuracy {stats.val_acc:.1f}% is chance level "
                    f"({chance:.0f}% for {num_classes} classes) at epoch {stats.epoch}",
                )
            if prune:
                raise StopTrial(
                    "pruned",
                    f"pruned at epoch {stats.epoch}: validation accuracy "
                    f"{stats.val_acc:.2f}% behind the other trials ({self.spec.pruner.name} pruner)",
                )

        return on_epoch

    @staticmethod
    def _record(trial: optuna.Trial, status: str, reason: str) -> None:
        trial.set_user_attr(STATUS, status)
        trial.set_user_attr(REASON, reason)

    def _should_keep(self, trial: optuna.Trial, values: list[float]) -> bool:
        """ "best" keeps each trial that is the best so far when it finishes: the final best is
        always there, and the records before it cost little (a handful, not one per trial)."""
        if self.artifacts is None or self.keep == "none" or isinstance(trial, optuna.trial.FixedTrial):
            return False
        if self.keep == "all":
            return True
        done = trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return not dominated(values, [t.values for t in done], self.spec.objective.directions) and not any(
            t.values == values for t in done
        )

    def _save_weights(self, trial: optuna.Trial, model: torch.nn.Module) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{self.spec.name}-trial{trial.number}.pt"
            torch.save(model.state_dict(), path)  # load with torch.load(..., weights_only=True)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.artifacts,
                file_path=str(path),
                study_or_trial=trial,
                mimetype="application/octet-stream",  # mimetypes guesses .pt as a SNES page table
            )
        trial.set_user_attr("weights_artifact_id", artifact_id)
