"""The benchmark's tables, printed with rich from the report dictionary that also goes to JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from bench.rag.latency import FORMS, LABELS, PEER, SIDES
from bench.rag.quality import MODES

__all__ = ["print_report"]


def print_report(report: dict[str, Any], console: Console) -> None:
    """Every part the report holds, then the goals."""
    if "ingestion" in report:
        console.print(_ingestion(report["ingestion"], report["model_load_s"]))
    if "latency" in report:
        console.print(_latency(report["latency"]))
    if "quality" in report:
        console.print(_quality(report["quality"]))
    for goal in report["goals"].values():
        if goal["evaluated"]:
            status = "[green]MET[/green]" if goal["met"] else "[red]NOT MET[/red]"
            console.print(f"goal: {goal['statement']}: {status} ({goal['detail']})")
        else:
            console.print(f"goal: {goal['statement']}: not evaluated ({goal['reason']})")


def _ingestion(result: dict[str, Any], model_load_s: float) -> Table:
    table = Table(
        title=(
            f"Ingestion: Ingestor -> Qdrant Edge, {result['files']} generated Markdown files "
            f"({result['corpus_bytes'] / 1e6:.1f} MB), MiniLM on CPU (model load {model_load_s:.1f} s, "
            "not counted)"
        )
    )
    for column in ("chunks", "first run", "chunks/s", "embedding", "BM25", "load+chunk+store", "re-run"):
        table.add_column(column, justify="right")
    first = result["first_run_s"]
    rerun_note = (
        "wrote nothing"
        if result["rerun_clean"]
        else f"[red]wrote {result['rerun_chunks_written']}, deleted {result['rerun_chunks_deleted']}[/red]"
    )
    table.add_row(
        f"{result['chunks']:,}",
        f"{first:.1f} s",
        f"{result['chunks_per_s']:.1f}",
        f"{result['embed_s']:.1f} s ({result['embed_s'] / first:.0%})",
        f"{result['sparse_s']:.2f} s ({result['sparse_s'] / first:.0%})",
        f"{result['other_s']:.1f} s ({result['other_s'] / first:.0%})",
        f"{result['rerun_s']:.2f} s, {rerun_note}",
    )
    return table


def _latency(steps: list[dict[str, Any]]) -> Table:
    first = steps[0]
    table = Table(
        title=(
            f"Retrieval latency, 384-d, the same points and queries on every store (after {first['warmup']} "
            f"warm-up queries); ratio = Edge / local mode over the {first['peer_queries']} queries both "
            "answered (< 1: Edge faster); CPU: the process's CPU time in the call; "
            "recall: dense top-k against local mode's exact top-k"
        )
    )
    columns = (
        "points",
        "search",
        "store",
        "n",
        "p50 ms",
        "p99 ms",
        "p99 CPU ms",
        "p50 ratio",
        "p99 ratio",
        "recall",
        "load s",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("search", "store") else "right")
    for step in steps:
        for form in FORMS:
            for name in SIDES:
                stats = step[form][name]
                ratio = step["edge_over_local"][form].get(name)
                if form != "dense":
                    recall = ""
                elif name == PEER:
                    recall = "exact"
                else:
                    recall = f"{step['dense_recall_vs_local'][name]:.3f}"
                load = step["load_s"][name]
                load_text = (
                    f"{load:.1f} + {step['optimize_s']:.1f} opt."
                    if name == "edge_optimized"
                    else f"{load:.1f}"
                )
                table.add_row(
                    f"{step['points']:,}",
                    form,
                    LABELS[name],
                    str(stats["n"]),
                    f"{stats['p50_ms']:.2f}",
                    f"{stats['p99_ms']:.2f}",
                    f"{step[form + '_cpu'][name]['p99_ms']:.2f}",
                    f"x{ratio['p50']:.3f}" if ratio else "-",
                    f"x{ratio['p99']:.3f}" if ratio else "-",
                    recall,
                    load_text if form == "dense" else "",
                )
        table.add_section()
    return table


def _quality(result: dict[str, Any]) -> Table:
    k = result["top_k"]
    table = Table(
        title=(
            f"Retrieval quality on docs/ ({result['docs_files']} files, {result['docs_chunks']} chunks), "
            f"{result['questions']} labelled questions, top {k}"
        )
    )
    table.add_column("retrieval", justify="left")
    for column in (f"hit@{k}", f"MRR@{k}", "keyword hit / MRR", "paraphrase hit / MRR"):
        table.add_column(column, justify="right")
    for mode in MODES:
        scores = result["scores"][mode]
        table.add_row(
            {"dense": "dense only", "hybrid": "hybrid (RRF)", "sparse": "BM25 only"}[mode],
            f"{scores['all']['hit_rate']:.3f}",
            f"{scores['all']['mrr']:.3f}",
            f"{scores['keyword']['hit_rate']:.3f} / {scores['keyword']['mrr']:.3f} "
            f"(n={scores['keyword']['n']})",
            f"{scores['paraphrase']['hit_rate']:.3f} / {scores['paraphrase']['mrr']:.3f} "
            f"(n={scores['paraphrase']['n']})",
        )
    embedding = result["query_embedding"]
    table.caption = (
        f"hybrid ranks the first hit higher on {len(result['hybrid_better'])} questions, lower on "
        f"{len(result['hybrid_worse'])}; embedding one question (MiniLM, CPU): "
        f"p50 {embedding['p50_ms']:.1f} ms, p99 {embedding['p99_ms']:.1f} ms"
    )
    return table
