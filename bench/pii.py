"""PII redaction: what it finds, against stock Presidio, and what it adds to a call, against none.

In one process:

1. **Quality.** Recall and precision per entity type on ``tests/data/pii_labelled.jsonl`` (118
   support and ops messages, 100 labelled spans, hard negatives among them), for
   ``opsloop.privacy.Redactor`` and for its peer, stock Presidio: ``AnalyzerEngine`` with
   Presidio's own e-mail, phone, card, IBAN and IP recognizers (no NLP model, as opsloop runs
   it; tldextract pointed at its bundled list, as opsloop does, so the peer touches no network
   either). Presidio has no recognizer of API keys. A labelled span is found when a finding of
   its type covers all of it; a finding is right when it overlaps a labelled span of its type.
   The score threshold is the policy's default for both.
2. **Latency.** ``redact()`` on prompt-sized texts (about 200, 2,000 and 20,000 characters) with
   PII (messages of the labelled set) and without (only its PII-free messages, full of version
   numbers, dates, ids and hashes), against the baseline of no redaction (the same call with a
   policy that is not ``enabled``), the two interleaved call by call, after a warm-up; p50 and
   p99 of each, and what redaction adds at p50. Building the engines (``warm()``, Presidio's
   import included) is timed once.
3. **Linear time.** Presidio's e-mail pattern and opsloop's on ``"a." * n + "@"``, doubling n.

Writes ``bench/results/pii.json`` with the commit it measured. Run: ``.venv/bin/python -m
bench.pii`` (about a minute on 2 cores), ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.rag.run import environment
from opsloop.privacy import DEFAULT_SCORE_THRESHOLD, PATTERN_ENTITIES, PiiPolicy, Redactor

REPO = Path(__file__).resolve().parents[1]
LABELLED = REPO / "tests" / "data" / "pii_labelled.jsonl"
SIZES = (200, 2_000, 20_000)
Span = tuple[str, int, int]  # entity, start, end


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.pii",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--calls", type=int, default=400, help="Timed calls per size at 200 characters.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "pii.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the tables, write ``--out``; 0 when done."""
    args = parse_args(argv)
    rows = [json.loads(line) for line in LABELLED.read_text(encoding="utf-8").splitlines()]
    redactor = Redactor()
    started = time.perf_counter()
    redactor.warm()
    warm_s = time.perf_counter() - started
    _say(f"warm(): {warm_s:.1f} s")
    quality = {
        "opsloop": _quality(rows, lambda text: [(f.entity, f.start, f.end) for f in redactor.find(text)]),
        "presidio-stock": _quality(rows, _stock_presidio()),
    }
    latency = _latency(redactor, rows, args.calls, random.Random(args.seed))
    linear = _email_scaling()
    env = environment()
    env["packages"] |= {p: _version(p) for p in ("presidio-analyzer", "presidio-anonymizer", "phonenumbers")}
    report = {
        "benchmark": "bench/pii",
        "finished_at": datetime.now(UTC).isoformat(),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "config": vars(args)
        | {"out": str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else None}
        | {"score_threshold": DEFAULT_SCORE_THRESHOLD, "labelled_rows": len(rows)},
        "environment": env,
        "warm_s": warm_s,
        "quality": quality,
        "latency": latency,
        "email_pattern_scaling": linear,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _print(report)
    return 0


# --------------------------------------------------------------------------- quality


def _quality(rows: list[dict[str, Any]], find: Callable[[str], list[Span]]) -> dict[str, dict[str, Any]]:
    labelled, found, covered, right = Counter[str](), Counter[str](), Counter[str](), Counter[str]()
    for row in rows:
        findings = find(row["text"])
        for e in row["entities"]:
            labelled[e["type"]] += 1
            covered[e["type"]] += any(
                t == e["type"] and s <= e["start"] and end >= e["end"] for t, s, end in findings
            )
        for t, s, end in findings:
            found[t] += 1
            right[t] += any(t == e["type"] and s < e["end"] and e["start"] < end for e in row["entities"])
    return {
        entity: {
            "labelled": labelled[entity],
            "found": found[entity],
            "recall": covered[entity] / labelled[entity] if labelled[entity] else None,
            "precision": right[entity] / found[entity] if found[entity] else None,
        }
        for entity in PATTERN_ENTITIES
    }


def _stock_presidio() -> Callable[[str], list[Span]]:
    """Presidio's own pattern recognizers, as a user sets them up without a spaCy model."""
    import tldextract
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.nlp_engine import NoOpNlpEngine
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
    )

    # The peer's e-mail validation calls tldextract's module-level extractor, which would fetch
    # the public suffix list from the internet: point it at the bundled snapshot, as opsloop does.
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    recognizers = [
        EmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        IpRecognizer(),
    ]
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    analyzer = AnalyzerEngine(
        registry=RecognizerRegistry(recognizers=recognizers), nlp_engine=nlp, supported_languages=["en"]
    )
    entities = [e for e in PATTERN_ENTITIES if e != "SECRET"]

    def find(text: str) -> list[Span]:
        results = analyzer.analyze(
            text, language="en", entities=entities, score_threshold=DEFAULT_SCORE_THRESHOLD
        )
        return [(r.entity_type, r.start, r.end) for r in results]

    return find


