"""``opsloop ingest`` and ``opsloop query``: fill a tenant's RAG collection and ask it questions.

Both open the vector store in this process. With the embedded store (Qdrant Edge) only one
process may hold it: if an ``opsloop serve`` has already answered a RAG request, these commands
stop with an error naming the lock (see ``serving.rag_service``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from opsloop.errors import OpsloopError
from rag.chunking import context_header
from rag.ingest import IngestProgress, IngestReport
from serving.cli.common import State, err, fail, out
from serving.platform import cli_actor

__all__ = ["ingest", "query"]

CollectionOption = Annotated[str, typer.Option("--collection", help="Collection name (within the tenant).")]
TenantOption = Annotated[str, typer.Option("--tenant", help="Tenant that owns the collection.")]


def ingest(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="Folder of .md, .txt, .html and .pdf files.")],
    collection: CollectionOption,
    tenant: TenantOption = "default",
    delete_missing: Annotated[
        bool, typer.Option("--delete-missing", help="Also delete chunks of files no longer under PATH.")
    ] = False,
) -> None:
    """Bring a collection up to date with the files under PATH; unchanged files are skipped.

    Exits 1 when a file could not be loaded (it is listed with the reason) or on any error.
    """
    state: State = ctx.obj
    platform = state.platform()
    try:
        rag = platform.rag
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

            report = rag.ingest(
                tenant, collection, path, delete_missing=delete_missing, progress=advance, actor=cli_actor()
            )
    except OpsloopError as exc:
        raise fail(exc) from exc
    finally:
        platform.close()
    _print_report(report, collection)
    if report.skipped:
        raise typer.Exit(code=1)


def _print_report(report: IngestReport, collection: str) -> None:
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
    out.print(f"chunks written: {report.chunks_written}, deleted: {report.chunks_deleted}")


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
    state: State = ctx.obj
    platform = state.platform()
    try:
        result = asyncio.run(platform.rag.query(tenant, question, collection, top_k, generate=generate))
    except OpsloopError as exc:
        raise fail(exc) from exc
    finally:
        platform.close()
    answer = result.answer
    if format_ == "json":
        body = {
            "answer": None if answer is None else answer.answer,
            "sources": [
                {
                    "n": s.n,
                    "chunk_id": result.chunk_id(s),
                    "source": s.source,
                    "title": s.title,
                    "headings": list(s.headings),
                    "score": s.score,
                    "text": s.text,
                }
                for s in result.sources
            ],
            "citations": [] if answer is None else answer.citations,
            "usage": {
                "prompt_tokens": 0 if answer is None else answer.usage.prompt_tokens,
                "completion_tokens": 0 if answer is None else answer.usage.completion_tokens,
            },
            "prompt_version": None if answer is None else answer.prompt_version,
            "model": None if answer is None else answer.model,
            "request_id": result.request_id,
            "latency_ms": result.latency_ms,
            "timings": {
                "retrieval_ms": result.retrieval_ms,
                "prompt_ms": result.prompt_ms,
                "generation_ms": result.generation_ms,
            },
        }
        out.print_json(json.dumps(body))
        return
    if answer is not None:
        out.print(answer.answer, highlight=False)
        if result.sources:
            out.print()
    for s in result.sources:
        where = context_header(s.title, s.headings)
        out.print(f"[{s.n}] {s.source}" + (f"  ({where})" if where else ""), highlight=False, markup=False)
    if answer is None:
        err.print(f"retrieval only; retrieval {result.retrieval_ms:.0f} ms", highlight=False)
        return
    err.print(
        f"prompt v{answer.prompt_version}, {answer.model or 'no model call'}; "
        f"retrieval {result.retrieval_ms:.0f} ms, prompt {result.prompt_ms or 0:.0f} ms, "
        f"generation {result.generation_ms or 0:.0f} ms",
        highlight=False,
    )
