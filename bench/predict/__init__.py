"""``python -m bench.predict``: ``POST /predict/{model}`` of ``opsloop serve`` against a naive FastAPI peer.

Modules: :mod:`bench.predict.baseline` is the peer (a plain FastAPI app),
:mod:`bench.predict.processes` starts and stops the server processes,
:mod:`bench.predict.load` drives one server with wrk, and :mod:`bench.predict.run` ties
them together and reports. Kept free of imports so that the peer's uvicorn process
loads nothing from here that it does not need.
"""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(Exception):
    """The benchmark could not run or its run is invalid (a message says what to do)."""