# --------------------------------------------------------------------------- latency


def _texts(rows: Iterable[dict[str, Any]], size: int, rng: random.Random) -> str:
    """Messages drawn at random and joined with blank lines until ``size`` characters."""
    pool = [row["text"] for row in rows]
    parts: list[str] = []
    while sum(len(p) + 2 for p in parts) < size:
        parts.append(rng.choice(pool))
    return "\n\n".join(parts)[:size]


def _latency(
    redactor: Redactor, rows: list[dict[str, Any]], calls: int, rng: random.Random
) -> dict[str, Any]:
    off = PiiPolicy(enabled=False)
    clean = [row for row in rows if not row["entities"]]
    result: dict[str, Any] = {}
    for size in SIZES:
        n = max(calls * SIZES[0] // size, 50)
        for label, source in (("with PII", [row for row in rows if row["entities"]]), ("without PII", clean)):
            texts = [_texts(source, size, rng) for _ in range(16)]
            for text in texts:  # warm-up
                redactor.redact(text)
            on_ms: list[float] = []
            off_ms: list[float] = []
            found = 0
            for i in range(n):
                text = texts[i % len(texts)]
                order = ((None, on_ms), (off, off_ms)) if i % 2 == 0 else ((off, off_ms), (None, on_ms))
                for policy, times in order:
                    start = time.perf_counter()
                    redaction = redactor.redact(text, policy)
                    times.append((time.perf_counter() - start) * 1e3)
                    found += sum(redaction.found.values()) if policy is None else 0
            key = f"{size} chars {label}"
            result[key] = {
                "calls": n,
                "chars": round(statistics.mean(len(t) for t in texts)),
                "findings_per_call": found / n,
                "redact_p50_ms": _percentile(on_ms, 50),
                "redact_p99_ms": _percentile(on_ms, 99),
                "baseline_p50_ms": _percentile(off_ms, 50),
                "baseline_p99_ms": _percentile(off_ms, 99),
                "added_p50_ms": _percentile(on_ms, 50) - _percentile(off_ms, 50),
            }
            _say(
                f"{key}: p50 {result[key]['redact_p50_ms']:.2f} ms, p99 {result[key]['redact_p99_ms']:.2f} ms"
            )
    return result


def _percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- linear time


def _email_scaling() -> list[dict[str, Any]]:
    """Seconds of Presidio's e-mail pattern and of opsloop's on ``"a." * n + "@"``."""
    import regex
    from presidio_analyzer.predefined_recognizers import EmailRecognizer as Stock

    from opsloop.pii_recognizers import EmailRecognizer

    flags = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE  # PatternRecognizer's default
    stock = regex.compile(Stock.PATTERNS[0].regex, flags)
    ours = regex.compile(EmailRecognizer.PATTERNS[0].regex, flags)
    rows = []
    for n in (1_000, 2_000, 4_000):
        text = "a." * n + "@"
        row: dict[str, Any] = {"chars": len(text)}
        for name, pattern in (("presidio_s", stock), ("opsloop_s", ours)):
            start = time.perf_counter()
            list(pattern.finditer(text))
            row[name] = time.perf_counter() - start
        rows.append(row)
        seconds = f"Presidio {row['presidio_s']:.3f} s, ours {row['opsloop_s']:.5f} s"
        _say(f"e-mail pattern, {len(text)} chars: {seconds}")
    return rows


# --------------------------------------------------------------------------- report


def _print(report: dict[str, Any]) -> None:
    print(f"commit {report['commit']}; warm() {report['warm_s']:.1f} s")
    print(f"{'entity':<14}{'opsloop recall':>16}{'precision':>11}{'Presidio recall':>17}{'precision':>11}")
    ours, stock = report["quality"]["opsloop"], report["quality"]["presidio-stock"]
    for entity in PATTERN_ENTITIES:
        cells = [_fmt(q[entity][k]) for q in (ours, stock) for k in ("recall", "precision")]
        print(f"{entity:<14}{cells[0]:>16}{cells[1]:>11}{cells[2]:>17}{cells[3]:>11}")
    print(f"{'text':<28}{'redact p50':>11}{'p99':>9}{'none p50':>10}{'p99':>9}{'added p50':>11}")
    for key, row in report["latency"].items():
        print(
            f"{key:<28}{row['redact_p50_ms']:>9.2f}ms{row['redact_p99_ms']:>7.2f}ms"
            f"{row['baseline_p50_ms']:>8.4f}ms{row['baseline_p99_ms']:>7.4f}ms{row['added_p50_ms']:>9.2f}ms"
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO).stdout.strip()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
