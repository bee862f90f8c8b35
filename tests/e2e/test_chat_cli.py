"""``opsloop chat`` as a user runs it against ``opsloop serve``: ask, see it wait, approve, see it done."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.server import Server, cli


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("chat") / "home", env={"OPSLOOP_DRIFT_CHECK_SECONDS": "0"})
    server.wait_for("/readyz", 200, seconds=180)
    yield server
    server.stop()


def _chat(server: Server, *args: str) -> dict[str, object]:
    done = cli(server.home, "chat", *args, "--format", "json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def test_ask_wait_approve_and_the_metrics_count_it(server: Server) -> None:
    trained = cli(server.home, "models", "train", "--demo", "--shift", "--no-promote")
    assert trained.returncode == 0, trained.stderr
    asked = _chat(server, "promote credit-risk version 2")
    assert asked["status"] == "pending_approval", asked
    done = _chat(server, "--approve", str(asked["thread_id"]), "--comment", "checked")
    assert done["status"] == "done", done
    assert server.metric('opsloop_chat_approvals_total{action="promote_model",outcome="approved"}') == 1
    assert server.metric('opsloop_chat_requests_total{status="done",workflow="promote"}') == 1

    table = cli(server.home, "chat", "how is credit-risk doing?")
    assert table.returncode == 0, table.stderr
    assert "status_report" in table.stdout and "champion v2" in table.stdout


def test_a_question_comes_back_and_the_answer_goes_to_the_same_thread(server: Server) -> None:
    asked = _chat(server, "please retrain")
    assert asked["status"] == "needs_input", asked
    assert "Which model?" in str(asked["reply"])
    planned = _chat(server, "credit-risk", "--thread", str(asked["thread_id"]))
    assert planned["status"] == "pending_approval", planned
    pending = planned["pending"]
    assert isinstance(pending, dict)
    assert (pending["action"], pending["args"]) == ("retrain_model", {"model": "credit-risk"})
    assert str(pending["requested_by"]).startswith("cli")  # the CLI acts as cli:<user> of this machine
