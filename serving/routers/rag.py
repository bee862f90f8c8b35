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


class SourcePublic(BaseModel):
    """One numbered source the answer was written from; ``text`` is what the model saw."""

    n: int
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
    prompt_ms: float = Field(description="Reading the production answer prompt from the registry.")
    generation_ms: float = Field(description="The LLM call (zero when nothing was retrieved).")


class QueryResponse(BaseModel):
    """An answer with its sources, the cited source numbers and the prompt version used."""

    answer: str
    sources: list[SourcePublic]
    citations: list[int]
    usage: UsagePublic
    prompt_version: str | int
    model: str | None
    request_id: str
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
    result = await rag.query(principal.tenant, body.question, body.collection, body.top_k)
    answer = result.answer
    return QueryResponse(
        answer=answer.answer,
        sources=[
            SourcePublic(
                n=s.n, source=s.source, title=s.title, headings=list(s.headings), score=s.score, text=s.text
            )
            for s in answer.sources
        ],
        citations=answer.citations,
        usage=UsagePublic(
            prompt_tokens=answer.usage.prompt_tokens, completion_tokens=answer.usage.completion_tokens
        ),
        prompt_version=answer.prompt_version,
        model=answer.model,
        request_id=request_id(request) or "",
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
