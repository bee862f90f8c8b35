"""RAG: ``POST /query`` answers from a tenant's collection; ``/collections`` lists and fills them.

Collections belong to the key's tenant: another tenant's name is simply not there (404).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StringConstraints

from rag.answer import MAX_QUESTION_CHARS, PRODUCTION, AnswerMode
from rag.service import COLLECTION_PATTERN, CollectionView, QueryResult
from serving.deps import VARIANT_HEADER, OperatorKey, RagDep, Unit, UserKey, ViewerKey, request_id

router = APIRouter(tags=["rag"])

CollectionName = Annotated[str, StringConstraints(pattern=f"^{COLLECTION_PATTERN}$")]
CollectionPath = Annotated[str, Path(pattern=f"^{COLLECTION_PATTERN}$")]
ChunkTokens = Annotated[
    int | None,
    Query(ge=16, le=256, description="New chunk size of the collection, in tokens (re-chunks every file)."),
]
OverlapTokens = Annotated[
    int | None, Query(ge=0, le=255, description="New overlap of the collection's chunks, in tokens.")
]


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
    answer_mode: AnswerMode = Field(
        description="generated: the LLM's answer; extractive: the sources' sentences closest to the "
        "question, because the LLM's answer cited no source or repeated itself; no_sources: nothing was "
        "retrieved (the fixed don't-know answer, no LLM call); retrieval_only: generate=false."
    )
    answer_note: str | None = Field(
        default=None, description="Why the answer is not the LLM's own (null when it is)."
    )
    sources: list[SourcePublic]
    citations: list[int]
    usage: UsagePublic
    prompt_version: str | int | None
    variant: str | None = Field(
        description="Which prompt answered: production, or champion/challenger while a prompt "
        "experiment runs (also in the X-Opsloop-Variant header); null for generate=false."
    )
    model: str | None
    request_id: str
    latency_ms: float = Field(description="The whole query: retrieval, prompt and generation.")
    timings: TimingsPublic


class SkippedPublic(BaseModel):
    """A file that was not ingested, and why."""

    source: str
    reason: str


class IngestSummary(BaseModel):
    """What an ingestion did, by file (the same summary ``opsloop ingest`` prints)."""

    collection: str
    added: list[str]
    replaced: list[str] = Field(description="Files whose content changed (or whose last run was cut short).")
    unchanged: list[str]
    deleted: list[str]
    skipped: list[SkippedPublic]
    chunks_written: int
    chunks_deleted: int
    seconds: float
    chunk_tokens: int
    overlap_tokens: int


class DocumentPublic(BaseModel):
    """One stored document."""

    source: str
    title: str
    chunks: int
    sha256: str = Field(description="SHA-256 of the file's bytes when it was ingested.")


class _CollectionBase(BaseModel):
    name: str
    chunks: int
    chunk_tokens: int
    overlap_tokens: int
    last_ingest_at: str | None
    last_ingest: IngestSummary | None


class CollectionPublic(_CollectionBase):
    """A collection of the caller's tenant, with its number of documents."""

    documents: int


class CollectionDetail(_CollectionBase):
    """A collection with its documents."""

    documents: list[DocumentPublic]


class CollectionList(BaseModel):
    """The caller's tenant's collections, by name."""

    collections: list[CollectionPublic]


class DeletedPublic(BaseModel):
    """What deleting a document removed."""

    collection: str
    source: str
    chunks_deleted: int


def query_response(result: QueryResult) -> QueryResponse:
    """The public form of a query's result (the API's response and ``opsloop query --format json``)."""
    answer = result.answer
    return QueryResponse(
        answer=None if answer is None else answer.answer,
        answer_mode=result.answer_mode,
        answer_note=None if answer is None else answer.note,
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
        variant=None if answer is None else result.variant or PRODUCTION,
        model=None if answer is None else answer.model,
        request_id=result.request_id,
        latency_ms=result.latency_ms,
        timings=TimingsPublic(
            retrieval_ms=result.retrieval_ms, prompt_ms=result.prompt_ms, generation_ms=result.generation_ms
        ),
    )


def _collection_fields(view: CollectionView) -> dict[str, Any]:
    fields = ("name", "chunks", "chunk_tokens", "overlap_tokens", "last_ingest_at", "last_ingest")
    return {name: getattr(view, name) for name in fields}


class AnswerScore(BaseModel):
    """How good one earlier answer was."""

    request_id: str = Field(max_length=64, description="The request_id of the /query response.")
    score: float = Field(ge=0, le=1, allow_inf_nan=False, description="0: useless or wrong; 1: right.")


class AnswerFeedbackRequest(BaseModel):
    """Scores for earlier answers (what a prompt experiment decides on)."""

    feedback: list[AnswerScore] = Field(min_length=1, max_length=10_000)


