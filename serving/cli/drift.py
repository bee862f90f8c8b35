"""``opsloop drift``: compare a current data set with a reference one, feature by feature.

The workflows hand back plain reports; the terminal tables they are shown as are drawn here.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opsloop.errors import InvalidInputError, NotFoundError, OpsloopError
from serving.cli.common import err, fail, out, when

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from workflows.concept_drift import ConceptDriftReport
    from workflows.drift_report import DriftReport

app = typer.Typer(help="Detect data drift between a reference and a current data set.", no_args_is_help=True)

DRIFT_EXIT_CODE = 3
_READERS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}

# Options that every drift command takes.
FormatOption = Annotated[
    Literal["table", "json", "html"],
    typer.Option("--format", "-f", help="table (terminal), json, or html (one self-contained page)."),
]
OutputOption = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write the report here instead of stdout.")
]
FailOnDriftOption = Annotated[
    bool, typer.Option("--fail-on-drift", help=f"Exit with code {DRIFT_EXIT_CODE} on dataset drift.")
]
MinRowsOption = Annotated[
    int | None,
    typer.Option(
        "--min-rows",
        min=1,
        help="Fewest rows (and values per feature) each side needs for a verdict "
        "(default: the drift_min_rows setting, 300); below it: insufficient data.",
    ),
]


def read_frame(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file, chosen by its extension.

    Raises:
        NotFoundError: ``path`` is not a file.
        InvalidInputError: The extension is unsupported, pyarrow is missing for Parquet, or the
            file cannot be parsed.
    """
    import pandas as pd

    if not path.is_file():
        raise NotFoundError(f"no such file: {path}", field="path", path=str(path))
    fmt = _READERS.get(path.suffix.lower())
    if fmt is None:
        raise InvalidInputError(
            f"unsupported file type {path.suffix or '(none)'!r} of {path}: use .csv or .parquet",
            field="path",
            path=str(path),
        )
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise InvalidInputError(
            f"reading {path} needs pyarrow: pip install pyarrow", field="path", path=str(path)
        )
    try:
        return pd.read_csv(path) if fmt == "csv" else pd.read_parquet(path)
    except (ValueError, OSError) as exc:  # pandas' parser errors are ValueErrors
        raise InvalidInputError(f"cannot read {path}: {exc}", field="path", path=str(path)) from exc


@app.command("compare")
def drift_compare(
    ctx: typer.Context,
    reference: Annotated[Path, typer.Argument(help="Reference data (e.g. training set): .csv or .parquet.")],
    current: Annotated[Path, typer.Argument(help="Current data to check, with the same columns.")],
    format_: FormatOption = "table",
    output: OutputOption = None,
    categorical: Annotated[
        list[str] | None,
        typer.Option(
            "--categorical", help="Treat this column as categorical (repeatable); text columns always are."
        ),
    ] = None,
    column: Annotated[
        list[str] | None, typer.Option("--column", help="Compare only this column (repeatable).")
    ] = None,
    bins: Annotated[int, typer.Option(min=2, help="Quantile bins for numeric features.")] = 10,
    psi_threshold: Annotated[
        float | None, typer.Option(help="PSI above this is a material change (default 0.2).")
    ] = None,
    ks_pvalue: Annotated[
        float | None, typer.Option(help="Significance level of the numeric tests (default 0.05).")
    ] = None,
    chi2_pvalue: Annotated[
        float | None, typer.Option(help="Significance level of the categorical test (default 0.05).")
    ] = None,
    wasserstein_threshold: Annotated[
        float | None,
        typer.Option(help="Wasserstein distance, in reference std, that is material (default 0.1)."),
    ] = None,
    js_threshold: Annotated[
        float | None, typer.Option(help="Jensen-Shannon distance that is material (default 0.1).")
    ] = None,
    dataset_share: Annotated[
        float | None,
        typer.Option(help="Share of drifted features at which the dataset drifts (default 0.5)."),
    ] = None,
    min_rows: MinRowsOption = None,
    fail_on_drift: FailOnDriftOption = False,
) -> None:
    """Compare CURRENT with REFERENCE and report drift per feature and for the whole dataset.

    A numeric feature drifts when its change is significant (KS or binned chi-square test)
    and material (PSI or normalised Wasserstein distance above threshold).
    A categorical feature drifts when its chi-square test is significant and PSI or JS is above threshold.
    With fewer than --min-rows rows on either side there is no verdict (insufficient data).
    Exits 0 whether or not there is drift, unless --fail-on-drift is given (then 3 on dataset drift).
    """
    from workflows.drift import compare_frames, thresholds_from

    if min_rows is None:
        min_rows = ctx.obj.settings().drift_min_rows
    try:
        thresholds = thresholds_from(
            {
                "psi": psi_threshold,
                "ks_pvalue": ks_pvalue,
                "chi2_pvalue": chi2_pvalue,
                "wasserstein": wasserstein_threshold,
                "js": js_threshold,
                "dataset_share": dataset_share,
                "min_rows": min_rows,
            }
        )
        ref_frame, cur_frame = read_frame(reference), read_frame(current)
        report = compare_frames(
            ref_frame, cur_frame, categorical=categorical, thresholds=thresholds, columns=column, bins=bins
        )
    except OpsloopError as exc:
        raise fail(exc) from exc
    _emit(report, format_, output, fail_on_drift)


