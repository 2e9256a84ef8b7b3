"""The application factory: routes, middleware, background model loading, health and metrics."""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles

from lmscope.serve import card_routes, drift_routes, explain_routes, feedback_routes, openai
from lmscope.serve.errors import install_error_handlers
from lmscope.serve.metrics import ServerMetrics
from lmscope.serve.middleware import AccessLog, LimitsAndAuth
from lmscope.serve.openapi_doc import error_responses, install_openapi
from lmscope.serve.state import ServerState, ServeSettings

DOCS_ASSETS_PACKAGE = "fastapi_offline"  # ships Swagger UI's JS and CSS as package data


def static_dir() -> str:
    return str(resources.files("lmscope") / "ui" / "static")


def swagger_assets() -> Path | None:
    """Swagger UI's files from an installed package (no CDN: /docs works offline), if any."""
    spec = importlib.util.find_spec(DOCS_ASSETS_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def create_app(
    settings: ServeSettings | None = None,
    *,
    load_in_background: bool = True,
    on_load_error: Callable[[str], None] | None = None,
) -> FastAPI:
    """A FastAPI app serving the configured models. Models load after start-up; /health says
    503 until they are ready. on_load_error(message) is called if a model fails to load."""
    settings = settings or ServeSettings()
    metrics = ServerMetrics()
    state = ServerState(settings, metrics, on_load_error)

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
        docs_url=None,
        redoc_url=None,
    )
    app.state.lm = state
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(explain_routes.router)  # an import error here must stop the server
    drift_routes.register(app, state)
    app.include_router(feedback_routes.router)
    app.include_router(card_routes.router)
    install_openapi(app)

    @app.get("/health", responses=error_responses(503))
    async def health() -> JSONResponse:
        """200 when every model is loaded; 503 while loading or after a failed load (the
        reason is in the server log, not in this public answer)."""
        if state.ready.is_set():
            return JSONResponse({"status": "ok", "models": list(state.models)})
        if state.load_error:
            return JSONResponse(
                {"status": "error", "error": "a model failed to load; see the server log"},
                status_code=503,
            )
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition format."""
        for served in state.models.values():
            metrics.waiting.labels(model_name=served.id).set(served.engine.waiting)
            metrics.running.labels(model_name=served.id).set(served.engine.running)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    _add_docs(app)
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


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from local assets; without them there is no /docs (the schema is
    still at /openapi.json) rather than a page that needs a CDN."""
    assets = swagger_assets()
    if assets is None:
        return
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="lmscope API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )
