"""The Open Inference Protocol (v2): KServe's, Triton's and MLServer's REST API, beside ``/predict``.

Clients written for those servers (``tritonclient.http``, KServe's ``InferenceRESTClient``)
work unchanged. Each route calls the same :class:`ModelService` as ``/predict``: the same
validation against the model's signature, keys and roles, metrics, prediction log and
experiments' variants. A request's tensors become ``/predict`` instances in one of two ways:

* one tensor per input field, named as the field, shape ``[N]`` or ``[N, 1]`` (what
  ``GET /v2/models/{model}`` lists), any datatype the field's values fit;
* one tensor of shape ``[N, F]`` holding the fields in the signature's order.

Data comes as JSON or in Triton's binary tensor extension (``Inference-Header-Content-Length``;
``tritonclient`` sends binary by default). Answers are JSON: ``predictions`` (``[N]``) and, for
a classifier, ``probabilities`` (``[N, C]`` in the order of ``parameters.classes``), with the
version and variant that answered. Errors are the protocol's ``{"error": "<message>"}``
(``serving.errors``). ``/versions/{v}/`` forms name the champion's version; another one is a
404 (an experiment may still send the request to its challenger, as on ``/predict``).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from opsloop.auth import Principal
from opsloop.errors import BadRequestError, NotFoundError
from opsloop.models.service import ModelDescription, ModelService
from serving.deps import VARIANT_HEADER, ModelsDep, PlatformDep, Unit, UserKey, ViewerKey, request_id

router = APIRouter(prefix="/v2", tags=["inference v2"])

BINARY_HEADER = "inference-header-content-length"
_OUTPUTS = {"predictions", "probabilities"}
_FIELD_TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL"}
_NUMPY = {"BOOL": "?", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"} | {
    f"{kind}{bits}": f"<{kind[0].lower()}{bits // 8}" for kind in ("INT", "UINT") for bits in (8, 16, 32, 64)
}


@router.get("/health/live", summary="Open Inference Protocol: the server is live")
async def live() -> dict[str, bool]:
    """200 as long as the event loop answers (``/healthz``)."""
    return {"live": True}


@router.get("/health/ready", summary="Open Inference Protocol: every component has started")
async def ready(platform: PlatformDep) -> JSONResponse:
    """200 when ``/readyz`` would be, else 503."""
    now = platform.readiness().ready
    return JSONResponse({"ready": now}, status_code=200 if now else 503)


@router.get("/models/{model}", summary="Open Inference Protocol: a model's inputs and outputs")
@router.get("/models/{model}/versions/{version}", summary="Open Inference Protocol: a version's metadata")
async def metadata(
    model: str, models: ModelsDep, principal: ViewerKey, version: str | None = None
) -> dict[str, Any]:
    """The champion's signature as tensors, every registered version, and the outputs."""
    described = await _described(models, principal, model, version)
    outputs: list[dict[str, Any]] = [
        {"name": "predictions", "datatype": _datatype(described.classes or [0.0]), "shape": [-1]}
    ]
    if described.classes is not None:
        outputs.append({"name": "probabilities", "datatype": "FP64", "shape": [-1, len(described.classes)]})
    return {
        "name": model,
        "versions": [str(v.version) for v in described.versions],
        "platform": "mlflow",
        "inputs": [
            {"name": f.name, "datatype": _FIELD_TYPES.get(f.type, "BYTES"), "shape": [-1]}
            for f in described.input_schema
        ],
        "outputs": outputs,
    }


@router.get("/models/{model}/ready", summary="Open Inference Protocol: the model can answer")
@router.get(
    "/models/{model}/versions/{version}/ready", summary="Open Inference Protocol: the version answers"
)
async def model_ready(
    model: str, models: ModelsDep, principal: ViewerKey, version: str | None = None
) -> dict[str, Any]:
    """200 when the model (at that version) is loaded and answering; 404 otherwise."""
    await _described(models, principal, model, version)
    return {"name": model, "ready": True}


@router.post("/models/{model}/infer", summary="Open Inference Protocol: predict")
@router.post("/models/{model}/versions/{version}/infer", summary="Open Inference Protocol: predict")
async def infer(
    model: str,
    request: Request,
    models: ModelsDep,
    principal: UserKey,
    unit: Unit = None,
    version: str | None = None,
) -> JSONResponse:
    """Turn the tensors into instances, predict them as ``/predict`` does, answer with tensors."""
    champion, fields = await models.signature(principal, model)
    _check_version(model, version, champion)
    body = _parse(await request.body(), request.headers.get(BINARY_HEADER))
    wanted = {str(o.get("name")) for o in body.get("outputs") or () if isinstance(o, dict)}
    if unknown := wanted - _OUTPUTS:
        raise BadRequestError(f"unknown outputs {sorted(unknown)}; a model has {sorted(_OUTPUTS)}")
    instances = _instances(body, [f.name for f in fields])
    rid = request_id(request)
    result = await models.predict(principal, model, instances, request_id=rid, unit=unit)
    count = len(instances)
    predictions = {"name": "predictions", "datatype": _datatype(result.predictions), "shape": [count]}
    outputs: list[dict[str, Any]] = [predictions | {"data": result.predictions}]
    if result.probabilities is not None:
        classes = list(result.probabilities[0]) if result.probabilities else []
        flat = [row[c] for row in result.probabilities for c in classes]
        shape = [count, len(classes)]
        parameters = {"classes": ",".join(classes)}
        outputs.append(
            {
                "name": "probabilities",
                "datatype": "FP64",
                "shape": shape,
                "data": flat,
                "parameters": parameters,
            }
        )
    answer = {
        "model_name": model,
        "model_version": str(result.version),
        "id": str(body.get("id") or result.request_id),
        "parameters": {"variant": result.variant, "request_id": result.request_id},
        "outputs": [o for o in outputs if not wanted or o["name"] in wanted],
    }
    return JSONResponse(answer, headers={VARIANT_HEADER: result.variant})


