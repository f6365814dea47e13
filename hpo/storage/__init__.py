"""The study store: Optuna's storages opened, checked and ridden through faults. Knows nothing of training."""
