"""What a running server holds: settings, loaded models, their engines, and the router."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from lmscope.engine import PREFILL_CHUNK, Engine
from lmscope.model.decoding import prepare_for_decoding
from lmscope.model.quantized import adopt_served_weights
from lmscope.serve.drift import DriftHub, DriftSettings
from lmscope.serve.errors import APIError
from lmscope.serve.experiments import Experiments, parse_shadows
from lmscope.serve.metrics import ServerMetrics
from lmscope.serve.routing import ModelSpec, Router, RoutingError, parse_routes

log = logging.getLogger("lmscope.serve")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ServeSettings:
    models: list[ModelSpec] = field(
        default_factory=lambda: [ModelSpec("smollm2-135m", "smollm2-135m")]
    )
    routes: list[str] = field(default_factory=list)
    api_key: str | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    max_batch: int = 8
    max_queue: int = 64
    max_seq_len: int = 2048
    request_timeout: float = 600.0
    dtype: str = "float32"
    explain_workers: int = 1
    prepack: bool = True  # optimize_for_decoding: faster CPU decoding, one more weight copy
    quantize: str | None = None  # "int8": weights quantized at load (lmscope.model.quantized)
    prefill_chunk: int = PREFILL_CHUNK
    drift: DriftSettings | None = None  # drift monitoring (serve/drift.py); off by default
    # Online A/B: where answers and feedback are stored (default: a SQLite file in the cache
    # when there are --route aliases), and which version shadows which alias.
    device: str = "cpu"  # cpu or cuda (cuda:N)
    feedback_db: str | None = None
    shadows: list[str] = field(default_factory=list)


@dataclass
class ServedModel:
    id: str
    source: str
    model: Any  # Transformer
    tokenizer: Any
    engine: Engine
    # Held by every encode the server does with this tokenizer (see lmscope.serve.prompts).
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    weights: str = "float32"  # what is served and explained, e.g. "int8 (dequantized)"


class ServerState:
    def __init__(
        self,
        settings: ServeSettings,
        metrics: ServerMetrics,
        on_load_error: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        ids = [spec.id for spec in settings.models]
        if len(set(ids)) != len(ids):
            raise RoutingError(
                f"model ids must be unique, got {ids}; name them with --model ID=NAME_OR_PATH"
            )
        known = set(ids)
        routes = parse_routes(list(settings.routes), known)
        self.router = Router(ids, routes)
        self.experiments = self._open_experiments(settings, routes, known)
        self.models: dict[str, ServedModel] = {}
        self.ready = threading.Event()
        self.load_error: str | None = None  # for the log and the CLI, never sent to clients
        self.on_load_error = on_load_error
        self.drift = DriftHub(settings.drift) if settings.drift is not None else None

    def load_all(self) -> None:
        """Load every model and start its engine (runs on a background thread)."""
        from lmscope.zoo.registry import load

        try:
            dtype = DTYPES[self.settings.dtype]
            for spec in self.settings.models:
                log.info(
                    '{"event": "loading", "model": "%s", "source": "%s"}', spec.id, spec.source
                )
                loaded = load(spec.source, dtype=dtype, device=self.settings.device)
                choice = prepare_for_decoding(  # the fastest path here (or int8 when asked)
                    loaded.model,
                    quantize=self.settings.quantize,
                    prepack=self.settings.prepack,
                    batch=self.settings.max_batch,
                )
                log.info(
                    json.dumps({"event": "decoding_path", "model": spec.id, **choice.as_dict()})
                )
                weights = self.settings.dtype
                if choice.path == "int8":  # explanations then explain the served weights
                    adopt_served_weights(loaded.model)
                    weights = "int8 (dequantized)"
                if loaded.tokenizer is None:
                    raise ValueError(f"model {spec.id} has no tokenizer; the server needs one")
                monitor = None
                if self.drift is not None:  # scores the reference with the model
                    monitor = self.drift.attach(spec.id, loaded.model, loaded.tokenizer)
                engine = Engine(
                    loaded.model,
                    loaded.tokenizer,
                    name=spec.id,
                    metrics=self.metrics,
                    max_batch=self.settings.max_batch,
                    max_queue=self.settings.max_queue,
                    max_seq_len=self.settings.max_seq_len,
                    prefill_chunk=self.settings.prefill_chunk,
                    monitor=monitor,
                )
                engine.start()
                self.models[spec.id] = ServedModel(
                    spec.id, spec.source, loaded.model, loaded.tokenizer, engine, weights=weights
                )
            self.ready.set()
            log.info('{"event": "ready", "models": %d}', len(self.models))
        except Exception as err:
            self.load_error = f"{type(err).__name__}: {err}"
            log.error(json.dumps({"event": "load_failed", "error": self.load_error}))
            if self.on_load_error is not None:
                self.on_load_error(self.load_error)

    @staticmethod
    def _open_experiments(
        settings: ServeSettings, routes: dict[str, Any], known: set[str]
    ) -> Experiments | None:
        """The experiment store when there is something to record: an alias route or an
        explicit --feedback-db (then every answer can be rated)."""
        shadows = parse_shadows(list(settings.shadows), routes, known)
        if not routes and settings.feedback_db is None:
            return None
        url = settings.feedback_db
        if url is None:
            from lmscope.serve.feedback import default_store_url

            url = default_store_url()
        return Experiments.open(url, routes, shadows)

    def shutdown(self) -> None:
        for served in self.models.values():
            served.engine.stop()
        if self.experiments is not None:
            self.experiments.close()

    def resolve(self, requested: str | None) -> ServedModel:
        return self.assign(requested, None)[0]

    def assign(self, requested: str | None, user: str | None) -> tuple[ServedModel, str | None]:
        """The model that answers `requested` for `user`, and the experiment alias, if any
        (an alias assigns a user to one version stickily)."""
        if not self.ready.is_set():
            raise APIError(
                503,
                "the server is still loading its models; retry shortly",
                headers={"Retry-After": "2"},
            )
        model_id = self.router.resolve(requested, user)
        if model_id is None:
            raise APIError(
                404,
                f"model {requested!r} does not exist; available: {', '.join(self.router.names())}",
                param="model",
                code="model_not_found",
            )
        alias = requested if requested in self.router.routes else None
        return self.models[model_id], alias