class AnswerFeedbackResponse(BaseModel):
    """Which request ids took their score; ids the tenant never asked are reported, not dropped."""

    attached: list[str]
    unknown: list[str]


@router.post("/feedback/query", summary="Score earlier answers of /query")
async def answer_feedback(
    body: AnswerFeedbackRequest, rag: RagDep, principal: UserKey
) -> AnswerFeedbackResponse:
    """Scores go to the caller's tenant's queries by request id; a later score replaces an earlier one."""
    scores = {item.request_id: item.score for item in body.feedback}
    attached, unknown = await run_in_threadpool(lambda: rag.feedback(principal, scores))
    return AnswerFeedbackResponse(attached=attached, unknown=unknown)


@router.post("/query", summary="Answer a question from a collection, citing its sources")
async def query(
    body: QueryRequest,
    rag: RagDep,
    principal: UserKey,
    request: Request,
    response: Response,
    unit: Unit = None,
) -> QueryResponse:
    """Retrieve from the caller's tenant's ``collection`` and answer with the ``production`` prompt.

    While a prompt experiment runs, the unit's variant of the prompt answers instead.
    """
    result = await rag.query(
        principal,
        body.question,
        body.collection,
        body.top_k,
        generate=body.generate,
        request_id=request_id(request),
        unit=unit,
    )
    public = query_response(result)
    if public.variant is not None:
        response.headers[VARIANT_HEADER] = public.variant
    return public


@router.post("/collections/{name}/documents", summary="Add or replace documents in a collection")
async def upload(
    name: CollectionPath,
    files: Annotated[list[UploadFile], File(description="One or more .md, .txt, .html or .pdf files.")],
    rag: RagDep,
    principal: OperatorKey,
    request: Request,
    chunk_tokens: ChunkTokens = None,
    overlap_tokens: OverlapTokens = None,
) -> IngestSummary:
    """Each file's name (with its suffix, e.g. ``guide/setup.md``) is its source and picks its loader.

    The same bytes again change nothing; new bytes under a source replace its chunks. Files that
    cannot be loaded are listed in ``skipped``; when none can, the answer is a 422 listing why.
    A name that is absolute or holds ``..``/``.`` or empty segments, backslashes or control
    characters, or is too long, refuses the whole upload with a 422 naming the rule and the name.
    """
    uploads = [(f.filename or "", await f.read()) for f in files]
    run = await rag.in_background(
        lambda: rag.upload(
            principal,
            name,
            uploads,
            chunk_tokens=chunk_tokens,
            overlap_tokens=overlap_tokens,
            request_id=request_id(request),
        )
    )
    return IngestSummary.model_validate(run.summary())


@router.delete(
    "/collections/{name}/documents/{source:path}", summary="Delete a document's chunks from a collection"
)
async def delete_document(
    name: CollectionPath, source: str, rag: RagDep, principal: OperatorKey, request: Request
) -> DeletedPublic:
    """Remove every chunk of ``source``; 404 when the collection has no such document.

    Send ``source`` percent-encoded as one segment (``/`` as ``%2F``, ``%`` as ``%25``), or a
    client library may collapse its dots or cut it at a ``?`` or ``#``.
    """
    deleted = await rag.in_background(
        lambda: rag.delete_document(principal, name, source, request_id=request_id(request))
    )
    return DeletedPublic(collection=name, source=source, chunks_deleted=deleted)


class OptimizedPublic(BaseModel):
    """What building a collection's search index took."""

    collection: str
    seconds: float


@router.post("/collections/{name}/optimize", summary="Build a collection's search index now")
async def optimize_collection(
    name: CollectionPath, rag: RagDep, principal: OperatorKey, request: Request
) -> OptimizedPublic:
    """After a bulk ingest: the embedded store indexes only when asked (queries of it wait meanwhile)."""
    seconds = await run_in_threadpool(lambda: rag.optimize(principal, name, request_id=request_id(request)))
    return OptimizedPublic(collection=name, seconds=seconds)


@router.get("/collections", summary="The caller's tenant's collections")
async def list_collections(rag: RagDep, principal: ViewerKey) -> CollectionList:
    """Every collection of the key's tenant, with document and chunk counts and the last ingestion."""
    views = await run_in_threadpool(lambda: rag.collections(principal))
    return CollectionList(
        collections=[CollectionPublic(**_collection_fields(v), documents=len(v.documents)) for v in views]
    )


@router.get("/collections/{name}", summary="One collection and its documents")
async def get_collection(name: CollectionPath, rag: RagDep, principal: ViewerKey) -> CollectionDetail:
    """The collection's documents, chunk count, chunk settings and last ingestion."""
    view = await run_in_threadpool(lambda: rag.collection(principal, name))
    return CollectionDetail(
        **_collection_fields(view), documents=[DocumentPublic(**vars(d)) for d in view.documents]
    )