@app.command("report")
def drift_report(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name.")],
    last: Annotated[
        int, typer.Option(min=1, help="Compare at most this many of the newest instances.")
    ] = 1000,
    window: Annotated[
        str | None, typer.Option(help="Only instances logged in this window, e.g. 30m, 1h, 7d.")
    ] = None,
    version: Annotated[
        int | None, typer.Option(min=1, help="Whose reference to use (default: the champion).")
    ] = None,
    format_: FormatOption = "table",
    output: OutputOption = None,
    min_rows: MinRowsOption = None,
    fail_on_drift: FailOnDriftOption = False,
) -> None:
    """Compare a served model's logged inputs with the reference sample its version was trained on.

    With fewer than --min-rows logged instances there is no verdict (insufficient data), as in
    the scheduled checks.
    """
    from workflows.drift_monitor import live_report, window_start

    platform, registry = ctx.obj.registry()
    try:
        report = live_report(
            registry,
            platform.predictions,
            model,
            version=version,
            last=last,
            since=window_start(window),
            min_rows=min_rows if min_rows is not None else platform.settings.drift_min_rows,
        )
    except OpsloopError as exc:
        raise fail(exc) from exc
    _emit(report, format_, output, fail_on_drift)


@app.command("concept")
def drift_concept(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name.")],
    version: Annotated[
        int | None, typer.Option(min=1, help="Whose predictions to score (default: the champion).")
    ] = None,
    window: Annotated[
        str | None, typer.Option(help="Only predictions made in this window, e.g. 1h, 7d.")
    ] = None,
    delta: Annotated[
        float, typer.Option(min=0, max=1, help="ADWIN's confidence: smaller finds fewer, surer changes.")
    ] = 0.002,
    format_: Annotated[Literal["table", "json"], typer.Option("--format", "-f")] = "table",
    fail_on_drift: FailOnDriftOption = False,
) -> None:
    """Find where a model version's error rate changed, from the labels sent to /feedback.

    Each labelled instance is one error (1 for a wrong class, the absolute error for a
    number), in the order the predictions were made; ADWIN cuts that stream where the mean
    error changed. With --fail-on-drift, exits 3 when the error rate rose.
    """
    from workflows.concept_drift import concept_report
    from workflows.drift_monitor import window_start

    platform, registry = ctx.obj.registry()
    try:
        chosen = version or registry.get_alias(model, "champion").version
        since = window_start(window)
    except OpsloopError as exc:
        raise fail(exc) from exc
    try:
        report = concept_report(platform.predictions, model, chosen, since=since, delta=delta)
    except NotFoundError as exc:  # no labels yet: say how to send some instead of an empty table
        body = '{"feedback": [{"request_id": ..., "labels": [...]}]}'
        err.print(
            f"[yellow]nothing to score:[/] {escape(exc.message)}\n"
            f"POST /feedback/{escape(model)} with {escape(body)} for earlier /predict requests, "
            "then run this again.",
            highlight=False,
        )
        raise typer.Exit(code=1) from exc
    except OpsloopError as exc:
        raise fail(exc) from exc
    if format_ == "json":
        print(report.to_json())
    elif report.change_points:
        out.print(concept_table(report))
    else:  # an empty table would look like a failure
        out.print(
            f"no change in the error rate of {model} version {chosen} over {report.instances} "
            "labelled instances",
            highlight=False,
        )
    err.print(f"[{'red' if report.drifted else 'green'}]{report.verdict()}[/]", highlight=False)
    if fail_on_drift and report.drifted:
        raise typer.Exit(code=DRIFT_EXIT_CODE)


