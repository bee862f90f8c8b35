"""Gateway routes: which backends serve a public model name, in which order, and how.

A route maps the model name clients send (``"chat"``, ``"gpt-4o"``) to an ordered list of
:class:`BackendSpec`; :mod:`opsloop.llm.router` tries them in that order. In YAML::

    llm_routes:
      chat:
        queue_timeout_s: 2
        backends:
          - {name: vllm-a, kind: openai, base_url: "http://vllm-a:8000/v1", model: qwen,
             timeout_s: 20, max_retries: 2, max_concurrency: 64, gpu_hour_usd: 2.5}
          - {name: local, kind: llamacpp, max_concurrency: 1}
      small: [{name: local, kind: llamacpp, max_concurrency: 1}]   # a bare list is a route too

A backend that appears in several routes (``local`` above) is one client with one
concurrency limit, so its specs must be identical. Every check fails with a pydantic
``ValidationError`` whose location names the field, so Settings can embed
:data:`RouteTable` and report ``llm_routes.chat.backends.0.base_url``.

Each backend has a context window (:attr:`BackendSpec.context_window`): ``n_ctx`` for
llama.cpp, which runs the model with that context, and ``context_tokens`` for remote backends,
whose model the gateway cannot ask (default :data:`DEFAULT_CONTEXT_TOKENS`). A route's
:attr:`RouteConfig.context_window` is the largest of its backends': no request may ask a route
for more ``max_tokens``, and no call is reserved against budgets for more.

Clients are made from specs by a factory callable (:data:`ClientFactory`);
:func:`create_client` is the real one, and tests or the app pass their own. An openai or
anthropic backend is called by opsloop's own client (``client: native``, the default) or by
LangChain's chat model (``client: langchain``, :mod:`opsloop.llm.langchain_client`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, assert_never

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from opsloop.errors import ConfigError, OpsloopError

if TYPE_CHECKING:
    import httpx

    from opsloop.llm.protocol import LLMClient

__all__ = [
    "DEFAULT_CONTEXT_TOKENS",
    "BackendKind",
    "BackendSpec",
    "ClientFactory",
    "RouteConfig",
    "RouteTable",
    "backend_specs",
    "build_clients",
    "check_routes",
    "create_client",
]

BackendKind = Literal["llamacpp", "openai", "anthropic"]
_REMOTE: frozenset[str] = frozenset({"openai", "anthropic"})
# The router's per-attempt deadline (timeout_s) is the one that counts and labels an attempt
# "timeout"; the SDKs' own timeouts are a backstop just behind it.
_SDK_GRACE_S = 1.0

DEFAULT_CONTEXT_TOKENS = 32_768
"""The context window taken for a remote backend that sets no ``context_tokens``."""
_MAX_CONTEXT_TOKENS = 2**31 - 1  # llama.cpp and most servers hold token counts in a C int


class BackendSpec(BaseModel):
    """One backend a route can send requests to, with its limits and prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$",
        description="Backend name in results, the served-by header, metrics and the ledger.",
    )
    kind: BackendKind = Field(description="llamacpp: in-process GGUF; openai: any OpenAI-compatible server.")
    client: Literal["native", "langchain"] = Field(
        default="native",
        validate_default=True,
        description="How an openai or anthropic backend is called: native (opsloop's own clients) or "
        "langchain (LangChain's ChatOpenAI or ChatAnthropic, e.g. for one LangChain stack per "
        "deployment). The gateway's budgets, ledger, retries and fallbacks apply either way.",
    )
    model: str = Field(
        default="",
        validate_default=True,
        description="The backend's own model name; requests are rewritten to it. Needed by remote kinds.",
    )
    base_url: str | None = Field(
        default=None,
        validate_default=True,
        description="API root of a remote backend, e.g. http://vllm:8000/v1; needed by kind openai.",
    )
    api_key: SecretStr | None = Field(
        default=None, validate_default=True, description="API key of a remote backend; needed by anthropic."
    )
    model_path: Path | None = Field(
        default=None,
        validate_default=True,
        description="GGUF file of a llamacpp backend; default: the packaged SmolLM2-135M-Instruct.",
    )
    n_ctx: int = Field(
        default=2048, ge=16, le=_MAX_CONTEXT_TOKENS, description="Context window of a llamacpp backend."
    )
    context_tokens: int | None = Field(
        default=None,
        ge=16,
        le=_MAX_CONTEXT_TOKENS,
        description="Context window (prompt plus completion) of a remote backend's model; "
        f"default {DEFAULT_CONTEXT_TOKENS}. It caps max_tokens and what a call reserves.",
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads of a llamacpp backend.")
    nice: int | Literal["idle"] = Field(
        default="idle",
        description="The CPU priority a llamacpp backend generates at (Linux). idle (the default): only "
        "CPU time nothing else on the machine wants (SCHED_IDLE), so a prediction or a retrieval takes a "
        "core the moment it needs one, and a CPU kept busy by other work holds generation back; 1-19: that "
        "many nice steps below the server, keeping generation a share of a busy CPU (about a tenth at "
        "10); 0: the server's own priority.",
    )
    structured_output: Literal["json_schema", "json_object"] = Field(
        default="json_schema",
        description="How an openai backend is asked for JSON of a schema: json_schema (OpenAI, vLLM) "
        "or json_object with a schema (llama.cpp's server).",
    )
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds one attempt may take; for streams, until the first chunk and between chunks.",
    )
    max_retries: int = Field(
        default=1, ge=0, le=10, description="Retries on this backend after a retryable error."
    )
    backoff_s: float = Field(
        default=0.25, ge=0, description="Base of the exponential backoff between retries, with jitter."
    )
    backoff_max_s: float = Field(default=4.0, ge=0, description="Cap of the backoff between retries.")
    max_concurrency: int = Field(default=8, ge=1, description="Most requests this backend serves at once.")
    input_per_mtok: float | None = Field(default=None, ge=0, description="USD per million prompt tokens.")
    output_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million completion tokens."
    )
    cached_per_mtok: float | None = Field(
        default=None, ge=0, description="USD per million cached prompt tokens."
    )
    cost_per_token: float | None = Field(
        default=None, ge=0, description="Self-hosted: USD per token, prompt and completion alike."
    )
    gpu_hour_usd: float | None = Field(
        default=None, ge=0, description="Self-hosted: USD per GPU hour, for cost from serving time."
    )

    @field_validator("nice", mode="before")
    @classmethod
    def _idle_or_nice_steps(cls, nice: Any) -> Any:
        if isinstance(nice, str) and nice.isdigit():  # from an environment variable, say
            nice = int(nice)
        if nice == "idle" or (isinstance(nice, int) and not isinstance(nice, bool) and 0 <= nice <= 19):
            return nice
        raise ValueError(f"nice is idle or a whole number of steps from 0 to 19, got {nice!r}")

    @field_validator("client")
    @classmethod
    def _langchain_is_remote(cls, client: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if client == "langchain" and kind is not None and kind not in _REMOTE:
            raise ValueError(f"client langchain is for openai and anthropic backends, not {kind}")
        return client

    @field_validator("model")
    @classmethod
    def _remote_needs_model(cls, model: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind in _REMOTE and not model.strip():
            raise ValueError(f"a {kind} backend needs the backend's model name")
        return model

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, base_url: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if base_url is None:
            if kind == "openai":
                raise ValueError("an openai backend needs base_url, e.g. http://vllm:8000/v1")
            return None
        if kind == "llamacpp":
            raise ValueError("a llamacpp backend runs in-process and takes no base_url")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        return base_url.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _anthropic_needs_key(cls, key: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if info.data.get("kind") == "anthropic" and (key is None or not key.get_secret_value()):
            raise ValueError("an anthropic backend needs api_key")
        return key

    @field_validator("model_path")
    @classmethod
    def _model_path_is_local(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        kind = info.data.get("kind")
        if path is not None and kind is not None and kind != "llamacpp":
            raise ValueError(f"model_path is for llamacpp backends, not {kind}")
        return path

    @field_validator("context_tokens")
    @classmethod
    def _remote_context(cls, tokens: int | None, info: ValidationInfo) -> int | None:
        if tokens is not None and info.data.get("kind") == "llamacpp":
            raise ValueError("a llamacpp backend's context window is n_ctx")
        return tokens

    @field_validator("backoff_max_s")
    @classmethod
    def _cap_above_base(cls, cap: float, info: ValidationInfo) -> float:
        base = info.data.get("backoff_s")
        if base is not None and cap < base:
            raise ValueError(f"backoff_max_s ({cap}) must be >= backoff_s ({base})")
        return cap

    @property
    def context_window(self) -> int:
        """The most tokens, prompt and completion together, one call can use on this backend."""
        if self.kind == "llamacpp":
            return self.n_ctx
        return self.context_tokens or DEFAULT_CONTEXT_TOKENS


class RouteConfig(BaseModel):
    """A public model name's backends, tried in order, and how long to queue when all are busy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backends: tuple[BackendSpec, ...] = Field(
        min_length=1, description="Tried in this order; the next one serves when one fails."
    )
    queue_timeout_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a request waits for a free slot when every backend is at max_concurrency.",
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, value: Any) -> Any:
        # `chat: [{...}, {...}]` reads better in YAML than `chat: {backends: [...]}`.
        return {"backends": value} if isinstance(value, list | tuple) else value

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, backends: tuple[BackendSpec, ...]) -> tuple[BackendSpec, ...]:
        names = [spec.name for spec in backends]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"backend names must be unique within a route, repeated: {', '.join(repeated)}")
        return backends

    @property
    def context_window(self) -> int:
        """The largest context window of the route's backends: the most ``max_tokens`` it takes.

        The largest, not the smallest: a request the first backend can serve is not refused
        because a fallback has less room (llama.cpp then stops at its window, ``"length"``).
        """
        return max(spec.context_window for spec in self.backends)


def check_routes(routes: Mapping[str, RouteConfig]) -> Mapping[str, RouteConfig]:
    """Check what one route cannot: public names, and backends shared between routes.

    Args:
        routes: public model name -> route.

    Returns:
        ``routes``, unchanged.

    Raises:
        ValueError: a public name is blank, or one backend name has different specs in two
            routes (one name is one client and one concurrency limit).
    """
    seen: dict[str, tuple[str, BackendSpec]] = {}
    for public, route in routes.items():
        if not public.strip() or public != public.strip():
            raise ValueError(f"route names must be non-blank without surrounding spaces, got {public!r}")
        for spec in route.backends:
            first = seen.setdefault(spec.name, (public, spec))
            if first[1] != spec:
                raise ValueError(
                    f"backend {spec.name!r} is configured differently in routes {first[0]!r} and "
                    f"{public!r}; give the variants different names"
                )
    return routes


RouteTable = Annotated[dict[str, RouteConfig], AfterValidator(check_routes)]
"""Public model name -> route, checked across routes; the type for ``Settings.llm_routes``."""

ClientFactory = Callable[[BackendSpec], "LLMClient"]
"""Makes the client for one backend spec; :func:`create_client` is the real one."""


def backend_specs(routes: Mapping[str, RouteConfig]) -> dict[str, BackendSpec]:
    """Every backend of ``routes`` once, by name, in order of first appearance.

    Raises:
        ConfigError: the routes fail :func:`check_routes`.
    """
    try:
        check_routes(routes)
    except ValueError as exc:
        raise ConfigError(f"invalid llm routes: {exc}", setting="llm_routes") from exc
    found: dict[str, BackendSpec] = {}
    for route in routes.values():
        for spec in route.backends:
            found.setdefault(spec.name, spec)
    return found


def create_client(spec: BackendSpec, *, http_client: httpx.AsyncClient | None = None) -> LLMClient:
    """Make the real client for ``spec``; nothing is loaded or connected yet.

    Args:
        spec: the backend.
        http_client: ``httpx.AsyncClient`` for the native Anthropic backend (a ``MockTransport``
            in tests); the caller keeps ownership. OpenAI-compatible backends keep a pool of their
            own, and so do LangChain's models (``client: langchain``).

    Returns:
        A :class:`~opsloop.llm.llamacpp.LlamaCppClient`,
        :class:`~opsloop.llm.openai_compat.OpenAICompatClient`,
        :class:`~opsloop.llm.anthropic.AnthropicClient` or, for ``client: langchain``,
        :class:`~opsloop.llm.langchain_client.LangChainClient`, named ``spec.name``.
    """
    if spec.kind == "llamacpp":
        from opsloop.llm.llamacpp import LlamaCppClient

        # The router keeps at most max_concurrency requests on it; the client's own queue
        # bound only trips when timed-out calls are still running on its worker thread.
        return LlamaCppClient(
            spec.model_path,
            name=spec.name,
            n_ctx=spec.n_ctx,
            max_queue=spec.max_concurrency,
            threads=spec.threads,
            nice=spec.nice,
        )
    if spec.client == "langchain":
        from opsloop.llm.langchain_client import LangChainClient

        assert spec.kind != "llamacpp"  # noqa: S101 - BackendSpec allows langchain for remote kinds only
        return LangChainClient(
            spec.kind,
            model=spec.model,
            base_url=spec.base_url,
            api_key=spec.api_key,
            name=spec.name,
            timeout=spec.timeout_s + _SDK_GRACE_S,
        )
    if spec.kind == "openai":
        from opsloop.llm.openai_compat import OpenAICompatClient

        assert spec.base_url is not None  # noqa: S101 - BackendSpec requires it for openai
        return OpenAICompatClient(
            spec.base_url,
            api_key=spec.api_key,
            model=spec.model,
            name=spec.name,
            timeout=spec.timeout_s + _SDK_GRACE_S,
            structured_output=spec.structured_output,
        )
    if spec.kind == "anthropic":
        from opsloop.llm.anthropic import DEFAULT_BASE_URL, AnthropicClient

        assert spec.api_key is not None  # noqa: S101 - BackendSpec requires it for anthropic
        return AnthropicClient(
            spec.model,
            api_key=spec.api_key,
            base_url=spec.base_url or DEFAULT_BASE_URL,
            name=spec.name,
            timeout=spec.timeout_s + _SDK_GRACE_S,
            http_client=http_client,
        )
    assert_never(spec.kind)


def build_clients(
    routes: Mapping[str, RouteConfig], factory: ClientFactory = create_client
) -> dict[str, LLMClient]:
    """Make one client per backend name of ``routes`` with ``factory``.

    Raises:
        ConfigError: the routes are inconsistent, or a client refused its spec.
    """
    clients: dict[str, LLMClient] = {}
    for name, spec in backend_specs(routes).items():
        try:
            clients[name] = factory(spec)
        except OpsloopError as exc:
            raise ConfigError(f"backend {name!r}: {exc.message}", backend=name) from exc
    return clients
