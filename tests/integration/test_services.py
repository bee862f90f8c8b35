"""The services called directly with a Principal, no HTTP: the same results, scoping and audit as the API.

One real app (demo model trained at start, Qdrant Edge, MiniLM, SQLite, MLflow on SQLite) is
driven both ways: through its routes with an API key, and through the service objects the routes
call, with the Principal of that same key. This is how the agents' tools and the console call them.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from evals.dataset import dataset_from_items
from evals.runs import eval_config
from opsloop.audit import AuditFilter
from opsloop.auth import Principal, Role
from opsloop.errors import ForbiddenError, NotFoundError
from opsloop.settings import load_settings
from serving.app import create_app
from serving.eval_wiring import eval_runs
from serving.platform import Platform
from serving.routers.evals import EvalRunPublic
from tests.integration.demo_inputs import APPLICANT

GUIDE = b"# Rotating keys\n\nCreate a new key, move clients to it, then revoke the old key.\n"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    home = tmp_path_factory.mktemp("services") / "home"
    return create_app(load_settings(home=home, bootstrap_docs=False, drift_check_seconds=0))


def _key(platform: Platform, tenant: str, role: Role) -> tuple[Principal, dict[str, str]]:
    new = platform.keys.create(tenant, role, actor="test")
    principal = Principal(new.info.id, tenant, role)
    return principal, {"Authorization": f"Bearer {new.secret.get_secret_value()}"}


def test_predict_directly_and_over_http_agree(client: TestClient, platform: Platform) -> None:
    caller, headers = _key(platform, "acme", Role.USER)
    over_http = client.post("/predict/credit-risk", json={"instances": [APPLICANT]}, headers=headers).json()
    direct = asyncio.run(platform.models.predict(caller, "credit-risk", [APPLICANT]))
    assert direct.predictions == over_http["predictions"]
    assert direct.probabilities == over_http["probabilities"]
    assert (direct.version, direct.variant) == (over_http["version"], over_http["variant"]) == (1, "champion")

    # Both landed in the prediction log under the caller's tenant, and feedback finds both.
    labels = {direct.request_id: [0], over_http["request_id"]: [1]}
    attached = asyncio.run(platform.models.feedback(caller, "credit-risk", labels))
    assert sorted(attached.attached) == sorted(labels) and not attached.unknown
    # Another tenant's caller sees neither.
    other, _ = _key(platform, "globex", Role.USER)
    elsewhere = asyncio.run(platform.models.feedback(other, "credit-risk", labels))
    assert sorted(elsewhere.unknown) == sorted(labels)

    viewer, _ = _key(platform, "acme", Role.VIEWER)
    with pytest.raises(ForbiddenError, match="predicting needs role 'user'"):
        asyncio.run(platform.models.predict(viewer, "credit-risk", [APPLICANT]))
    with pytest.raises(NotFoundError, match="no model 'nope'"):
        asyncio.run(platform.models.predict(caller, "nope", [APPLICANT]))


def test_rag_directly_and_over_http_agree_scope_and_audit(
    client: TestClient, platform: Platform, tmp_path: Path
) -> None:
    operator, headers = _key(platform, "acme", Role.OPERATOR)
    uploaded = client.post(
        "/collections/handbook/documents", files=[("files", ("keys.md", GUIDE))], headers=headers
    )
    assert uploaded.status_code == 200, uploaded.text

    # The same upload made directly changes nothing, and is audited the same way, under the caller.
    rag = platform.rag
    again = rag.upload(operator, "handbook", [("keys.md", GUIDE)])
    assert again.report.unchanged == ["keys.md"]
    entries = platform.audit.query(AuditFilter(action="rag.ingest", actor=operator.key_id))
    assert [(e.tenant, e.target) for e in entries] == [("acme", "handbook")] * 2
    # Newest first: the direct upload changed nothing, the one over HTTP added the file, by name.
    assert [e.after and (e.after["via"], e.after["files"]) for e in entries] == [
        ("upload", {}),
        ("upload", {"added": ["keys.md"]}),
    ]

    question = {"question": "How do I rotate a key?", "collection": "handbook", "generate": False}
    over_http = client.post("/query", json=question, headers=headers).json()
    direct = asyncio.run(rag.query(operator, question["question"], "handbook", generate=False))
    assert [c.id for c in direct.chunks] == [s["chunk_id"] for s in over_http["sources"]]

    # Tenant scoping holds without HTTP: another tenant's caller finds no such collection.
    other, other_headers = _key(platform, "globex", Role.OPERATOR)
    with pytest.raises(NotFoundError, match="no collection 'handbook' in tenant 'globex'"):
        asyncio.run(rag.query(other, question["question"], "handbook", generate=False))
    assert client.post("/query", json=question, headers=other_headers).status_code == 404
    assert rag.collections(other) == []

    # Role checks hold without HTTP too.
    user, _ = _key(platform, "acme", Role.USER)
    with pytest.raises(ForbiddenError, match="uploading documents needs role 'operator'"):
        rag.upload(user, "handbook", [("keys.md", GUIDE)])


def test_an_eval_run_directly_and_over_http_agree_scope_and_audit(
    client: TestClient, platform: Platform
) -> None:
    operator, headers = _key(platform, "acme", Role.OPERATOR)
    platform.rag.upload(
        operator, "evalbook", [("keys.md", GUIDE), ("other.md", b"# Other\n\nUnrelated words.\n")]
    )
    items = [
        {
            "question": "How do I rotate a key?",
            "reference": "Create a new key.",
            "reference_sources": ["keys.md"],
        }
    ]
    body = {"dataset": {"name": "keys", "items": items}, "collection": "evalbook", "generate": False}
    over_http = client.post("/admin/evals/runs", json={**body, "resume": "never"}, headers=headers)
    assert over_http.status_code == 200, over_http.text

    runs = eval_runs(platform)
    dataset = dataset_from_items(items, name="keys")
    config = eval_config(collection="evalbook", default_top_k=5, generate=False)
    direct = EvalRunPublic.of(asyncio.run(runs.run(operator, dataset, config, resume="never")))
    public = EvalRunPublic.model_validate(over_http.json())
    for metric in ("hit_rate", "mrr"):
        assert direct.summaries[metric].mean == public.summaries[metric].mean == 1.0
    assert direct.params == public.params and direct.run_id != public.run_id
    audited = platform.audit.query(AuditFilter(action="eval.run", actor=operator.key_id))
    assert {e.tenant for e in audited} == {"acme"} and len(audited) == 2

    # The run is the caller's tenant's: another tenant has no such collection, a user may not run one.
    other, _ = _key(platform, "globex", Role.OPERATOR)
    with pytest.raises(NotFoundError, match="in tenant 'globex'"):
        asyncio.run(runs.run(other, dataset, config, resume="never"))
    user, _ = _key(platform, "acme", Role.USER)
    with pytest.raises(ForbiddenError, match="running an eval needs role 'operator'"):
        asyncio.run(runs.run(user, dataset, config, resume="never"))


def test_retrieval_only_queries_are_metered(client: TestClient, platform: Platform) -> None:
    """A query that makes no LLM call still counts against the rate limit and is in the ledger."""
    operator, headers = _key(platform, "metered", Role.OPERATOR)
    platform.rag.upload(operator, "handbook", [("keys.md", GUIDE)])
    platform.budgets.set("metered", "rpm", 1, actor="test")
    question = {"question": "How do I rotate a key?", "collection": "handbook", "generate": False}
    first = client.post("/query", json=question, headers=headers)
    assert first.status_code == 200, first.text
    second = client.post("/query", json=question, headers=headers)
    assert second.status_code == 429 and "rpm" in second.text, second.text
    calls = platform.ledger.calls(tenant="metered")
    assert [(c.route, c.outcome) for c in calls] == [
        ("all-MiniLM-L6-v2", "error"),
        ("all-MiniLM-L6-v2", "ok"),
    ]
    assert calls[1].request_id == first.headers["x-request-id"] and calls[1].prompt_tokens > 0

    # /metrics needs no key: the refusal is counted under the tenant's hash, not its name.
    metrics = client.get("/metrics").text
    hashed = "t_" + hashlib.sha256(b"metered").hexdigest()[:12]
    assert f'opsloop_budget_rejected_total{{budget="rpm",tenant="{hashed}"}} 1.0' in metrics
    assert 'tenant="metered"' not in metrics
