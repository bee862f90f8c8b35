"""The naive peer: a plain FastAPI app that does what a first ``/predict`` endpoint usually does.

One route parses ``{"instances": [{feature: value}, ...]}`` into a pydantic model, builds a
pandas DataFrame from the instances (columns in the model signature's order), calls the
scikit-learn estimator's ``predict_proba`` and returns labels and probabilities through
FastAPI's default response encoding. No auth, no validation beyond JSON shape, no
metrics, no logging of predictions. The route is ``async def`` so that, like opsloop,
it scores on the event loop rather than paying a thread-pool hop per request: the peer
gets the faster of the two common ways to write it.

Run by :mod:`bench.predict.run` as
``uvicorn bench.predict.baseline:create_app --factory`` with ``BENCH_MODEL_URI`` (e.g.
``models:/credit-risk/1``) and ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` pointing at
opsloop's tracking store, so both servers load the very same model version.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

__all__ = ["MODEL_URI_ENV", "PredictRequest", "create_app"]

MODEL_URI_ENV = "BENCH_MODEL_URI"


class PredictRequest(BaseModel):
    """The same request body opsloop takes."""

    instances: list[dict[str, Any]]


def create_app(model_uri: str | None = None) -> FastAPI:
    """Load the model (``model_uri`` or ``$BENCH_MODEL_URI``) and build the app."""
    import mlflow.models
    import mlflow.sklearn
    import pandas as pd

    uri = model_uri or os.environ[MODEL_URI_ENV]
    model = mlflow.sklearn.load_model(uri)
    signature = mlflow.models.get_model_info(uri).signature
    if signature is None:
        raise ValueError(f"model {uri} has no signature, so the column order is unknown")
    columns = list(signature.inputs.input_names())
    classes = [c.item() if hasattr(c, "item") else c for c in model.classes_]

    app = FastAPI(title="naive predict baseline")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Answer once the model is loaded (it loads before the server starts)."""
        return {"status": "ok"}

    @app.post("/predict")
    async def predict(body: PredictRequest) -> dict[str, Any]:
        """Predict every instance."""
        frame = pd.DataFrame(body.instances, columns=columns)
        proba = model.predict_proba(frame)
        return {
            "predictions": [classes[i] for i in proba.argmax(axis=1)],
            "probabilities": proba.tolist(),
            "model_uri": uri,
        }

    return app
