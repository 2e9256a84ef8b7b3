"""Prometheus metrics named like vLLM's (`vllm:` becomes `lmscope:`), labelled by model."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)


class ServerMetrics:
    """All of one server's metrics in its own registry (so tests can run several servers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lmscope:http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.ab_requests = Counter(
            "lmscope:ab_requests",
            "Answers by experiment alias (empty: none), version and outcome",
            ["alias", "model_name", "outcome"],
            registry=r,
        )
        self.request_success = Counter(
            "lmscope:request_success",
            "Finished generation requests by finish reason",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.running = Gauge(
            "lmscope:num_requests_running",
            "Requests in the decode batch",
            ["model_name"],
            registry=r,
        )
        self.waiting = Gauge(
            "lmscope:num_requests_waiting",
            "Requests queued for the batch",
            ["model_name"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "lmscope:prompt_tokens", "Prefilled prompt tokens", ["model_name"], registry=r
        )
        self.generation_tokens = Counter(
            "lmscope:generation_tokens", "Generated tokens", ["model_name"], registry=r
        )
        self.ttft = Histogram(
            "lmscope:time_to_first_token_seconds",
            "Time from arrival to the first generated token",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "lmscope:time_per_output_token_seconds",
            "Time between consecutive generated tokens of one request",
            ["model_name"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "lmscope:e2e_request_latency_seconds",
            "Time from arrival to the last token",
            ["model_name"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "lmscope:request_rejected",
            "Requests refused because the queue was full",
            ["model_name"],
            registry=r,
        )

    # ---- lmscope.engine.EngineObserver: what the engine reports ------------------------------
    def on_waiting(self, model: str, waiting: int) -> None:
        self.waiting.labels(model_name=model).set(waiting)

    def on_running(self, model: str, running: int) -> None:
        self.running.labels(model_name=model).set(running)

    def on_rejected(self, model: str) -> None:
        self.rejected.labels(model_name=model).inc()

    def on_prompt_tokens(self, model: str, count: int) -> None:
        self.prompt_tokens.labels(model_name=model).inc(count)

    def on_token(self, model: str, ttft: float | None, inter_token: float | None) -> None:
        self.generation_tokens.labels(model_name=model).inc()
        if ttft is not None:
            self.ttft.labels(model_name=model).observe(ttft)
        if inter_token is not None:
            self.inter_token.labels(model_name=model).observe(inter_token)

    def on_finished(self, model: str, reason: str, e2e: float) -> None:
        self.request_success.labels(model_name=model, finished_reason=reason).inc()
        self.e2e.labels(model_name=model).observe(e2e)

    def render(self) -> bytes:
        return generate_latest(self.registry)
