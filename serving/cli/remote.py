"""The RAG commands run through the ``opsloop serve`` that holds the embedded store.

A Qdrant Edge store is open in one process at a time, and a running server holds it. Rather
than fail, ``opsloop ingest`` and ``opsloop query`` then send their work to that server over
its public HTTP API, authenticated with the token the server left in the store's lock file
(``rag.service.store_holder``; see ``serving.deps`` for what the token may do):

* ingest: the files under the folder are uploaded together (``POST /collections/{name}/documents``
  with several files), so the server audits the run as one ``rag.ingest`` naming them and keeps
  them all as the collection's ``last_ingest``, as a local run does. Only a folder whose files
  exceed ``max_body_bytes`` (or the server's 1000 parts per form) goes in several uploads, each
  audited and recorded on its own. With ``--delete-missing``, the collection's documents
  (``GET /collections/{name}``) that are no longer files are deleted one by one (``rag.delete``).
  The server answers each upload with the same summary a local run makes, so the CLI prints
  one report either way.
* query: one ``POST /query``, whose JSON is what ``--format json`` prints locally too.
* eval run: one ``POST /admin/evals/runs?wait=false`` with the options and the items the CLI
  parsed; the server starts the run on its own loop and answers with its task, which the CLI
  polls (``GET /admin/evals/tasks/{id}``) for the samples done, into the progress bar a local
  run shows, until the task holds what a local run prints. The wait is the caller's
  ``--timeout`` (runs take long).

Every name put into a URL path (collection, source, job) goes through :func:`_segment`, which
percent-encodes it as one segment, ``/`` included: httpx collapses ``..`` segments, so a stored
source such as ``../../other/documents/victim.md`` sent as is would address another collection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from opsloop.errors import (
    BackendError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    OpsloopError,
    PayloadTooLargeError,
    UnauthorizedError,
)
from rag.ingest import IngestProgress, IngestReport, ProgressCallback, Status
from rag.loaders import Skipped, folder_files
from rag.service import check_source_name, store_holder
from serving.deps import LOCAL_ACTOR_HEADER, LOCAL_TENANT_HEADER

if TYPE_CHECKING:
    from evals.schedule import JobStatus
    from serving.routers.evals import EvalRunPublic, EvalTaskPublic
    from serving.routers.rag import QueryResponse

__all__ = ["ServerRag"]

_ERRORS: dict[int, type[OpsloopError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidInputError,
}


_MAX_FORM_FILES = 1000  # Starlette's default limit of files in one multipart form
_PART_OVERHEAD = 512  # bytes of multipart headers a file adds besides its name and content


def _batches(files: list[tuple[str, Path]], max_body_bytes: int) -> Iterator[list[tuple[str, Path]]]:
    """``files`` in order, cut into uploads whose bodies stay under ``max_body_bytes``.

    A file too big on its own goes alone: the server answers it with a 413, reported as skipped.
    """
    batch: list[tuple[str, Path]] = []
    size = 0
    for source, path in files:
        part = path.stat().st_size + len(source.encode("utf-8")) + _PART_OVERHEAD
        if batch and (size + part > max_body_bytes or len(batch) == _MAX_FORM_FILES):
            yield batch
            batch, size = [], 0
        batch.append((source, path))
        size += part
    if batch:
        yield batch


def _segment(name: str) -> str:
    """``name`` as one URL path segment: every reserved character encoded, ``/`` and ``%`` too.

    A source ``..`` (or ``.``) alone is still a dot segment after quoting, so its dots are
    encoded too; the server decodes the path before routing and sees the name as it was stored.
    """
    quoted = quote(name, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


class ServerRag:
    """A client of the server that holds this home's store, acting for one tenant.

    Args:
        url: The server's base URL.
        token: The server's local token.
        tenant: The tenant the commands act for.
        actor: How the server's audit log names the caller (``cli:<user>``).
        transport: Optional httpx transport (tests).
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        tenant: str,
        actor: str,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}", LOCAL_TENANT_HEADER: tenant, LOCAL_ACTOR_HEADER: actor}
        # Generous: an upload embeds its chunks before it answers, and a first query loads models.
        self.http = httpx.Client(base_url=url, headers=headers, timeout=600, transport=transport)
        self.url = url

    @classmethod
    def find(cls, home: Path, *, tenant: str, actor: str) -> ServerRag | None:
        """The server holding ``home``'s embedded store, or None when no server holds it."""
        holder = store_holder(home)
        if not holder or not holder.get("url") or not holder.get("token"):
            return None
        return cls(str(holder["url"]), str(holder["token"]), tenant=tenant, actor=actor)

    def __enter__(self) -> ServerRag:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.http.close()

    def ingest(
        self,
        collection: str,
        root: Path,
        *,
        delete_missing: bool = False,
        chunk_tokens: int | None = None,
        overlap_tokens: int | None = None,
        progress: ProgressCallback | None = None,
        max_body_bytes: int = 10 * 1024 * 1024,
    ) -> tuple[IngestReport, float]:
        """Upload every file under ``root``; returns the merged report and the seconds it took.

        ``max_body_bytes``: the server's limit on a request body; the files go in as few uploads
        as fit under it. A file the server refuses is reported as skipped, as a local run does.

        Raises:
            InvalidInputError: ``root`` is not a folder.
            OpsloopError: The server refused a request (the server's error, same class).
        """
        if not root.is_dir():
            raise InvalidInputError(f"{root} is not a folder", field="root", value=str(root))
        files = folder_files(root)
        params = {
            k: v
            for k, v in (("chunk_tokens", chunk_tokens), ("overlap_tokens", overlap_tokens))
            if v is not None
        }
        started = time.perf_counter()
        report = IngestReport()
        sources = []
        sendable: list[tuple[str, Path]] = []
        for path in files:
            source = path.relative_to(root).as_posix()
            sources.append(source)
            try:
                sendable.append((check_source_name(source), path))
            except InvalidInputError as exc:  # the server would refuse the whole upload for it
                report += IngestReport(skipped=[Skipped(source, exc.message)])
        done = len(report.skipped)
        for batch in _batches(sendable, max_body_bytes):
            batch_report = self._upload(collection, batch, params)
            report += batch_report
            if progress is not None:
                statuses: tuple[Status, ...] = ("added", "replaced", "unchanged")
                for source, _ in batch:
                    done += 1
                    status: Status = next(
                        (s for s in statuses if source in getattr(batch_report, s)), "skipped"
                    )
                    progress(IngestProgress(source, status, 0, done, len(files)))
        if delete_missing:
            present = set(sources)
            stored = self._call("GET", f"/collections/{_segment(collection)}")["documents"]
            for document in stored:
                source = document["source"]
                if source not in present:
                    where = f"/collections/{_segment(collection)}/documents/{_segment(source)}"
                    deleted = self._call("DELETE", where)
                    report += IngestReport(deleted=[source], chunks_deleted=deleted["chunks_deleted"])
        return report, time.perf_counter() - started

    def _upload(self, collection: str, batch: list[tuple[str, Path]], params: dict[str, int]) -> IngestReport:
        """One upload of ``batch``; a refused batch of several files is halved until each part passes.

        A 413, or a 422 about the files without per-file reasons, belongs to some file of the
        batch: halving finds it in log2(len(batch)) rounds, and the others still go in. A lone
        refused file is skipped.
        """
        try:
            summary = self._call(
                "POST",
                f"/collections/{_segment(collection)}/documents",
                params=params,
                files=[("files", (source, path.read_bytes())) for source, path in batch],
            )
        except (InvalidInputError, PayloadTooLargeError) as exc:
            if exc.details.get("skipped"):  # no file of the batch could be loaded: each says why
                return IngestReport.from_dict({"skipped": exc.details["skipped"]})
            if isinstance(exc, InvalidInputError) and exc.details.get("field") != "files":
                raise  # about the collection or the chunk settings: no file would pass
            if len(batch) == 1:
                return IngestReport(skipped=[Skipped(batch[0][0], exc.message)])
            half = len(batch) // 2
            return self._upload(collection, batch[:half], params) + self._upload(
                collection, batch[half:], params
            )
        return IngestReport.from_dict(summary)

    def optimize(self, collection: str) -> float:
        """``POST /collections/{name}/optimize``: the seconds the index took."""
        return float(self._call("POST", f"/collections/{_segment(collection)}/optimize")["seconds"])

    def trigger_eval(self, job: str) -> JobStatus:
        """``POST /admin/evals/jobs/{name}/trigger``: the job's status once its run finished."""
        from pydantic import TypeAdapter

        from evals.schedule import JobStatus

        answer = self._call("POST", f"/admin/evals/jobs/{_segment(job)}/trigger")
        return TypeAdapter(JobStatus).validate_python(answer)

    def run_eval(
        self,
        body: dict[str, Any],
        *,
        timeout: float,
        progress: Callable[[EvalTaskPublic], None] | None = None,
        poll_seconds: float = 0.5,
    ) -> EvalRunPublic:
        """Start the run in the server and poll its task until it ends, up to ``timeout`` seconds.

        ``progress`` is called with the task after each poll (the first right after the start).
        The answer is the type a local run's report is made into too.

        Raises:
            BackendError: The server does not answer, or the run did not end within ``timeout``
                (the server goes on with it; it is tracked and resumable like any other).
            OpsloopError: The server refused the run, or the run failed (the server's error,
                same class).
        """
        from serving.routers.evals import EvalTaskPublic

        deadline = time.monotonic() + timeout
        answer = self._call("POST", "/admin/evals/runs", params={"wait": "false"}, json=body)
        task = EvalTaskPublic.model_validate(answer)
        while True:
            if progress is not None:
                progress(task)
            if task.state != "running":
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackendError(
                    f"the opsloop server at {self.url} did not finish the eval in {timeout:.0f} s "
                    f"(raise --timeout); the server goes on with it (task {task.id}): see opsloop eval list",
                    timeout_s=timeout,
                    task=task.id,
                )
            time.sleep(min(poll_seconds, left))
            task = EvalTaskPublic.model_validate(self._call("GET", f"/admin/evals/tasks/{_segment(task.id)}"))
        if task.error is not None:
            raise _ERRORS.get(task.error.status, BackendError)(task.error.message, **task.error.details)
        if task.result is None:  # pragma: no cover - the server sets one of them when a task ends
            raise BackendError(f"eval task {task.id} ended {task.state} without a result", task=task.id)
        return task.result

    def query(self, collection: str, question: str, top_k: int | None, *, generate: bool) -> QueryResponse:
        """``POST /query``'s answer, as the type a local query gives too."""
        from serving.routers.rag import QueryResponse

        body = {"question": question, "collection": collection, "top_k": top_k, "generate": generate}
        return QueryResponse.model_validate(self._call("POST", "/query", json=body))

    def chat(self, message: str, thread_id: str | None, *, dry_run: bool = False) -> dict[str, Any]:
        """``POST /chat``'s answer."""
        return self._call(
            "POST", "/chat", json={"message": message, "thread_id": thread_id, "dry_run": dry_run}
        )

    def approve(self, thread_id: str, approve: bool, comment: str | None) -> dict[str, Any]:
        """``POST /chat/{thread_id}/approve``'s answer."""
        body = {"approve": approve, "comment": comment}
        return self._call("POST", f"/chat/{_segment(thread_id)}/approve", json=body)

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise BackendError(
                f"the opsloop server at {self.url}, which holds the vector store, does not answer: {exc}"
            ) from exc
        body: dict[str, Any] = response.json() if response.content else {}
        if response.is_success:
            return body
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or f"HTTP {response.status_code} from {self.url}{path}"
        raise _ERRORS.get(response.status_code, BackendError)(message, **(error.get("details") or {}))
