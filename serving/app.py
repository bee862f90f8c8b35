"""The FastAPI app factory: builds the Platform from Settings and wires the routers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from opsloop.settings import Settings, load_settings
from serving import console
from serving.agent_wiring import ChatHost
from serving.errors import install_error_handlers
from serving.middleware import RequestMiddleware
from serving.platform import Platform
from serving.routers import (
    admin,
    budgets,
    costs,
    evals,
    experiments,
    gateway,
    health,
    inference_v2,
    models,
    rag,
    retraining,
)
from serving.routers import chat as chat_router

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger("opsloop")


def create_app(settings: Settings) -> FastAPI:
    """Build the app; components open in the lifespan, so building is cheap."""
    platform = Platform.build(settings)
    chat = ChatHost(platform)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform.start_store()
        admin_key = platform.ensure_admin_key()
        if admin_key is not None:
            log.warning("created the first admin key; it is in %s (mode 0600)", admin_key)
        platform.start_serving()
        _build_routes(app)
        yield
        # A server stopped while still starting: what those threads build must exist before
        # it is closed, or close() finds a gateway no event loop is left to close it on.
        await asyncio.to_thread(platform.join_starting)
        await chat.aclose()
        await platform.aclose_eval_tasks()  # before the gateway and RAG they use close
        await platform.aclose_gateway()
        platform.close()

    # FastAPIOffline serves /docs and /redoc from assets shipped in its package: FastAPI's own
    # pages load them from a CDN, and are blank on an offline laptop.
    app = FastAPIOffline(
        title="opsloop",
        summary="Serve, watch, evaluate and improve LLMs, RAG and classical models.",
        version="0.1.0",
        lifespan=lifespan,
        # Swagger UI would otherwise ask validator.swagger.io to check the spec.
        swagger_ui_parameters={"validatorUrl": None},
        # opsloop traces (MLflow) and meters (Prometheus) its requests itself; FastAPI's own
        # OpenTelemetry would look up the global providers on every request to find them unset.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.platform = platform
    app.state.chat = chat
    install_error_handlers(app)
    app.add_middleware(RequestMiddleware, metrics=platform.metrics, max_body_bytes=settings.max_body_bytes)
    # Routes are matched in this order: the gateway's, the busiest, first (none of them overlap).
    app.include_router(gateway.router)
    app.include_router(health.router)
    app.include_router(rag.router)  # before models: its /feedback/query must win over /feedback/{model}
    app.include_router(models.router)
    app.include_router(inference_v2.router)
    app.include_router(costs.router)
    app.include_router(admin.router)
    app.include_router(budgets.router)
    app.include_router(evals.router)
    app.include_router(experiments.router)
    app.include_router(retraining.router)
    app.include_router(chat_router.router)
    console.mount(app)
    return app


def _build_routes(app: FastAPI) -> None:
    """Build each included router's routes now, not on the first request that reaches them.

    FastAPI (0.165) builds an included router's routes when a request first reaches it: about
    50 ms for ours, on the event loop, while every other request waits. The methods are not
    public, so a FastAPI without them is left to build lazily.
    """
    pending: list[object] = list(app.router.routes)
    while pending:
        route = pending.pop()
        for build in ("effective_candidates", "effective_low_priority_routes"):
            method = getattr(route, build, None)
            if callable(method):
                pending.extend(method())


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn's worker processes, which get their settings from OPSLOOP_*."""
    return create_app(load_settings())
