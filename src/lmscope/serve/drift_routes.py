"""Drift over HTTP: GET /v1/drift (the statistics as JSON) and the drift gauges in /metrics.

Wiring: `register(app, state)` from the app factory; the state's `drift` (a DriftHub, or None
when the server runs without `--drift-reference`) holds the monitors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lmscope.serve.drift import DriftHub
from lmscope.serve.errors import APIError
from lmscope.serve.openapi_doc import error_responses

DRIFT_OFF = (
    "drift monitoring is off; start the server with --drift-reference DATA_DIR_OR_TEXT "
    "(a calibration text or a directory made by `lmscope data prepare`)"
)


def _hub(state: Any) -> DriftHub | None:
    hub: DriftHub | None = getattr(state, "drift", None)
    return hub


class DriftCollector(Collector):
    """Computes the drift gauges at scrape time, from the monitors' current windows."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hub = _hub(self.state)
        if hub is None:
            return
        labels = ["model_name", "signal"]
        psi = GaugeMetricFamily(
            "lmscope:drift_psi", "Population-stability index of a signal's window", labels=labels
        )
        ks = GaugeMetricFamily(
            "lmscope:drift_ks_statistic", "Two-sample KS statistic of a signal", labels=labels
        )
        ks_p = GaugeMetricFamily(
            "lmscope:drift_ks_pvalue", "Asymptotic p-value of the KS statistic", labels=labels
        )
        flag = GaugeMetricFamily(
            "lmscope:drift_detected", "1 when the signal drifts past the thresholds", labels=labels
        )
        window = GaugeMetricFamily(
            "lmscope:drift_window_requests", "Requests in a signal's window", labels=labels
        )
        for model in hub.snapshot()["models"]:
            for sig in model["signals"]:
                key = [model["model"], sig["name"]]
                for family, value in (
                    (psi, sig["psi"]),
                    (ks, sig["ks"]),
                    (ks_p, sig["ks_pvalue"]),
                    (window, sig["n_current"]),
                    (flag, 1.0 if sig["drift"] else 0.0),
                ):
                    if value is not None:
                        family.add_metric(key, float(value))
        yield from (psi, ks, ks_p, flag, window)


def register(app: FastAPI, state: Any) -> None:
    """Add GET /v1/drift and the drift gauges to `state.metrics`' registry."""
    state.metrics.registry.register(DriftCollector(state))

    @app.get(
        "/v1/drift",
        tags=["monitoring"],
        responses={
            200: {
                "description": "Per model and signal: PSI, KS, histograms and the drift flag",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **error_responses(401, 404, 503),
        },
    )
    async def drift() -> JSONResponse:
        """Drift of the served models' recent requests against their reference profiles."""
        hub = _hub(state)
        if hub is None:
            raise APIError(404, DRIFT_OFF, code="drift_monitoring_off")
        if not state.ready.is_set():
            raise APIError(
                503,
                "the server is still loading its models; retry shortly",
                headers={"Retry-After": "2"},
            )
        return JSONResponse(hub.snapshot())
