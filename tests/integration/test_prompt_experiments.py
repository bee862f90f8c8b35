"""A canary of a prompt version on ``POST /query``, end to end with the real embedded models.

Real parts: the app and its lifespan, one bundled doc ingested at start, Qdrant Edge, MiniLM,
SmolLM2-135M in llama.cpp through the gateway, MLflow's prompt registry. A candidate version of
``rag-answer`` takes its share of the queries, sticky per unit; each answer says which variant
and version made it, in the body, the header and the query log; promoting moves ``production``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from scipy import stats

import evals
from evals.tracking import EvalTracker
from opsloop.audit import AuditFilter
from opsloop.auth import Role
from opsloop.registry import PromptVersionInfo
from opsloop.settings import load_settings
from rag.answer import ANSWER_PROMPT, DEFAULT_PROMPT, check_answer_template, ensure_answer_prompt
from serving.app import create_app
from serving.platform import Platform, bundled_docs, cli_principal
from workflows.experiments.policy import Decision
from workflows.prompts import register

QUESTION = "How do I revoke an API key?"
LOCAL = {"name": "local", "kind": "llamacpp", "max_concurrency": 1}
CANDIDATE = DEFAULT_PROMPT.replace("Answer", "Answer briefly", 1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Platform, dict[str, str]]]:
    docs = tmp_path_factory.mktemp("docs")
    shutil.copy(bundled_docs() / "auth.md", docs / "auth.md")
    settings = load_settings(
        home=tmp_path_factory.mktemp("home"),
        bootstrap_demo=False,
        bootstrap_docs=True,
        docs_path=docs,
        drift_check_seconds=0,
        experiment_decide_seconds=0,  # the test ticks the decider itself
        experiment_poll_seconds=0.1,
        rag_max_answer_tokens=4,  # the variant is what is checked, not the answer's quality
        # Priced, so that each variant's cost per request can be checked against the ledger.
        llm_routes={"smollm2": {"backends": [{**LOCAL, "cost_per_token": 1e-6}], "queue_timeout_s": 30}},
    )
    app: FastAPI = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        platform: Platform = app.state.platform
        deadline = time.monotonic() + 300
        while platform.components.get("rag") == "starting" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert platform.components.get("rag") == "ready", platform.components
        ensure_answer_prompt(platform.start_registry())  # version 1 at production, as a first query would
        key = platform.settings.admin_key_path.read_text().strip()
        yield client, platform, {"Authorization": f"Bearer {key}"}


def _ask(client: TestClient, auth: dict[str, str], unit: str) -> dict[str, Any]:
    response = client.post(
        "/query",
        json={"question": QUESTION, "collection": "docs"},
        headers={**auth, "X-Opsloop-Unit": unit},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["X-Opsloop-Variant"] == body["variant"]
    return body


def _candidate(platform: Platform, template: str) -> PromptVersionInfo:
    return register(
        cli_principal(),
        platform.registry,
        platform.audit,
        ANSWER_PROMPT,
        template,
        check=check_answer_template,
    )


def _wait_routed(platform: Platform) -> None:
    deadline = time.monotonic() + 30
    while platform.experiments.router.assign("prompt", ANSWER_PROMPT, "probe") is None:
        assert time.monotonic() < deadline, "the experiment was not picked up"
        time.sleep(0.05)


@pytest.fixture(autouse=True)
def _stops_its_experiment(served: tuple[TestClient, Platform, dict[str, str]]) -> Iterator[None]:
    """A failed test leaves no experiment running (one runs per prompt at a time)."""
    yield
    service = served[1].experiments.service
    for experiment in service.store.list(running=True):
        service.stop(cli_principal(), experiment.name)


def test_without_an_experiment_production_answers(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, _, auth = served
    body = _ask(client, auth, "anyone")
    assert (body["variant"], body["prompt_version"]) == ("production", 1)


def test_prompt_experiments_that_cannot_run_are_refused_with_the_reason(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    broken = platform.registry.register_prompt(ANSWER_PROMPT, "Sources: {{context}}. No question here.")
    cases = [
        ({"prompt": ANSWER_PROMPT, "challenger": str(broken.version)}, 422, "missing ['question']"),
        ({"prompt": ANSWER_PROMPT, "challenger": "1"}, 409, "already is the production version"),
        ({"prompt": ANSWER_PROMPT, "challenger": "99"}, 404, "99"),
        ({"prompt": "summarise", "challenger": "1"}, 422, "not served by opsloop"),
        ({"prompt": ANSWER_PROMPT, "challenger": "1", "kind": "shadow"}, 422, "slow the callers"),
        ({"prompt": ANSWER_PROMPT, "challenger": "1", "primary": "accuracy"}, 422, "use one of answer_score"),
    ]
    for body, status, message in cases:
        created = client.post("/admin/experiments", json={"name": "refused", **body}, headers=auth)
        assert created.status_code == status, (body, created.text)
        assert message in created.json()["error"]["message"], created.text
    assert client.get("/admin/experiments", headers=auth).json() == []


def test_a_prompt_canary_splits_queries_by_unit_and_promotes_production(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    candidate = _candidate(platform, CANDIDATE)
    created = client.post(
        "/admin/experiments",
        json={
            "name": "briefly",
            "kind": "canary",
            "prompt": ANSWER_PROMPT,
            "challenger": str(candidate.version),
            "steps": [50, 100],
            "min_samples": 5,
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    _wait_routed(platform)

    answers = {unit: _ask(client, auth, unit) for unit in (f"user-{i}" for i in range(16))}
    versions = {body["variant"]: body["prompt_version"] for body in answers.values()}
    assert versions == {"champion": 1, "challenger": candidate.version}, versions
    for unit in list(answers)[:4]:  # a unit keeps its variant
        assert _ask(client, auth, unit)["variant"] == answers[unit]["variant"]

    platform.queries.flush()
    logged = {
        e["request_id"]: e for e in client.get("/admin/queries", params={"limit": 50}, headers=auth).json()
    }
    for body in answers.values():
        entry = logged[body["request_id"]]
        assert (entry["experiment"], entry["variant"]) == ("briefly", body["variant"])
        assert entry["prompt_version"] == str(body["prompt_version"])

    ledger = {call.request_id: call for call in platform.ledger.calls(limit=200)}  # the answers' LLM calls
    for body in answers.values():
        call = ledger[body["request_id"]]
        assert (call.experiment, call.variant, call.outcome) == ("briefly", body["variant"], "ok")
    report = client.get("/admin/costs", params={"by": "variant"}, headers=auth).json()
    calls = {row["group"]: row["calls"] for row in report["rows"]}
    assert calls["briefly:champion"] + calls["briefly:challenger"] >= len(answers), calls

    platform.experiments.outcomes.flush()
    shown = client.get("/admin/experiments/briefly", headers=auth).json()
    assert shown["target"] == {"kind": "prompt", "name": ANSWER_PROMPT}
    assert [v["version"] for v in shown["variants"]] == ["1", str(candidate.version)]
    assert all(v["requests"] >= 1 and v["errors"] == 0 for v in shown["variants"]), shown["variants"]
    for v in shown["variants"]:  # each answer's LLM call, as the ledger priced it
        charged = sum(
            c.cost_usd for c in ledger.values() if (c.experiment, c.variant) == ("briefly", v["name"])
        )
        assert v["cost_per_request"] == pytest.approx(charged / v["requests"]) and charged > 0
    (name, decision), *_ = platform.experiments.decider.tick()
    assert name == "briefly" and decision.action in {"continue", "advance"}, decision.reason

    promoted = client.post("/admin/experiments/briefly/promote", headers=auth)
    assert promoted.status_code == 200, promoted.text
    assert platform.registry.load_prompt(ANSWER_PROMPT, "production").version == candidate.version
    moves = platform.audit.query(AuditFilter(action="prompt.alias"))
    assert moves[0].after == {"alias": "production", "version": candidate.version}
    deadline = time.monotonic() + 30
    while platform.experiments.router.assign("prompt", ANSWER_PROMPT, "after") is not None:
        assert time.monotonic() < deadline, "the ended experiment still routes"  # within one poll
        time.sleep(0.05)
    body = _ask(client, auth, "after")
    while body["prompt_version"] != candidate.version:  # the moved alias is read within a poll
        assert time.monotonic() < deadline, "queries still use the old production prompt"
        time.sleep(0.1)
        body = _ask(client, auth, "after")
    assert (body["variant"], body["prompt_version"]) == ("production", candidate.version)


def test_answers_take_scores_from_their_own_tenant_only(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    asked = _ask(client, auth, "scorer")["request_id"]
    other = platform.keys.create("other", Role.USER, actor="test").secret.get_secret_value()
    scored = client.post(
        "/feedback/query",
        json={"feedback": [{"request_id": asked, "score": 0.75}, {"request_id": "never-asked", "score": 1}]},
        headers=auth,
    )
    assert scored.status_code == 200, scored.text
    assert scored.json() == {"attached": [asked], "unknown": ["never-asked"]}
    elsewhere = client.post(
        "/feedback/query",
        json={"feedback": [{"request_id": asked, "score": 0}]},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert elsewhere.json() == {"attached": [], "unknown": [asked]}
    for bad in (1.5, -0.1, "NaN", None):
        refused = client.post(
            "/feedback/query", json={"feedback": [{"request_id": asked, "score": bad}]}, headers=auth
        )
        assert refused.status_code == 422, (bad, refused.text)
    [entry] = [e for e in client.get("/admin/queries", headers=auth).json() if e["request_id"] == asked]
    assert entry["feedback_score"] == 0.75


def test_an_ab_test_of_prompts_rolls_back_a_candidate_whose_answers_score_worse(
    served: tuple[TestClient, Platform, dict[str, str]],
) -> None:
    client, platform, auth = served
    candidate = _candidate(platform, CANDIDATE + " ")  # a new version needs a new template
    production = platform.registry.load_prompt(ANSWER_PROMPT, "production").version
    created = client.post(
        "/admin/experiments",
        json={
            "name": "worse",
            "kind": "ab",
            "prompt": ANSWER_PROMPT,
            "challenger": str(candidate.version),
            "min_samples": 30,
        },
        headers=auth,
    )
    assert created.status_code == 201, created.text
    assert created.json()["config"]["primary"] == "answer_score"
    _wait_routed(platform)

    # Users find the candidate's answers useless and production's mostly right.
    decision = None
    for batch in range(6):
        answers = [_ask(client, auth, f"ab-{batch}-{i}") for i in range(24)]
        scores = [
            {"request_id": a["request_id"], "score": 0.0 if a["variant"] == "challenger" else 0.9}
            for a in answers
        ]
        assert client.post("/feedback/query", json={"feedback": scores}, headers=auth).status_code == 200
        platform.experiments.outcomes.flush()
        (_, decision), *_ = platform.experiments.decider.tick()
        if decision.action != "continue":
            break
    assert decision is not None and decision.action == "rollback", decision and decision.reason
    shown = client.get("/admin/experiments/worse", headers=auth).json()
    assert shown["status"] == "rolled_back" and "answer_score" in shown["decision"]["reason"]
    champion, challenger = shown["variants"]
    assert challenger["answer_score"] == 0.0 and champion["answer_score"] == pytest.approx(0.9)
    assert champion["accuracy"] is None and challenger["labelled"] >= 30
    assert platform.registry.load_prompt(ANSWER_PROMPT, "production").version == production


def _golden_questions(path: Path, source: str, count: int) -> Path:
    """``count`` questions of the bundled golden set whose answers are in ``source``, as a data set file."""
    lines = (Path(evals.__file__).parent / "datasets" / "docs_golden.jsonl").read_text().splitlines()
    picked = [line for line in lines if json.loads(line)["reference_sources"] == [source]][:count]
    path.write_text("\n".join(picked) + "\n")
    return path


def test_an_ab_test_decided_by_eval_runs_each_prompt_on_the_data_set_and_acts_on_the_paired_test(
    served: tuple[TestClient, Platform, dict[str, str]], tmp_path: Path
) -> None:
    """The candidate renders the same prompt (spaces inside the braces): no real difference to find.

    llama.cpp's greedy answers still vary a little from run to run (its prompt cache splits the
    work differently), so the test checks the decision against the runs' own scores.
    """
    client, platform, auth = served
    production = platform.registry.load_prompt(ANSWER_PROMPT, "production")
    same = _candidate(platform, production.template.replace("{{question}}", "{{ question }}"))
    dataset = _golden_questions(tmp_path / "auth.jsonl", "auth.md", 5)
    body = {
        "name": "by-eval",
        "prompt": ANSWER_PROMPT,
        "challenger": str(same.version),
        "eval": {"dataset": str(dataset), "collection": "docs"},
    }
    for primary, message in (("eval:mrr", "scores retrieval"), ("eval:faithfulness", "needs a judge route")):
        refused = client.post("/admin/experiments", json={**body, "primary": primary}, headers=auth)
        assert refused.status_code == 422 and message in refused.text, refused.text
    created = client.post("/admin/experiments", json=body, headers=auth)
    assert created.status_code == 201, created.text
    assert (created.json()["kind"], created.json()["config"]["primary"]) == ("ab", "eval:semantic_similarity")
    assert created.json()["config"]["eval"]["dataset"] == str(dataset.resolve())

    decisions: list[Decision] = []
    deadline = time.monotonic() + 600
    while not decisions or decisions[-1].action == "continue":
        assert time.monotonic() < deadline, decisions[-1].reason
        (_, decision), *_ = platform.experiments.decider.tick()
        decisions.append(decision)
        time.sleep(0.5)
    assert decisions[0].reason.startswith("evaluating semantic_similarity: champion v")

    shown = client.get("/admin/experiments/by-eval", headers=auth).json()
    [line] = [t for t in shown["tests"] if t["kind"] == "eval"]
    settings = platform.settings
    tracker = EvalTracker(settings.tracking_uri, settings.artifact_root).start()
    scores = {}
    for variant in ("champion", "challenger"):
        run_id = line[variant]["run_id"]
        tags = tracker.get(run_id).tags
        assert (tags["opsloop.experiment"], tags["opsloop.variant"]) == ("by-eval", variant)
        samples = tracker.samples(run_id)
        scores[variant] = {s.id: s.scores["semantic_similarity"] for s in samples if s.scores}
    questions = sorted(scores["champion"].keys() & scores["challenger"].keys())
    a, b = ([scores[v][q] for q in questions] for v in ("champion", "challenger"))
    tie = a == b  # greedy answers can come out the same: scipy's p is then undefined, ours 1
    p_value = 1.0 if tie else stats.ttest_rel(b, a).pvalue
    better = p_value < 0.05 and np.mean(b) > np.mean(a)
    final = decisions[-1]
    assert final.action == ("promote" if better else "rollback"), final.reason
    assert f"on {len(questions)} questions: eval:semantic_similarity" in final.reason
    assert f"p={p_value:.3g} (paired_t, n={len(questions)}/{len(questions)})" in final.reason
    assert shown["status"] == {"promote": "promoted", "rollback": "rolled_back"}[final.action]
    served_version = platform.registry.load_prompt(ANSWER_PROMPT, "production").version
    assert served_version == (same.version if better else production.version)
    tasks = client.get("/admin/evals/tasks", headers=auth).json()
    ran = [t for t in tasks if t["actor"] == "experiment:by-eval"]
    assert [t["state"] for t in ran] == ["finished", "finished"], tasks
    assert len(questions) == 5  # every question answered and scored in both runs
