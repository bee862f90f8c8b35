"""``opsloop ingest`` and ``opsloop query``: fill a tenant's RAG collection and ask it questions.

Both work on this home's vector store in this process, unless an ``opsloop serve`` holds the
embedded store (Qdrant Edge admits one process): then they hand the work to that server
(``serving.cli.remote``) and print the same report.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from opsloop.errors import OpsloopError
from serving.cli.common import State, err, fail, out

if TYPE_CHECKING:
    from opsloop.settings import Settings
    from rag.ingest import IngestProgress, IngestReport, ProgressCallback
    from serving.cli.remote import ServerRag
    from serving.routers.rag import QueryResponse

__all__ = ["ingest", "query"]

CollectionOption = Annotated[str, typer.Option("--collection", help="Collection name (within the tenant).")]
TenantOption = Annotated[str, typer.Option("--tenant", help="Tenant that owns the collection.")]


def _server(settings: Settings, tenant: str) -> ServerRag | None:
    """The server to hand the work to, when one holds the embedded store."""
    from serving.cli.remote import ServerRag
    from serving.local import cli_actor

    if settings.vector_store != "edge":
        return None
    server = ServerRag.find(settings.home, tenant=tenant, actor=cli_actor())
    if server is not None:
        err.print(
            f"opsloop serve at {server.url} holds the vector store; working through it", highlight=False
        )
    return server


@contextlib.contextmanager
def _progress_bar() -> Iterator[ProgressCallback]:
    with Progress(
        TextColumn("[bold]ingest[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("loading", total=None)

        def advance(event: IngestProgress) -> None:
            progress.update(task, completed=event.done, total=event.total, description=event.source)

        yield advance


def ingest(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Folder of .md, .txt, .html and .pdf files.")],
    collection: CollectionOption,
    tenant: TenantOption = "default",
    delete_missing: Annotated[
        bool, typer.Option("--delete-missing", help="Also delete chunks of files no longer under PATH.")
    ] = False,
    chunk_tokens: Annotated[
        int | None,
        typer.Option(
            "--chunk-tokens", min=16, max=256, help="Set the collection's chunk size (re-chunks every file)."
        ),
    ] = None,
    overlap_tokens: Annotated[
        int | None, typer.Option("--overlap-tokens", min=0, help="Set the collection's chunk overlap.")
    ] = None,
    optimize: Annotated[
        bool,
        typer.Option(
            "--optimize", help="Then build the search index (after bulk loads; queries go on meanwhile)."
        ),
    ] = False,
) -> None:
    """Bring a collection up to date with the files under PATH; unchanged files are skipped.

    A new collection is chunked with rag_chunk_tokens / rag_overlap_tokens unless the options
    say otherwise; the collection keeps its settings for later runs and uploads.
    Exits 1 when a file could not be loaded (it is listed with the reason) or on any error.
    """
    from serving.local import cli_principal

    state: State = ctx.obj
    settings = state.settings()
    chunking: dict[str, Any] = {"chunk_tokens": chunk_tokens, "overlap_tokens": overlap_tokens}
    try:
        server = _server(settings, tenant)
        if server is not None:
            with server, _progress_bar() as advance:
                report, seconds = server.ingest(
                    collection,
                    path,
                    delete_missing=delete_missing,
                    progress=advance,
                    max_body_bytes=settings.max_body_bytes,
                    **chunking,
                )
                indexed = server.optimize(collection) if optimize else None
        else:
            platform = state.platform()
            caller = cli_principal(tenant)
            try:
                with _progress_bar() as advance:
                    run = platform.rag.ingest(
                        caller, collection, path, delete_missing=delete_missing, progress=advance, **chunking
                    )
                report, seconds = run.report, run.seconds
                indexed = platform.rag.optimize(caller, collection) if optimize else None
            finally:
                platform.close()
    except OpsloopError as exc:
        raise fail(exc) from exc
    _print_report(report, collection, seconds)
    if indexed is not None:
        out.print(f"search index built in {indexed:.1f} s", highlight=False)
    if report.skipped:
        raise typer.Exit(code=1)


def _print_report(report: IngestReport, collection: str, seconds: float) -> None:
    table = Table(title=f"ingest into {collection}")
    table.add_column("status")
    table.add_column("files", justify="right")
    table.add_column("detail")
    for status in ("added", "replaced", "unchanged", "deleted"):
        sources: list[str] = getattr(report, status)
        table.add_row(
            status, str(len(sources)), ", ".join(sources[:5]) + (" ..." if len(sources) > 5 else "")
        )
    table.add_row("skipped", str(len(report.skipped)), "")
    for item in report.skipped:
        table.add_row("", "", f"[red]{item.source}[/]: {item.reason}")
    out.print(table)
    out.print(
        f"chunks written: {report.chunks_written}, deleted: {report.chunks_deleted}; {seconds:.1f} s",
        highlight=False,
    )


def query(
    ctx: typer.Context,
    question: Annotated[str, typer.Argument(help="The question.")],
    collection: CollectionOption,
    tenant: TenantOption = "default",
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, max=50, help="Chunks to retrieve.")] = None,
    generate: Annotated[
        bool, typer.Option("--generate/--no-generate", help="--no-generate: retrieval only, no LLM call.")
    ] = True,
    format_: Annotated[
        Literal["text", "json"], typer.Option("--format", "-f", help="text (for people) or json.")
    ] = "text",
) -> None:
    """Answer QUESTION from a collection and list the numbered sources it was written from.

    The query is logged like an API query (see ``GET /admin/queries``).
    """
    from serving.local import cli_principal
    from serving.routers.rag import query_response

    state: State = ctx.obj
    settings = state.settings()
    try:
        server = _server(settings, tenant)
        if server is not None:
            with server:
                response = server.query(collection, question, top_k, generate=generate)
        else:
            platform = state.platform()
            try:
                caller = cli_principal(tenant)
                result = asyncio.run(
                    platform.rag.query(caller, question, collection, top_k, generate=generate)
                )
            finally:
                platform.close()
            response = query_response(result)
    except OpsloopError as exc:
        raise fail(exc) from exc
    if format_ == "json":
        out.print_json(data=response.model_dump(mode="json"))
        return
    _print_answer(response)


def _print_answer(response: QueryResponse) -> None:
    """The answer, its numbered sources, and where the time went, for a person."""
    from rag.chunking import context_header

    if response.answer is not None:
        out.print(response.answer, highlight=False)
        if response.sources:
            out.print()
    for s in response.sources:
        where = context_header(s.title, tuple(s.headings))
        out.print(f"[{s.n}] {s.source}" + (f"  ({where})" if where else ""), highlight=False, markup=False)
    timings = response.timings
    if response.answer is None:
        err.print(f"retrieval only; retrieval {timings.retrieval_ms:.0f} ms", highlight=False)
        return
    if response.answer_note is not None:
        err.print(f"{response.answer_mode} answer: {response.answer_note}", highlight=False)
    err.print(
        f"prompt v{response.prompt_version}, {response.model or 'no model call'}; "
        f"retrieval {timings.retrieval_ms:.0f} ms, prompt {timings.prompt_ms or 0:.0f} ms, "
        f"generation {timings.generation_ms or 0:.0f} ms",
        highlight=False,
    )