@app.command("queries")
def drift_queries(
    reference: Annotated[
        Path, typer.Argument(help="Reference queries: .txt (one per line), .jsonl, .csv or .parquet.")
    ],
    current: Annotated[Path, typer.Argument(help="Current queries, in any of the same formats.")],
    alpha: Annotated[float, typer.Option(min=0, max=1, help="Significance level of the verdict.")] = 0.05,
    permutations: Annotated[int, typer.Option(min=20, help="Permutations of the embedding test.")] = 200,
    model: Annotated[
        Path | None,
        typer.Option(help="A sentence-transformers model directory (default: the packaged MiniLM)."),
    ] = None,
    format_: Annotated[Literal["table", "json"], typer.Option("--format", "-f")] = "table",
    fail_on_drift: FailOnDriftOption = False,
) -> None:
    """Compare two sets of RAG queries: their embeddings, and their retrieval scores when given.

    .jsonl, .csv and .parquet files hold a `query` column and, optionally, a `score` column
    (e.g. each query's top-1 retrieval similarity). Queries are embedded with the same model
    the RAG pipeline uses; a kernel two-sample permutation test decides whether they moved.
    """
    from rag.embedder import SentenceTransformerEmbedder
    from workflows.query_drift import QueryDriftThresholds, query_drift

    try:
        ref_queries, ref_scores = read_queries(reference)
        cur_queries, cur_scores = read_queries(current)
        if (ref_scores is None) != (cur_scores is None):
            raise InvalidInputError("give a score column in both files or in neither", field="score")
        embedder = SentenceTransformerEmbedder(model)
        with err.status(f"embedding {len(ref_queries) + len(cur_queries)} queries"):
            ref_vectors, cur_vectors = embedder.embed(ref_queries), embedder.embed(cur_queries)
        report = query_drift(
            ref_vectors,
            cur_vectors,
            ref_scores,
            cur_scores,
            QueryDriftThresholds(alpha=alpha),
            permutations=permutations,
        )
    except OpsloopError as exc:
        raise fail(exc) from exc
    if format_ == "json":
        print(json.dumps(report.to_dict(), indent=2))
    else:
        out.print(_query_table(report.to_dict()))
    verdict = "query drift" if report.drifted else "no query drift"
    err.print(f"[{'red' if report.drifted else 'green'}]{verdict}[/]", highlight=False)
    if fail_on_drift and report.drifted:
        raise typer.Exit(code=DRIFT_EXIT_CODE)


def read_queries(path: Path) -> tuple[list[str], np.ndarray | None]:
    """Queries, and their scores when the file has a ``score`` column.

    Raises:
        NotFoundError: No such file.
        InvalidInputError: Unreadable, no ``query`` column, or an empty or non-numeric score.
    """
    import numpy as np
    import pandas as pd

    if not path.is_file():
        raise NotFoundError(f"no such file: {path}", field="path", path=str(path))
    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()], None
    try:
        frame = pd.read_json(path, lines=True) if path.suffix.lower() == ".jsonl" else read_frame(path)
    except ValueError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}", field="path", path=str(path)) from exc
    if "query" not in frame.columns:
        raise InvalidInputError(f"{path} has no 'query' column", field="query", path=str(path))
    queries = [str(q) for q in frame["query"]]
    if "score" not in frame.columns:
        return queries, None
    scores = pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise InvalidInputError(f"{path}: score of row {row} is not a number", field="score", row=row)
    return queries, scores


def _query_table(report: dict[str, Any]) -> Table:
    table = Table(title="Query drift")
    for column in ("test", "drifted", "p-value", "distance", "reference", "current"):
        table.add_column(column)

    def row(test: str, result: dict[str, Any], pvalue: float, distance: str) -> None:
        verdict = "[red]yes[/]" if result["drifted"] else "[green]no[/]"
        counts = str(result["reference_count"]), str(result["current_count"])
        table.add_row(test, verdict, f"{pvalue:.4f}", distance, *counts)

    embedding, scores = report["embedding"], report["scores"]
    cosine = f"cosine {embedding['cosine_distance']:.3f}"
    row("embeddings (kernel MMD)", embedding, embedding["pvalue"], cosine)
    if scores is not None:
        means = f"mean {scores['reference_mean']:.3f} -> {scores['current_mean']:.3f}"
        row("retrieval scores (KS)", scores, scores["ks_pvalue"], means)
    return table


