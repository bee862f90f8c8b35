"""Budgets on the LLM gateway end to end: real ``opsloop serve`` processes, the ``openai`` SDK.

One server shows a token budget tripping with a 429 that names the budget and its reset; two
servers sharing the Redis on 127.0.0.1:6379 show one rate limit enforced across both. Each
test uses a tenant of its own, so counters left in Redis by other runs do not count.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from tests.e2e.server import Server, cli

ENV = {
    "OPSLOOP_BOOTSTRAP_DEMO": "false",
    "OPSLOOP_DRIFT_CHECK_SECONDS": "0",
    "OPSLOOP_LLM_DEFAULT_MAX_TOKENS": "2",
    "OPSLOOP_BUDGET_CACHE_SECONDS": "0",
}
HELLO = [{"role": "user", "content": "Say hi."}]


def _tenant_key(home: Path) -> tuple[str, str]:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    done = cli(home, "keys", "create", "--tenant", tenant, "--role", "user")
    assert done.returncode == 0, done.stderr
    return tenant, done.stdout.strip()


def _budget(home: Path, tenant: str, *limit: str) -> None:
    done = cli(home, "budgets", "set", "--tenant", tenant, *limit)
    assert done.returncode == 0, done.stderr


def _sdk(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def servers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[list[Server]]:
    count, env = request.param
    started: list[Server] = []
    try:
        for _ in range(count):
            started.append(Server(tmp_path / "home", env={**ENV, **env}))
        yield started
    finally:
        for server in started:
            assert server.stop() == 0, "".join(server.output)


@pytest.mark.parametrize("servers", [(1, {})], indirect=True)
def test_a_token_budget_trips_with_a_429_naming_it(servers: list[Server]) -> None:
    (server,) = servers
    tenant, key = _tenant_key(server.home)
    _budget(server.home, tenant, "--daily-tokens", "10")
    with _sdk(server, key) as sdk:
        first = sdk.chat.completions.create(model="smollm2", messages=HELLO)
        assert first.usage is not None and first.usage.total_tokens > 10  # admitted below the limit
        with pytest.raises(openai.RateLimitError) as refused:
            sdk.chat.completions.create(model="smollm2", messages=HELLO, stream=True)
    error = refused.value.body
    assert isinstance(error, dict) and error["type"] == "rate_limited", error
    assert "budget daily_tokens" in error["message"] and "resets at" in error["message"]
    assert int(refused.value.response.headers["retry-after"]) > 0


# Both share one home (its SQLite store holds the key and the budget). An embedded vector store
# would make the second refuse that home; these gateways serve no RAG, so a Qdrant server is
# named that they never call.
TWO_GATEWAYS = {
    "OPSLOOP_REDIS_URL": "redis://127.0.0.1:6379/0",
    "OPSLOOP_VECTOR_STORE": "qdrant",
    "OPSLOOP_QDRANT_URL": "http://127.0.0.1:9",
}


@pytest.mark.parametrize("servers", [(2, TWO_GATEWAYS)], indirect=True)
def test_two_gateways_on_one_redis_share_one_rate_limit(servers: list[Server]) -> None:
    tenant, key = _tenant_key(servers[0].home)
    _budget(servers[0].home, tenant, "--rpm", "3")
    if datetime.now(UTC).second > 20:  # the rpm window is the UTC minute: stay inside one
        time.sleep(61 - datetime.now(UTC).second)
    admitted = refused = 0
    sdks = [_sdk(server, key) for server in servers]
    try:
        for i in range(6):  # alternate between the two processes
            try:
                sdks[i % 2].chat.completions.create(model="smollm2", messages=HELLO, max_tokens=1)
                admitted += 1
            except openai.RateLimitError as exc:
                assert "rate limit rpm of tenant" in str(exc)
                refused += 1
    finally:
        for sdk in sdks:
            sdk.close()
    assert (admitted, refused) == (3, 3)
