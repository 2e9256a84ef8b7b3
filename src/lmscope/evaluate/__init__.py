"""Evaluation: tasks, metrics with confidence intervals, and paired comparison of two models.

`run_tasks(lm, specs)` evaluates a loaded model; `compare_results(a, b)` tests the difference of
two evaluations of the same items. Reports are JSON (stable schema) plus one HTML page.
"""

from lmscope.evaluate.errors import EvalError
from lmscope.evaluate.tasks import TaskSpec, load_tasks

__all__ = ["EvalError", "TaskSpec", "load_tasks"]
