"""The RAG commands run through the ``opsloop serve`` that holds the embedded store.

A Qdrant Edge store is open in one process at a time, and a running server holds it. Rather
than fail, ``opsloop ingest`` and ``opsloop query`` then send their work to that server over
its public HTTP API, authenticated with the token the server left in the store's lock file
(``rag.service.store_holder``; see ``serving.deps`` for what the token may do):

* ingest: each file under the folder is uploaded (``POST /collections/{name}/documents``),
  one per request, so the progress bar moves and no body grows past ``max_body_bytes``; with
  ``--delete-missing``, the collection's documents (``GET /collections/{name}``) that are no
  longer files are deleted one by one. The server answers each upload with the same summary
  a local run makes, so the CLI prints one report either way.
* query: one ``POST /query``, whose JSON is what ``--format json`` prints locally too.
* eval run: one ``POST /admin/evals/runs`` with the options and the items the CLI parsed; the
  server runs it on its own loop and answers when it has finished (no progress meanwhile), with
  what a local run prints. Its timeout is the caller's (runs take long), not the 600 s above.

Every name put into a URL path (collection, source, job) goes through :func:`_segment`, which
percent-encodes it as one segment, ``/`` included: httpx collapses ``..`` segments, so a stored
source such as ``../../other/documents/victim.md`` sent as is would address another collection.
"""

from __future__ import annotations

import time
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
from rag.loaders import folder_files
from rag.service import store_holder
from serving.deps import LOCAL_ACTOR_HEADER, LOCAL_TENANT_HEADER

if TYPE_CHECKING:
    from evals.schedule import JobStatus
    from serving.routers.evals import EvalRunPublic
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
    ) -> tuple[IngestReport, float]:
        """Upload every file under ``root``; returns the merged report and the seconds it took.

        Raises:
            InvalidInputError: ``root`` is not a folder.
            OpsloopError: The server refused a request (the server's error, same class).
        """
        if not root.is_dir():
            raise InvalidInputError(f"{root} is not a folder", field="root", value=str(root))
        files = folder_files(root)
        sources = [path.relative_to(root).as_posix() for path in files]
        params = {
            k: v
            for k, v in (("chunk_tokens", chunk_tokens), ("overlap_tokens", overlap_tokens))
            if v is not None
        }
        started = time.perf_counter()
        report = IngestReport()
        for done, (path, source) in enumerate(zip(files, sources, strict=True), start=1):
            try:
                summary = self._call(
                    "POST",
                    f"/collections/{_segment(collection)}/documents",
                    params=params,
                    files=[("files", (source, path.read_bytes()))],
                )
            except (InvalidInputError, PayloadTooLargeError) as exc:
                summary = {
                    "skipped": exc.details.get("skipped") or [{"source": source, "reason": exc.message}]
                }
            report += IngestReport.from_dict(summary)
            if progress is not None:
                statuses: tuple[Status, ...] = ("added", "replaced", "unchanged")
                status: Status = next((s for s in statuses if summary.get(s)), "skipped")
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

    def optimize(self, collection: str) -> float:
        """``POST /collections/{name}/optimize``: the seconds the index took."""
        return float(self._call("POST", f"/collections/{_segment(collection)}/optimize")["seconds"])

    def trigger_eval(self, job: str) -> JobStatus:
        """``POST /admin/evals/jobs/{name}/trigger``: the job's status once its run finished."""
        from pydantic import TypeAdapter

        from evals.schedule import JobStatus

        answer = self._call("POST", f"/admin/evals/jobs/{_segment(job)}/trigger")
        return TypeAdapter(JobStatus).validate_python(answer)

    def run_eval(self, body: dict[str, Any], *, timeout: float) -> EvalRunPublic:
        """``POST /admin/evals/runs``: the finished run, waiting up to ``timeout`` seconds for it.

        The answer is the type a local run's report is made into too.

        Raises:
            BackendError: The server does not answer, or not within ``timeout`` (the server
                goes on with the run; it is tracked and resumable like any other).
            OpsloopError: The server refused the run (the server's error, same class).
        """
        from serving.routers.evals import EvalRunPublic

        try:
            answer = self._call(
                "POST", "/admin/evals/runs", json=body, timeout=httpx.Timeout(timeout, connect=30)
            )
        except BackendError as exc:
            if isinstance(exc.__cause__, httpx.ReadTimeout):
                raise BackendError(
                    f"the opsloop server at {self.url} did not finish the eval in {timeout:.0f} s "
                    "(raise --timeout); the server goes on with it: see opsloop eval list",
                    timeout_s=timeout,
                ) from exc.__cause__
            raise
        return EvalRunPublic.model_validate(answer)

    def query(self, collection: str, question: str, top_k: int | None, *, generate: bool) -> QueryResponse:
        """``POST /query``'s answer, as the type a local query gives too."""
        from serving.routers.rag import QueryResponse

        body = {"question": question, "collection": collection, "top_k": top_k, "generate": generate}
        return QueryResponse.model_validate(self._call("POST", "/query", json=body))

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
