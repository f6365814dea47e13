"""hpo: hyperparameter studies for PyTorch image classifiers, on Optuna."""

__version__ = "0.1.0"
