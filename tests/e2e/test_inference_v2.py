"""The Open Inference Protocol on a running ``opsloop serve``, spoken by Triton's own HTTP client.

The demo's ``credit-risk`` answers ``/v2/models/credit-risk/infer`` with what ``/predict``
answers for the same applicants; the client is ``tritonclient.http`` as its users call it
(binary tensors by default), with the opsloop key in a header (a copy each call: the client
adds its own headers to the dict it is given).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.e2e.server import Server, cli
from workflows.demo import FEATURE_NAMES, generate_credit_data

MODEL = "credit-risk"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("v2") / "home", env={"OPSLOOP_DRIFT_CHECK_SECONDS": "0"})
    server.wait_for("/readyz", 200, seconds=180)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def user(server: Server) -> dict[str, str]:
    created = cli(server.home, "keys", "create", "--tenant", "acme", "--role", "user")
    assert created.returncode == 0, created.stderr
    return {"Authorization": f"Bearer {created.stdout.strip()}"}


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    sdk = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def applicants() -> list[dict[str, Any]]:
    frame = generate_credit_data(100, seed=11)[list(FEATURE_NAMES)].head(5)
    return [
        {k: v.item() if hasattr(v, "item") else v for k, v in row.items()} for row in frame.to_dict("records")
    ]


def _inputs(
    metadata: dict[str, Any], applicants: list[dict[str, Any]], binary: bool
) -> list[triton.InferInput]:
    inputs = []
    for spec in metadata["inputs"]:
        values = [a[spec["name"]] for a in applicants]
        array = np.array(values, dtype=object if spec["datatype"] == "BYTES" else None)
        if spec["datatype"] == "FP64":
            array = array.astype(np.float64)
        elif spec["datatype"] == "INT64":
            array = array.astype(np.int64)
        tensor = triton.InferInput(spec["name"], [len(values)], spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def test_health_and_readiness(client: triton.InferenceServerClient, user: dict[str, str]) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=dict(user))
    assert not client.is_model_ready("no-such-model", headers=dict(user))


def test_metadata_lists_the_signature_as_tensors(
    server: Server, client: triton.InferenceServerClient, user: dict[str, str]
) -> None:
    metadata = client.get_model_metadata(MODEL, headers=dict(user))
    schema = server.http.get(f"/models/{MODEL}", headers=user).json()
    assert [i["name"] for i in metadata["inputs"]] == [f["name"] for f in schema["input_schema"]]
    assert {i["datatype"] for i in metadata["inputs"]} <= {"FP64", "INT64", "BYTES"}
    assert [o["name"] for o in metadata["outputs"]] == ["predictions", "probabilities"]
    assert str(schema["champion"]) in metadata["versions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_answers_what_predict_answers(
    server: Server,
    client: triton.InferenceServerClient,
    user: dict[str, str],
    applicants: list[dict[str, Any]],
    binary: bool,
) -> None:
    metadata = client.get_model_metadata(MODEL, headers=dict(user))
    result = client.infer(MODEL, _inputs(metadata, applicants, binary), headers=dict(user))
    expected = server.http.post(f"/predict/{MODEL}", json={"instances": applicants}, headers=user).json()
    assert result.as_numpy("predictions").tolist() == expected["predictions"]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(applicants), 2)
    classes = result.get_output("probabilities")["parameters"]["classes"].split(",")
    wanted = np.array([[row[c] for c in classes] for row in expected["probabilities"]])
    np.testing.assert_allclose(probabilities, wanted, rtol=1e-9)
    response = result.get_response()
    assert response["model_version"] == str(expected["version"]) and response["parameters"]["variant"]


def test_one_matrix_of_all_fields_and_the_version_path(
    server: Server, user: dict[str, str], applicants: list[dict[str, Any]]
) -> None:
    rows = [[a[f] for f in FEATURE_NAMES] for a in applicants]
    body = {"inputs": [{"name": "applicants", "datatype": "BYTES", "shape": [len(rows), len(FEATURE_NAMES)],
                        "data": rows}], "outputs": [{"name": "predictions"}]}  # fmt: skip
    champion = server.http.get(f"/models/{MODEL}", headers=user).json()["champion"]
    answer = server.http.post(f"/v2/models/{MODEL}/versions/{champion}/infer", json=body, headers=user)
    assert answer.status_code == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["predictions"]
    stale = server.http.post(f"/v2/models/{MODEL}/versions/{champion + 7}/infer", json=body, headers=user)
    assert stale.status_code == 404 and "is not served" in stale.json()["error"]


def test_errors_are_the_protocols_shape_and_say_what_is_wrong(
    server: Server,
    client: triton.InferenceServerClient,
    user: dict[str, str],
    applicants: list[dict[str, Any]],
) -> None:
    metadata = client.get_model_metadata(MODEL, headers=dict(user))
    with pytest.raises(InferenceServerException, match="missing inputs"):
        client.infer(MODEL, _inputs(metadata, applicants, True)[1:], headers=dict(user))
    with pytest.raises(InferenceServerException, match="no-such-model"):
        client.infer("no-such-model", _inputs(metadata, applicants, True), headers=dict(user))
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer(MODEL, _inputs(metadata, applicants, True))
    bad = dict(applicants[0], **{FEATURE_NAMES[0]: "not a number"})
    one = {f: [bad[f]] for f in FEATURE_NAMES}
    body = {"inputs": [{"name": f, "datatype": "BYTES", "shape": [1], "data": v} for f, v in one.items()]}
    answer = server.http.post(f"/v2/models/{MODEL}/infer", json=body, headers=user)
    assert answer.status_code == 422 and isinstance(answer.json()["error"], str)
    assert FEATURE_NAMES[0] in answer.json()["error"]


def _binary_request(datatype: str, size: object, data: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {"name": "age", "datatype": datatype, "shape": [1], "parameters": {"binary_data_size": size}}
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_binary_request("BYTES", 5, b"\x01\x00\x00\x00\xff"), "cannot be read as BYTES"),
        (_binary_request("FP32", 3, b"abc"), "cannot be read as FP32"),
        (_binary_request("FP32", "three", b"abc"), "cannot be read as FP32"),
        (
            (b'{"inputs": [{"name": "age", "datatype": "FP64", "shape": ["x"], "data": [1]}]}', {}),
            "whole numbers",
        ),
        ((b'{"inputs": [', {}), "not valid JSON"),
    ],
)
def test_a_malformed_tensor_is_a_400_not_a_server_error(
    server: Server, user: dict[str, str], content: tuple[bytes, dict[str, str]], message: str
) -> None:
    raw, headers = content
    answer = server.http.post(f"/v2/models/{MODEL}/infer", content=raw, headers=user | headers)
    assert answer.status_code == 400 and message in answer.json()["error"]
