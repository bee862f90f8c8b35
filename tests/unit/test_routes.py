"""Route configuration: validation that names the field, shared backends, client factories."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, TypeAdapter, ValidationError

from opsloop.errors import ConfigError, InvalidInputError
from opsloop.llm.aliases import applicable
from opsloop.llm.llamacpp import LlamaCppClient
from opsloop.llm.openai_compat import OpenAICompatClient
from opsloop.llm.protocol import LLMClient
from opsloop.llm.routes import (
    DEFAULT_CONTEXT_TOKENS,
    BackendSpec,
    RouteConfig,
    RouteTable,
    build_clients,
    create_client,
)

TABLE: TypeAdapter[dict[str, RouteConfig]] = TypeAdapter(RouteTable)
VLLM = {"name": "vllm", "kind": "openai", "base_url": "http://vllm:8000/v1/", "model": "qwen"}
LOCAL = {"name": "local", "kind": "llamacpp", "max_concurrency": 1}


def _error(routes: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    with pytest.raises(ValidationError) as info:
        TABLE.validate_python(routes)
    first = info.value.errors()[0]
    return tuple(first["loc"]), first["msg"]


def test_a_route_is_an_ordered_list_of_backends() -> None:
    routes = TABLE.validate_python(
        {"chat": {"backends": [VLLM, LOCAL], "queue_timeout_s": 1}, "small": [LOCAL]}
    )
    assert [spec.name for spec in routes["chat"].backends] == ["vllm", "local"]
    assert routes["chat"].queue_timeout_s == 1
    assert routes["small"].backends == (routes["chat"].backends[1],)
    assert routes["chat"].backends[0].base_url == "http://vllm:8000/v1"


def test_defaults_and_prices_are_carried() -> None:
    spec = BackendSpec.model_validate(
        {**VLLM, "input_per_mtok": 0.5, "output_per_mtok": 1.5, "cached_per_mtok": 0.05, "gpu_hour_usd": 2.5}
    )
    assert (spec.timeout_s, spec.max_retries, spec.max_concurrency) == (60.0, 1, 8)
    assert (spec.input_per_mtok, spec.output_per_mtok, spec.cached_per_mtok) == (0.5, 1.5, 0.05)
    assert spec.gpu_hour_usd == 2.5 and spec.cost_per_token is None


def test_a_local_backend_generates_on_idle_cpu_unless_given_a_nice_value() -> None:
    assert BackendSpec.model_validate(LOCAL).nice == "idle"
    assert BackendSpec.model_validate({**LOCAL, "nice": 10}).nice == 10


def test_api_key_is_secret() -> None:
    spec = BackendSpec.model_validate({**VLLM, "api_key": "sk-very-secret"})
    assert isinstance(spec.api_key, SecretStr)
    assert "sk-very-secret" not in repr(spec) and "sk-very-secret" not in str(spec.model_dump())


@pytest.mark.parametrize(
    ("backend", "field", "message"),
    [
        ({"name": "v", "kind": "openai", "model": "m"}, "base_url", "needs base_url"),
        ({"name": "v", "kind": "openai", "base_url": "http://v/v1"}, "model", "model name"),
        ({**VLLM, "base_url": "vllm:8000"}, "base_url", "http(s) URL"),
        ({**LOCAL, "base_url": "http://x/v1"}, "base_url", "in-process"),
        ({**VLLM, "model_path": "m.gguf"}, "model_path", "llamacpp"),
        ({"name": "c", "kind": "anthropic", "model": "claude-x"}, "api_key", "needs api_key"),
        ({**LOCAL, "backoff_s": 2, "backoff_max_s": 1}, "backoff_max_s", ">= backoff_s"),
        ({**LOCAL, "max_concurrency": 0}, "max_concurrency", "greater than or equal to 1"),
        ({**LOCAL, "timeout_s": 0}, "timeout_s", "greater than 0"),
        ({**LOCAL, "kind": "vllm"}, "kind", "'llamacpp', 'openai' or 'anthropic'"),
        ({**LOCAL, "timeout": 5}, "timeout", "Extra inputs are not permitted"),
        ({**LOCAL, "name": "has space"}, "name", "should match pattern"),
        ({**LOCAL, "context_tokens": 4096}, "context_tokens", "context window is n_ctx"),
        ({**VLLM, "context_tokens": 8}, "context_tokens", "greater than or equal to 16"),
        ({**LOCAL, "n_ctx": 2**31}, "n_ctx", "less than or equal to 2147483647"),
        ({**LOCAL, "nice": 20}, "nice", "idle or a whole number of steps from 0 to 19, got 20"),
        ({**LOCAL, "nice": "low"}, "nice", "got 'low'"),
    ],
)
def test_bad_backend_names_the_field(backend: dict[str, Any], field: str, message: str) -> None:
    loc, msg = _error({"chat": [backend]})
    assert loc == ("chat", "backends", 0, field)
    assert message in msg


def test_context_windows_of_backends_and_routes() -> None:
    routes = TABLE.validate_python(
        {
            "chat": [{**VLLM, "context_tokens": 131_072}, LOCAL],
            "small": [{**LOCAL, "name": "l2", "n_ctx": 512}],
        }
    )
    assert [spec.context_window for spec in routes["chat"].backends] == [131_072, 2048]
    assert routes["chat"].context_window == 131_072  # what the route can serve: its largest
    assert routes["small"].context_window == 512
    assert BackendSpec.model_validate(VLLM).context_window == DEFAULT_CONTEXT_TOKENS


def test_empty_route_and_repeated_names_are_refused() -> None:
    assert _error({"chat": []})[0] == ("chat", "backends")
    loc, msg = _error({"chat": [LOCAL, {**LOCAL}]})
    assert loc == ("chat", "backends") and "repeated: local" in msg


def test_a_shared_backend_must_be_the_same_everywhere() -> None:
    TABLE.validate_python({"chat": [VLLM, LOCAL], "small": [LOCAL]})
    _, msg = _error({"chat": [VLLM, LOCAL], "small": [{**LOCAL, "max_concurrency": 4}]})
    assert "'local' is configured differently in routes 'chat' and 'small'" in msg
    assert "non-blank" in _error({" ": [LOCAL]})[1]


def test_build_clients_makes_one_client_per_backend_name() -> None:
    routes = TABLE.validate_python({"chat": [VLLM, LOCAL], "small": [LOCAL]})
    made: list[str] = []

    def factory(spec: BackendSpec) -> LLMClient:
        made.append(spec.name)
        return create_client(spec)

    clients = build_clients(routes, factory)
    assert made == ["vllm", "local"] and list(clients) == ["vllm", "local"]


def test_a_client_refusing_its_spec_is_a_config_error() -> None:
    routes = TABLE.validate_python({"chat": [LOCAL]})

    def factory(spec: BackendSpec) -> LLMClient:
        raise InvalidInputError("no such device", field="device")

    with pytest.raises(ConfigError, match="backend 'local': no such device") as info:
        build_clients(routes, factory)
    assert info.value.details == {"backend": "local"}


def test_default_factory_makes_the_real_clients_without_connecting(tmp_path: Path) -> None:
    remote = create_client(BackendSpec.model_validate({**VLLM, "api_key": "sk-x", "timeout_s": 7}))
    assert isinstance(remote, OpenAICompatClient)
    assert (remote.name, remote.base_url, remote.model, remote.timeout) == (
        "vllm",
        "http://vllm:8000/v1",
        "qwen",
        8,  # the router's 7 s deadline counts; the SDK's is a backstop behind it
    )
    local = create_client(
        BackendSpec.model_validate({**LOCAL, "model_path": tmp_path / "m.gguf", "threads": 1, "n_ctx": 512})
    )
    assert isinstance(local, LlamaCppClient)
    assert (local.name, local.model_path, local.max_queue, local.threads, local.n_ctx) == (
        "local",
        tmp_path / "m.gguf",
        1,
        1,
        512,
    )


@pytest.mark.skipif(
    importlib.util.find_spec("opsloop.llm.anthropic") is None, reason="opsloop.llm.anthropic not written yet"
)
def test_default_factory_makes_an_anthropic_client() -> None:
    spec = BackendSpec.model_validate(
        {"name": "claude", "kind": "anthropic", "model": "claude-sonnet-4-5", "api_key": "sk-ant-x"}
    )
    client = create_client(spec)
    assert isinstance(client, LLMClient) and client.name == "claude"
    assert (client.model, client.timeout) == ("claude-sonnet-4-5", 61.0)  # type: ignore[attr-defined]
    proxied = create_client(spec.model_copy(update={"base_url": "https://llm-proxy.test"}))
    assert proxied.base_url == "https://llm-proxy.test"  # type: ignore[attr-defined]


def test_an_alias_takes_effect_only_between_configured_routes() -> None:
    stored = {"chat": "chat-big", "small": "removed-since", "removed": "chat"}
    assert applicable(stored, ["chat", "chat-big", "small"]) == {"chat": "chat-big"}
