"""The application factory: routes, middleware, background model loading, health and metrics."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from lmscope.serve import openai
from lmscope.serve.errors import install_error_handlers
from lmscope.serve.metrics import ServerMetrics
from lmscope.serve.middleware import AccessLog, LimitsAndAuth
from lmscope.serve.state import ServerState, ServeSettings


def static_dir() -> str:
    return str(resources.files("lmscope") / "ui" / "static")


def create_app(
    settings: ServeSettings | None = None, *, load_in_background: bool = True
) -> FastAPI:
    """A FastAPI app serving the configured models. Models load after start-up; /health says
    503 until they are ready."""
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    state = ServerState(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=state.load_all, name="model-loader", daemon=True).start()
        else:
            state.load_all()
        yield
        state.shutdown()

    app = FastAPI(
        title="lmscope",
        version="0.1.0",
        description="OpenAI-compatible API with explanations of what the model computes.",
        lifespan=lifespan,
    )
    app.state.lm = state
    install_error_handlers(app)
    app.include_router(openai.router)
    _add_explain_routes(app)

    @app.get("/health")
    async def health() -> JSONResponse:
        if state.ready.is_set():
            return JSONResponse({"status": "ok", "models": list(state.models)})
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        for served in state.models.values():
            metrics.waiting.labels(model_name=served.id).set(served.engine.waiting)
            metrics.running.labels(model_name=served.id).set(served.engine.running)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    ui = static_dir()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(f"{ui}/index.html")

    app.mount("/static", StaticFiles(directory=ui), name="static")
    # Middleware order: access log outermost so even rejected requests are logged.
    app.add_middleware(
        LimitsAndAuth, max_body_bytes=settings.max_body_bytes, api_key=settings.api_key
    )
    app.add_middleware(AccessLog, metrics=metrics)
    return app


def _add_explain_routes(app: FastAPI) -> None:
    import importlib

    try:
        explain_routes = importlib.import_module("lmscope.serve.explain_routes")
    except ImportError:  # explanations land separately; the OpenAI API works without them
        return
    app.include_router(explain_routes.router)
