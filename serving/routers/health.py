"""Liveness, readiness and Prometheus metrics; no key needed (they expose no tenant data)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from opsloop.telemetry import CONTENT_TYPE_LATEST
from serving.deps import PlatformDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    """Answer as long as the event loop runs."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: every component has started",
    responses={503: {"description": "some component is still starting or failed (or, strict, is degraded)"}},
)
async def readyz(platform: PlatformDep, strict: bool = False) -> JSONResponse:
    """Return each component's state and what the starting ones wait for; 503 until all have started.

    ``pending`` names each component still starting with what it is doing (``"rag: docs
    ingestion (4/11 files)"``); ``why`` says why a component failed or is degraded. A
    ``degraded`` component (the models one, while some model's champion cannot be loaded)
    still answers 200: the other models, the gateway and RAG keep serving, and a broken
    version in the shared registry would otherwise take every replica out of its load
    balancer at once. ``?strict=true`` answers 503 for it too, for checks that should fail on it.
    """
    now = platform.readiness()
    ok = now.ready and not (strict and now.degraded)
    body = {
        "ready": now.ready,
        "degraded": now.degraded,
        "components": now.components,
        "pending": now.pending,
        "why": now.why,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(platform: PlatformDep) -> Response:
    """Prometheus text exposition format."""
    return Response(platform.metrics.render(), media_type=CONTENT_TYPE_LATEST)