@app.command("history")
def drift_history(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name.")],
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many checks.")] = 20,
    json_: Annotated[bool, typer.Option("--json", help="One JSON object per line, full reports.")] = False,
) -> None:
    """The scheduled drift checks of a model that `opsloop serve` ran, newest first."""
    platform = ctx.obj.platform()
    checks = platform.drift.history(model, limit=limit)
    if json_:
        for check in checks:
            print(json.dumps({**check.__dict__, "at": check.at.isoformat()}))
        return
    table = Table(title=f"Drift checks of {model}")
    for column in ("time (UTC)", "version", "dataset drift", "share drifted", "drifted features"):
        table.add_column(column)
    for check in checks:
        drifted = [name for name, f in check.report["features"].items() if f["drifted"]]
        too_few = check.report.get("status") == "insufficient_data"  # absent from older checks
        table.add_row(
            when(check.at),
            str(check.version),
            "[yellow]too few rows[/]"
            if too_few
            else "[red]yes[/]"
            if check.dataset_drift
            else "[green]no[/]",
            f"{check.share_drifted:.0%}",
            ", ".join(drifted),
        )
    out.print(table)
    if not checks:
        err.print(f"no drift checks of {model!r} yet: `opsloop serve` runs them on a schedule")


def _emit(report: DriftReport, format_: str, output: Path | None, fail_on_drift: bool) -> None:
    """Print or write the report, say the verdict, and exit 3 on drift if asked to."""
    if format_ == "table" and output is None:
        out.print(drift_table(report))
    else:
        if format_ == "json":
            text = report.to_json()
        elif format_ == "html":
            text = report.to_html()
        else:
            text = _plain(report)
        if output is None:
            print(text)
        else:
            try:
                output.write_text(text, encoding="utf-8")
            except OSError as exc:
                raise fail(InvalidInputError(f"cannot write {output}: {exc}", field="output")) from exc
            err.print(f"wrote the {format_} report to {output}")
    colour = {"drift": "red", "no_drift": "green", "insufficient_data": "yellow"}[report.status]
    err.print(f"[{colour}]{report.verdict()}[/]", highlight=False)
    if fail_on_drift and report.dataset_drift:
        raise typer.Exit(code=DRIFT_EXIT_CODE)


def _plain(report: DriftReport) -> str:
    console = Console(file=io.StringIO(), width=120, no_color=True)
    console.print(drift_table(report))
    return console.file.getvalue()  # type: ignore[attr-defined]


def drift_table(report: DriftReport) -> Table:
    """A report as a terminal table: one row of scores and the verdict per feature."""
    from workflows.drift_report import format_score

    table = Table(
        title=report.verdict(), title_justify="left", caption=report.sizes(), caption_justify="left"
    )
    table.add_column("feature", overflow="fold")
    table.add_column("kind")
    for column in ("PSI", "KS p", "Wass.", "JS", "chi2 p"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    for f in report.features.values():
        scores = (f.psi, f.ks_pvalue, f.wasserstein, f.js, f.chi2_pvalue)
        verdict = "[bold red]DRIFT[/]" if f.drifted else "[green]ok[/]"
        if f.insufficient_data:  # the counts say why: e.g. a categorical column mostly missing
            verdict = f"[yellow]too few ({f.reference_count}/{f.current_count})[/]"
        kind = "num" if f.kind == "numeric" else "cat"
        table.add_row(f.name, kind, *(format_score(score) for score in scores), verdict)
    return table


def concept_table(report: ConceptDriftReport) -> Table:
    """A concept-drift report's change points as a terminal table."""
    table = Table(
        title=f"Concept drift of {report.model} version {report.version} (ADWIN, delta={report.delta})"
    )
    for column in ("instance", "detected at", "time", "error before", "error after", "change"):
        table.add_column(column)
    for p in report.change_points:
        table.add_row(
            str(p.index),
            str(p.detected_at),
            p.at.isoformat(timespec="seconds") if p.at else "",
            f"{p.error_before:.3f}",
            f"{p.error_after:.3f}",
            "[red]worse[/]" if p.worse else "[green]better[/]",
        )
    return table