async def _described(
    models: ModelService, principal: Principal, name: str, version: str | None
) -> ModelDescription:
    described = await models.describe(principal, name)
    _check_version(name, version, described.champion)
    return described


def _check_version(model: str, version: str | None, champion: int) -> None:
    if version is not None and version != str(champion):
        raise NotFoundError(
            f"model {model!r} version {version} is not served; version {champion} is", model=model
        )


def _parse(raw: bytes, json_length: str | None) -> dict[str, Any]:
    """The request's JSON, with the binary extension's tensors put in as ``data`` lists."""
    try:
        size = int(json_length) if json_length is not None else len(raw)
        body = json.loads(raw[:size])
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the inference request is not valid JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or not body["inputs"]:
        raise BadRequestError('an inference request needs "inputs": a non-empty list of tensors')
    offset = size
    for tensor in body["inputs"]:
        if not isinstance(tensor, dict):
            raise BadRequestError("each input must be an object with name, shape, datatype and data")
        length = (tensor.get("parameters") or {}).get("binary_data_size")
        if length is not None:
            try:
                end = offset + int(length)
                tensor["data"] = _binary(raw[offset:end], tensor)
            except (ValueError, TypeError, UnicodeDecodeError) as exc:
                raise BadRequestError(
                    f"input {tensor.get('name')!r}: its binary data cannot be read as "
                    f"{tensor.get('datatype')}: {exc}"
                ) from exc
            offset = end
    return body


def _binary(chunk: bytes, tensor: dict[str, Any]) -> list[Any]:
    datatype = tensor.get("datatype")
    if datatype == "BYTES":
        values, at = [], 0
        while at + 4 <= len(chunk):
            (length,) = struct.unpack_from("<I", chunk, at)
            values.append(chunk[at + 4 : at + 4 + length].decode())
            at += 4 + length
        return values
    if datatype not in _NUMPY:
        raise BadRequestError(f"input {tensor.get('name')!r}: datatype {datatype!r} is not supported")
    return np.frombuffer(chunk, dtype=_NUMPY[datatype]).tolist()


def _instances(body: dict[str, Any], fields: list[str]) -> list[dict[str, Any]]:
    """``/predict`` instances from one tensor per field, or from one ``[N, F]`` tensor."""
    tensors = body["inputs"]
    for tensor in tensors:
        shape = tensor.get("shape")
        whole = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        if not isinstance(tensor.get("data"), list) or not whole:
            raise BadRequestError(f"input {tensor.get('name')!r} needs a shape of whole numbers and its data")
    if len(tensors) == 1 and len(tensors[0]["shape"]) == 2 and tensors[0]["shape"][1] == len(fields) > 1:
        rows = _flat(tensors[0])
        width = len(fields)
        return [dict(zip(fields, rows[i : i + width], strict=True)) for i in range(0, len(rows), width)]
    named = {tensor.get("name"): _flat(tensor) for tensor in tensors}
    if missing := [f for f in fields if f not in named]:
        raise BadRequestError(
            f"missing inputs {missing}: send one tensor per field ({', '.join(fields)}) or one "
            f"[N, {len(fields)}] tensor"
        )
    if extra := sorted(set(named) - set(fields), key=str):
        raise BadRequestError(f"unknown inputs {extra}; the model's inputs are {fields}")
    counts = {len(values) for values in named.values()}
    if len(counts) != 1:
        raise BadRequestError("every input tensor must hold one value per instance (the same N)")
    return [{f: named[f][i] for f in fields} for i in range(counts.pop())]


def _flat(tensor: dict[str, Any]) -> list[Any]:
    """The tensor's values in row-major order, checked against its shape."""
    data = np.asarray(tensor["data"], dtype=object).reshape(-1).tolist()
    expected = int(np.prod(tensor["shape"])) if tensor["shape"] else 1
    if len(data) != expected:
        raise BadRequestError(
            f"input {tensor.get('name')!r}: shape {tensor['shape']} needs {expected} values, got {len(data)}"
        )
    return data


def _datatype(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "BOOL"
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "INT64"
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "FP64"
    return "BYTES"
