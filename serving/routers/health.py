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
    responses={503: {"description": "some component is still starting or failed"}},
)
async def readyz(platform: PlatformDep) -> JSONResponse:
    """Return each component's state; 503 until all are ready."""
    body = {"ready": platform.ready, "components": dict(platform.components)}
    return JSONResponse(body, status_code=200 if platform.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(platform: PlatformDep) -> Response:
    """Prometheus text exposition format."""
    return Response(platform.metrics.render(), media_type=CONTENT_TYPE_LATEST)
