"""Epoch checkpoints on disk: the latest training state of each trial, so that a trial stopped by a
signal or lost with its worker goes on from its last epoch instead of epoch 1.

One file per trial (``STUDY-trialN.pt``, N the number of the trial first run with these parameters),
only the latest: each save replaces the last one atomically (a temporary file, fsync, rename), so a
kill mid-save leaves the previous checkpoint whole. The folder must be one that every worker of the
study can reach (``--checkpoint-dir``, ``$HPO_CHECKPOINT_DIR``, else ``models/checkpoints``).
Knows nothing of Optuna (hpo.search.resume does the trial side).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from hpo.config import CHECKPOINT_DIR, CHECKPOINT_ENV  # noqa: F401  (read here and by hpo.runs.plan)
from hpo.errors import reason

log = logging.getLogger(__name__)


def checkpoint_dir(override: str | os.PathLike | None = None) -> Path:
    """``override``, else $HPO_CHECKPOINT_DIR, else models/checkpoints."""
    chosen = override if override is not None else os.environ.get(CHECKPOINT_ENV) or CHECKPOINT_DIR
    return Path(chosen).expanduser()


class Checkpoints:
    """The checkpoint folder of a study store."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, study: str, trial: int) -> Path:
        return self.folder / f"{study}-trial{trial}.pt"

    def save(self, path: Path, state: dict) -> None:
        """Write ``state`` (tensors, dicts, lists, numbers: what ``weights_only`` loads) in place of
        the last checkpoint, atomically."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())  # the rename must not land before the bytes (a lost node, a power cut)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def load(self, path: Path, device: str | torch.device = "cpu") -> dict | None:
        """The state saved at ``path``; None, with one warning line, when it is unreadable (a
        truncated file, another format): the trial then starts again from epoch 1."""
        try:
            state = torch.load(path, map_location=device, weights_only=True)
            if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
                raise ValueError("not an hpo checkpoint")
            return state
        except Exception as e:
            log.warning(f"checkpoint {path} is unreadable ({reason(e)}); the trial starts again from epoch 1")
            return None

    def delete(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as e:  # a read-only share: the file is stale, not harmful
            log.warning(f"checkpoint {path} not deleted ({reason(e)})")
