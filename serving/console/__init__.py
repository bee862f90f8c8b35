"""The web console at ``/ui``: chat ops with approvals, models, experiments, drift, costs, evals, audit.

Server-rendered pages (Jinja2) over the same services as the API, charts drawn as SVG on the
server, one stylesheet and one small script written here: nothing is loaded from another host.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

__all__ = ["mount"]


def mount(app: FastAPI) -> None:
    """Serve the console and its assets at ``/ui`` on ``app``."""
    from serving.console import chat, routes, views

    app.mount("/ui/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
    app.include_router(routes.auth)
    app.include_router(chat.router)
    app.include_router(views.router)
