"""`lmscope tune report --dashboard`: optuna-dashboard on the study's storage, when installed."""

from __future__ import annotations

import importlib.util

from lmscope.tune.errors import TuneError


def serve_dashboard(url: str, port: int, host: str = "127.0.0.1") -> None:
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise TuneError("--dashboard needs optuna-dashboard: pip install optuna-dashboard")
    from optuna_dashboard import run_server

    print(f"optuna-dashboard on http://{host}:{port} (Ctrl-C stops it)")
    run_server(url, host=host, port=port)
