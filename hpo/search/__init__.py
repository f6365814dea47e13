"""The search: Optuna studies, samplers and pruners, a trial's objective, retries and stopping rules."""
