"""Per-sample results of an eval run, their summaries, and the checkpoint file they live in.

Every scored sample is one :class:`SampleResult` and one line of ``samples.jsonl`` in the run's
directory, appended (and fsynced) as soon as the sample is done. A run that is killed keeps what
it finished; resuming reads the file back and scores only the rest. A last line cut short by the
kill is dropped on reading, so that sample is simply scored again.

A metric's outcome on a sample is exactly one of: a score (``scores``), a failure with its reason
(``failures``: a judge timeout, unparsable judge output, an error), *undefined* (ragas answered
NaN) or *not applicable* (neither: the metric does not apply to the sample). :func:`summarize`
takes means over scores only, and counts the rest, so no NaN reaches a summary.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evals.metrics import METRICS
from evals.stats import mean_ci

__all__ = ["Checkpoint", "MetricSummary", "SampleResult", "summarize"]


@dataclass(frozen=True)
class SampleResult:
    """One question of the data set, answered and scored.

    ``error`` is set when the pipeline itself failed on the sample (every metric of the run then
    counts it as failed, reason ``pipeline_error``).
    """

    id: str
    question: str
    reference: str
    answer: str | None
    sources: list[str]
    """Documents of the retrieved chunks, best first."""
    contexts: list[str]
    """Texts of the retrieved chunks, best first."""
    prompt_version: str | None
    latency_ms: float
    retrieval_ms: float
    generation_ms: float | None
    answer_tokens: dict[str, int]
    judge: dict[str, Any]
    cost_usd: float
    scores: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)
    undefined: list[str] = field(default_factory=list)
    error: str | None = None
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SampleResult:
        """Read a result back from :meth:`to_dict` output.

        Raises:
            TypeError, KeyError: ``data`` is not a sample result.
        """
        return cls(**data)

    def outcome(self, metric: str) -> str:
        """``scored``, ``failed``, ``undefined`` or ``not_applicable`` for ``metric``."""
        if metric in self.scores:
            return "scored"
        if metric in self.failures or self.error is not None:
            return "failed"
        if metric in self.undefined:
            return "undefined"
        return "not_applicable"


@dataclass(frozen=True)
class MetricSummary:
    """A metric over a run: the mean of its scores with an interval, and what was left out.

    ``mean``, ``ci_low`` and ``ci_high`` are None when no sample was scored, never NaN.
    ``failures`` counts failed samples by reason.
    """

    name: str
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    scored: int
    failed: int
    undefined: int
    not_applicable: int
    failures: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready values."""
        return asdict(self)


def summarize(
    samples: Sequence[SampleResult], metrics: Iterable[str], *, confidence: float = 0.95
) -> dict[str, MetricSummary]:
    """Summaries of ``metrics`` (in that order) over ``samples``."""
    summaries: dict[str, MetricSummary] = {}
    for name in metrics:
        values = [s.scores[name] for s in samples if name in s.scores and math.isfinite(s.scores[name])]
        reasons: Counter[str] = Counter()
        undefined = not_applicable = 0
        for sample in samples:
            outcome = sample.outcome(name)
            if outcome == "failed":
                reasons[sample.failures.get(name, "pipeline_error")] += 1
            elif outcome == "undefined":
                undefined += 1
            elif outcome == "not_applicable":
                not_applicable += 1
        ci = mean_ci(values, confidence=confidence)
        summaries[name] = MetricSummary(
            name=name,
            mean=None if ci is None else ci.mean,
            ci_low=None if ci is None else ci.low,
            ci_high=None if ci is None else ci.high,
            scored=len(values),
            failed=sum(reasons.values()),
            undefined=undefined,
            not_applicable=not_applicable,
            failures=dict(sorted(reasons.items())),
        )
    return summaries


def ordered_metrics(names: Iterable[str]) -> list[str]:
    """``names`` in report order (the catalog's), unknown names last."""
    wanted = set(names)
    known = [name for name in METRICS if name in wanted]
    return known + sorted(wanted - set(known))


class Checkpoint:
    """The append-only ``samples.jsonl`` of one run directory."""

    FILE = "samples.jsonl"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / self.FILE

    def load(self) -> dict[str, SampleResult]:
        """The samples finished so far, by id; a torn last line is dropped (and truncated away)."""
        if not self.path.exists():
            return {}
        done: dict[str, SampleResult] = {}
        good_bytes = 0
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    if not raw.endswith(b"\n"):
                        raise ValueError("torn line")
                    sample = SampleResult.from_dict(json.loads(raw))
                except (ValueError, TypeError, KeyError):
                    break  # the run was killed while writing this line; it is scored again
                done[sample.id] = sample
                good_bytes += len(raw)
        if good_bytes != self.path.stat().st_size:
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
        return done

    def rewrite(self, samples: Sequence[SampleResult]) -> None:
        """Replace the file with ``samples`` in this order (a finished run, in data set order)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        lines = (json.dumps(s.to_dict(), ensure_ascii=False, allow_nan=False) + "\n" for s in samples)
        tmp.write_text("".join(lines), encoding="utf-8")
        tmp.replace(self.path)

    def append(self, sample: SampleResult) -> None:
        """Write one finished sample durably (a single append of one line, then fsync)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps(sample.to_dict(), ensure_ascii=False, allow_nan=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
