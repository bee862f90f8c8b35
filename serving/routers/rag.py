"""RAG: ``POST /query`` answers from a tenant's collection; ``POST /collections/{name}/documents`` ingests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StringConstraints

from opsloop.errors import InvalidInputError
from rag.answer import MAX_QUESTION_CHARS
from serving.deps import OperatorKey, PlatformDep, UserKey, request_id
from serving.rag_service import COLLECTION_PATTERN

router = APIRouter(tags=["rag"])

CollectionName = Annotated[str, StringConstraints(pattern=f"^{COLLECTION_PATTERN}$")]


class QueryRequest(BaseModel):
    """A question for one of the caller's tenant's collections."""

    question: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUESTION_CHARS)
    ]
    collection: CollectionName
    top_k: int | None = Field(
        default=None, ge=1, le=50, description="Chunks to retrieve (default rag_top_k)."
    )
    generate: bool = Field(
        default=True, description="False: retrieval only, no LLM call; the answer is null."
    )


class SourcePublic(BaseModel):
    """One numbered source the answer was written from; ``text`` is what the model saw."""

    n: int
    chunk_id: str = Field(description="The chunk's id in the store (as in GET /admin/queries).")
    source: str
    title: str
    headings: list[str]
    score: float = Field(description="Reciprocal-rank-fusion score of the chunk.")
    text: str


class UsagePublic(BaseModel):
    """Tokens the LLM call used (zeros when the model was not called)."""

    prompt_tokens: int
    completion_tokens: int


class TimingsPublic(BaseModel):
    """Where the request's time went, in milliseconds."""

    retrieval_ms: float = Field(description="Embedding the question, dense + sparse search, fusion.")
    prompt_ms: float | None = Field(
        description="Reading the production answer prompt from the registry (null: generate=false)."
    )
    generation_ms: float | None = Field(
        description="The LLM call (zero when nothing was retrieved, null: generate=false)."
    )


class QueryResponse(BaseModel):
    """An answer with its sources, the cited source numbers and the prompt version used.

    With ``generate=false``: ``answer``, ``prompt_version`` and ``model`` are null, ``citations``
    empty and ``usage`` zeros; ``sources`` are those the model would have been given.
    """

    answer: str | None
    sources: list[SourcePublic]
    citations: list[int]
    usage: UsagePublic
    prompt_version: str | int | None
    model: str | None
    request_id: str
    latency_ms: float = Field(description="The whole query: retrieval, prompt and generation.")
    timings: TimingsPublic


class IngestPublic(BaseModel):
    """What one upload did to the collection."""

    collection: str
    source: str
    status: str
    chunks_written: int
    chunks_deleted: int


@router.post("/query", summary="Answer a question from a collection, citing its sources")
async def query(
    body: QueryRequest, platform: PlatformDep, principal: UserKey, request: Request
) -> QueryResponse:
    """Retrieve from the caller's tenant's ``collection`` and answer with the ``production`` prompt."""
    rag = await run_in_threadpool(lambda: platform.rag)
    result = await rag.query(
        principal.tenant,
        body.question,
        body.collection,
        body.top_k,
        generate=body.generate,
        request_id=request_id(request),
    )
    answer = result.answer
    return QueryResponse(
        answer=None if answer is None else answer.answer,
        sources=[
            SourcePublic(
                n=s.n,
                chunk_id=result.chunk_id(s),
                source=s.source,
                title=s.title,
                headings=list(s.headings),
                score=s.score,
                text=s.text,
            )
            for s in result.sources
        ],
        citations=[] if answer is None else answer.citations,
        usage=UsagePublic(
            prompt_tokens=0 if answer is None else answer.usage.prompt_tokens,
            completion_tokens=0 if answer is None else answer.usage.completion_tokens,
        ),
        prompt_version=None if answer is None else answer.prompt_version,
        model=None if answer is None else answer.model,
        request_id=result.request_id,
        latency_ms=result.latency_ms,
        timings=TimingsPublic(
            retrieval_ms=result.retrieval_ms, prompt_ms=result.prompt_ms, generation_ms=result.generation_ms
        ),
    )


@router.post(
    "/collections/{name}/documents",
    summary="Add or replace one document in a collection",
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string"}}}}},
)
async def upload(
    name: Annotated[str, Path(pattern=f"^{COLLECTION_PATTERN}$")],
    source: Annotated[
        str,
        Query(min_length=1, max_length=512, description="File name with its suffix, e.g. guide/setup.md."),
    ],
    platform: PlatformDep,
    principal: OperatorKey,
    request: Request,
) -> IngestPublic:
    """The raw file is the request body; its ``source`` suffix picks the loader (.md, .txt, .html, .pdf).

    Uploading the same bytes again changes nothing; new bytes under the same source replace its chunks.
    """
    data = await request.body()
    if not data:
        raise InvalidInputError("the request body (the file) is empty", field="body")
    report = await run_in_threadpool(
        lambda: platform.rag.upload(
            principal.tenant, name, source, data, actor=principal.actor, request_id=request_id(request)
        )
    )
    status = next((s for s in ("added", "replaced") if getattr(report, s)), "unchanged")
    return IngestPublic(
        collection=name,
        source=source,
        status=status,
        chunks_written=report.chunks_written,
        chunks_deleted=report.chunks_deleted,
    )
