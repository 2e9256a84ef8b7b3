"""Metric sinks: TensorBoard (always available) and MLflow (only when installed).

MLflow uses a SQLite backend inside out_dir (`sqlite:///out_dir/mlflow.db`), so nothing needs
a server.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


class MetricLoggers:
    def __init__(
        self, out_dir: Path, tensorboard: bool, mlflow: str, params: dict[str, Any]
    ) -> None:
        self.tb: Any = None
        self.mlflow: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
            self.tb.add_text(
                "config",
                "```\n" + "\n".join(f"{k}: {v}" for k, v in _flatten(params).items()) + "\n```",
            )
        wanted = mlflow == "on" or (mlflow == "auto" and importlib.util.find_spec("mlflow"))
        if wanted:
            if importlib.util.find_spec("mlflow") is None:
                raise ValueError(
                    "log.mlflow is 'on' but mlflow is not installed; pip install mlflow"
                )
            import mlflow as mlflow_module

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mlflow_module.set_tracking_uri(f"sqlite:///{(out_dir / 'mlflow.db').resolve()}")
                mlflow_module.set_experiment(out_dir.resolve().name)
                mlflow_module.start_run()
                mlflow_module.log_params({k: str(v)[:250] for k, v in _flatten(params).items()})
            self.mlflow = mlflow_module

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.tb is not None:
            for name, value in values.items():
                self.tb.add_scalar(name, value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.tb is not None:
            self.tb.add_text(tag, text, step)
        if self.mlflow is not None:
            self.mlflow.log_text(text, f"samples/step-{step:08d}-{tag.replace('/', '_')}.txt")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
