"""Training: study settings → tensors on the device → a seeded loop → a result. Knows nothing of Optuna."""
