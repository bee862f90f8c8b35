"""PII redaction before a request leaves for an external backend, and the answer's placeholders restored.

Real parts: the app, the gateway and Presidio. The "external" backend is an OpenAI-compatible
server on loopback that answers by repeating what it was sent (streamed or not) and keeps every
request body: what the provider would have seen is checked byte for byte.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import pytest
from fastapi.testclient import TestClient

from opsloop.privacy import ConversationRedaction, PiiPolicy, Redactor
from opsloop.settings import load_settings
from serving.app import create_app

EMAIL, PHONE = "jane.doe@example.com", "+44 20 7946 0958"


class _Echo(http.server.BaseHTTPRequestHandler):
    """``/v1/chat/completions`` answering with the last message's content, as SSE when asked."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append(body)
        text = "You said: " + body["messages"][-1]["content"]
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            answer = {"id": "x", "object": "chat.completion", "created": 0, "model": "echo", "usage": usage}
            answer["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
            self._send("application/json", json.dumps(answer).encode())
            return
        pieces = [text[i : i + 7] for i in range(0, len(text), 7)]  # cuts placeholders apart
        events = [{"choices": [{"index": 0, "delta": {"content": piece}}]} for piece in pieces]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage})
        stream = (
            "".join(f"data: {json.dumps(e | {'model': 'echo'})}\n\n" for e in events) + "data: [DONE]\n\n"
        )
        self._send("text/event-stream", stream.encode())

    def _send(self, content_type: str, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend = {
        "name": "provider",
        "kind": "openai",
        "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1",
        "model": "echo",
        "max_retries": 0,
    }
    settings = load_settings(
        home=tmp_path_factory.mktemp("home"),
        bootstrap_demo=False,
        bootstrap_docs=False,
        drift_check_seconds=0,
        llm_routes={
            "external": {"backends": [backend]},
            "internal": {"backends": [backend | {"name": "own"}]},
        },
        pii_routes={"external": {"redact_outbound": True}},
    )
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            key = settings.admin_key_path.read_text().strip()
            yield client, {"Authorization": f"Bearer {key}"}
    finally:
        server.shutdown()


def _ask(route: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": route, "messages": [{"role": "user", "content": content}], **extra}


def test_a_route_that_redacts_outbound_sends_placeholders_and_answers_with_the_values(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    _Echo.received.clear()
    question = f"Call me on {PHONE} or mail {EMAIL}; again: {EMAIL}."
    response = client.post("/v1/chat/completions", json=_ask("external", question), headers=auth)
    assert response.status_code == 200, response.text
    (sent,) = _Echo.received
    seen = sent["messages"][0]["content"]
    assert EMAIL not in seen and PHONE not in seen
    assert seen == "Call me on <PHONE_NUMBER_1> or mail <EMAIL_ADDRESS_1>; again: <EMAIL_ADDRESS_1>."
    assert response.json()["choices"][0]["message"]["content"] == f"You said: {question}"


def test_a_streamed_answer_gets_its_values_back_even_when_a_placeholder_is_cut_between_chunks(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    _Echo.received.clear()
    question = f"Mail {EMAIL} please."
    text = ""
    body = _ask("external", question, stream=True)
    with client.stream("POST", "/v1/chat/completions", json=body, headers=auth) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text += choice["delta"].get("content") or ""
    assert EMAIL not in json.dumps(_Echo.received)
    assert text == f"You said: {question}"


def test_routes_without_the_setting_send_what_they_were_given(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    _Echo.received.clear()
    response = client.post("/v1/chat/completions", json=_ask("internal", f"mail {EMAIL}"), headers=auth)
    assert response.status_code == 200, response.text
    assert _Echo.received[0]["messages"][0]["content"] == f"mail {EMAIL}"


def test_when_redaction_fails_nothing_is_sent_and_the_caller_is_told(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    gateway = client.app.state.platform.gateway  # type: ignore[attr-defined]

    class Failing(Redactor):
        def redact_many(self, texts: Iterable[str], policy: PiiPolicy | None = None) -> ConversationRedaction:
            raise RuntimeError("presidio is not installed")

    _Echo.received.clear()
    working, gateway.redactor = gateway.redactor, Failing()
    try:
        response = client.post("/v1/chat/completions", json=_ask("external", f"mail {EMAIL}"), headers=auth)
    finally:
        gateway.redactor = working
    assert response.status_code == 502, response.text
    assert "redacting failed: presidio is not installed" in response.json()["error"]["message"]
    assert _Echo.received == []
