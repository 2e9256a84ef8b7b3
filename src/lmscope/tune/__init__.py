"""Hyperparameter search over any training config, on Optuna: search files, studies shared by
many workers, trials that are real training runs, and reports."""
