"""The engine of ``opsloop demo traffic``: send a served model rows as live-like traffic, and tally it.

Each request is ``POST /predict/{model}`` with an experiment unit (``X-Opsloop-Unit:
unit-<i mod K>``), so a running experiment splits the traffic as it would split K users; with
labels, the true labels follow (``POST /feedback/{model}``, up to :data:`FEEDBACK_BATCH`
request ids a call). Requests go from a pool of :data:`CONCURRENCY` threads, started no faster
than a :class:`Pacer` allows.

The parts that decide (rows to JSON instances, the pacing, the tally, its summary and report)
are plain functions and types; :func:`send` takes the HTTP client, so tests hand it a fake
transport or a real server. Options, the key, the server check and the progress bar belong to
the command (``serving.cli.demo``). The command imports this module when the CLI loads, so it
keeps the same rule as a command module: httpx and pandas load only when a run needs them.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from rich.markup import escape

from opsloop.errors import InvalidInputError
from serving.startup import plural

if TYPE_CHECKING:
    import httpx
    import pandas as pd

__all__ = [
    "CONCURRENCY",
    "FEEDBACK_BATCH",
    "GIVE_UP_AFTER",
    "Answer",
    "FeedbackTally",
    "Pacer",
    "Run",
    "Tally",
    "Value",
    "error_message",
    "json_rows",
    "opsloop_error",
    "percentile",
    "report_lines",
    "run_failed",
    "send",
    "summary",
]

CONCURRENCY = 8
"""Predict requests in flight at once."""
FEEDBACK_BATCH = 500
"""Request ids per feedback call."""
GIVE_UP_AFTER = 20
"""Requests in a row without any HTTP answer that end a run: the server is gone, and each more
would wait out its connect timeout for nothing."""

Value = bool | int | float | str | None
"""A JSON-native value of an instance's feature or a label."""


def _native(column: str, value: Any) -> Value:
    """``value`` as the Python type JSON encodes; missing and non-finite numbers as null.

    Raises:
        InvalidInputError: The value has no JSON form (a timestamp, a list...).
    """
    if hasattr(value, "item") and not isinstance(value, str):  # a numpy scalar: json refuses them
        value = value.item()
    if isinstance(value, float):
        # NaN and inf are no JSON; null lets the server's schema check name the column.
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    import pandas as pd  # only reached for pandas' own missing values, so pandas is loaded

    if pd.api.types.is_scalar(value) and pd.isna(value):
        return None
    raise InvalidInputError(
        f"column {column!r} holds {type(value).__name__} {value!r}, which has no JSON form",
        field=column,
        value=repr(value),
    )


def json_rows(frame: pd.DataFrame, columns: Sequence[str]) -> list[dict[str, Value]]:
    """``frame``'s ``columns``, one dict per row, holding only JSON-native Python values.

    int64 becomes int, float64 float and strings str; a missing value becomes None.

    Raises:
        InvalidInputError: A value has no JSON form.
        KeyError: A column is not in ``frame``.
    """
    records = frame.loc[:, list(columns)].to_dict(orient="records")
    return [{str(name): _native(str(name), value) for name, value in row.items()} for row in records]


class Pacer:
    """Plans request starts at least ``1/rate`` seconds apart; without a rate, none waits.

    A start that comes late does not earn a burst to catch up: the next gap counts from the
    later of its planned time and now, so over any span the starts stay at or below the rate.

    Args:
        rate: Most starts per second, or None for no limit.

    Raises:
        InvalidInputError: ``rate`` is not a positive number.
    """

    def __init__(self, rate: float | None) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise InvalidInputError(f"rate must be a positive number, got {rate!r}", field="rate")
        self.interval = 0.0 if rate is None else 1.0 / rate
        self._next: float | None = None

    def delay(self, now: float) -> float:
        """Seconds to wait from ``now`` (a monotonic clock) for the next start, which this books."""
        start = now if self._next is None else max(now, self._next)
        self._next = start + self.interval
        return start - now


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty.

    Nearest rank, not interpolation: the value is one a request really took.
    """
    if not 0 < q <= 100:
        raise InvalidInputError(f"q must be in (0, 100], got {q!r}", field="q")
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


@dataclass(frozen=True)
class Answer:
    """How one predict request went.

    Attributes:
        index: The request's place in the run (its unit is ``unit-<index mod units>``).
        instances: Instances it carried.
        seconds: From sending it to its whole answer, or to the error.
        status: The HTTP status; None when no answer came.
        error: The httpx error's class name when no answer came (or ``BadAnswer``), else None.
        message: Why it failed: the server's error message or the transport error's text.
        request_id: The server's id of a 200 answer, for feedback.
        version: The model version that answered.
        variant: The experiment variant that answered (``champion`` outside experiments).
    """

    index: int
    instances: int
    seconds: float
    status: int | None = None
    error: str | None = None
    message: str = ""
    request_id: str | None = None
    version: int | None = None
    variant: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the model answered it."""
        return self.status == 200 and self.request_id is not None

    @property
    def failure(self) -> str | None:
        """The kind of failure: ``HTTP <status>`` or the error's name; None when ok."""
        if self.ok:
            return None
        return self.error or f"HTTP {self.status}"


@dataclass
class FeedbackTally:
    """What the feedback calls did with the labels of the answered requests.

    ``attached``, ``unknown`` and ``rejected`` count request ids, as the server answers them;
    ``labels`` counts the labels (one per instance) of the attached ones.
    """

    calls: int = 0
    attached: int = 0
    labels: int = 0
    unknown: int = 0
    rejected: int = 0
    failed_calls: int = 0
    unsent: int = 0
    first_error: str | None = None

    def note(self, error: str) -> None:
        """Keep ``error`` when it is the run's first feedback error."""
        if self.first_error is None:
            self.first_error = error


@dataclass
class Tally:
    """What a run sent and got back, added up on one thread as the answers arrive."""

    requests: int = 0
    instances: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    first_error: str | None = None
    latencies: list[float] = field(default_factory=list)
    served: Counter[tuple[int, str]] = field(default_factory=Counter)
    feedback: FeedbackTally | None = None
    stopped: str | None = None
    unanswered_in_a_row: int = 0

    @property
    def failed(self) -> int:
        """Requests that got no model answer."""
        return sum(self.failures.values())

    def add(self, answer: Answer) -> None:
        """Count one answer in."""
        self.requests += 1
        self.instances += answer.instances
        failure = answer.failure
        if failure is None:
            self.ok += 1
            self.latencies.append(answer.seconds)
            self.served[(answer.version or 0, answer.variant or "")] += 1
        else:
            self.failures[failure] += 1
            if self.first_error is None:
                self.first_error = f"{failure}: {answer.message}" if answer.message else failure
        self.unanswered_in_a_row = self.unanswered_in_a_row + 1 if answer.status is None else 0


@dataclass(frozen=True)
class Run:
    """What a run was asked to do: the part of its summary that repeats it."""

    model: str
    url: str
    seed: int
    shift: bool
    rows: int
    batch: int
    units: int
    rate_limit: float | None


def opsloop_error(response: httpx.Response) -> str | None:
    """The message of an opsloop error answer (``{"error": {"message": ...}}``), else None."""
    try:
        body = response.json()
    except ValueError:  # not JSON: a proxy's page, say
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return None


def error_message(response: httpx.Response) -> str:
    """The server's error message, else the start of the body or the status's name."""
    return opsloop_error(response) or response.text[:200] or response.reason_phrase


def _predict(http: httpx.Client, path: str, index: int, unit: str, rows: list[dict[str, Value]]) -> Answer:
    """Send one predict request; every outcome but a bug comes back as an :class:`Answer`."""
    import httpx

    from workflows.experiments.assignment import UNIT_HEADER

    started = time.perf_counter()
    try:
        response = http.post(path, json={"instances": rows}, headers={UNIT_HEADER: unit})
    except httpx.TransportError as exc:  # timeouts too: no answer, counted by kind
        name = type(exc).__name__
        return Answer(index, len(rows), time.perf_counter() - started, error=name, message=str(exc) or name)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        return Answer(index, len(rows), seconds, response.status_code, message=error_message(response))
    try:
        body = response.json()
        request_id, version, variant = str(body["request_id"]), int(body["version"]), str(body["variant"])
    except (ValueError, KeyError, TypeError) as exc:  # a 200 that is not opsloop's answer
        message = f"a 200 answer without request_id, version and variant: {exc!r}"
        return Answer(index, len(rows), seconds, 200, error="BadAnswer", message=message)
    return Answer(index, len(rows), seconds, 200, request_id=request_id, version=version, variant=variant)


def _send_feedback(
    http: httpx.Client, path: str, pending: list[tuple[str, Sequence[Value]]], tally: FeedbackTally
) -> None:
    """Post the labels of ``pending`` answers in one call and count what the server did with them."""
    import httpx

    tally.calls += 1
    body = {"feedback": [{"request_id": rid, "labels": list(labels)} for rid, labels in pending]}
    try:
        response = http.post(path, json=body)
    except httpx.TransportError as exc:
        tally.failed_calls += 1
        tally.unsent += len(pending)
        tally.note(f"{type(exc).__name__}: {exc}")
        return
    if response.status_code != 200:
        tally.failed_calls += 1
        tally.unsent += len(pending)
        tally.note(f"HTTP {response.status_code}: {error_message(response)}")
        return
    answer = response.json()
    attached = set(answer["attached"])
    tally.attached += len(attached)
    tally.labels += sum(len(labels) for rid, labels in pending if rid in attached)
    tally.unknown += len(answer["unknown"])
    tally.rejected += len(answer["rejected"])
    if answer["unknown"]:
        tally.note(f"unknown request id {answer['unknown'][0]} (its prediction was not logged)")
    rejected = next(iter(answer["rejected"].items()), None)
    if rejected is not None:
        tally.note(f"rejected {rejected[0]}: {rejected[1]}")


def send(
    http: httpx.Client,
    model: str,
    bodies: Sequence[list[dict[str, Value]]],
    labels: Sequence[Sequence[Value]] | None,
    *,
    units: int,
    pacer: Pacer,
    advance: Callable[[Tally], None] = lambda tally: None,
    sleep: Callable[[float], None] = time.sleep,
) -> Tally:
    """Send each body as one predict request, and its labels, when given, as feedback.

    Args:
        http: The client, with the server's base URL and the key's header.
        model: The model to predict with.
        bodies: The instances of each request, in order.
        labels: Per request, one true label per instance; None sends no feedback.
        units: Request ``i`` names experiment unit ``unit-<i mod units>``.
        pacer: When each request may start.
        advance: Called with the tally after each answer (a progress bar).
        sleep: Waits out the pacer (tests pass a fake clock's).

    Returns:
        The tally. It stops early on Ctrl-C or when :data:`GIVE_UP_AFTER` requests in a row got
        no answer (``stopped`` says why); the answers in flight are still counted, and the
        labels of every answered request still sent.
    """
    segment = quote(model, safe="")  # one path segment, whatever the name holds
    predict_path, feedback_path = f"/predict/{segment}", f"/feedback/{segment}"
    tally = Tally(feedback=None if labels is None else FeedbackTally())
    pending: list[tuple[str, Sequence[Value]]] = []

    def collect(done: set[Future[Answer]]) -> None:
        # On this thread only: the tally and the pending labels need no lock.
        for future in sorted(done, key=lambda f: f.result().index):
            answer = future.result()
            tally.add(answer)
            if labels is not None and answer.request_id is not None and answer.ok:
                pending.append((answer.request_id, labels[answer.index]))
            advance(tally)
        if tally.feedback is not None and len(pending) >= FEEDBACK_BATCH:
            _send_feedback(http, feedback_path, pending[:FEEDBACK_BATCH], tally.feedback)
            del pending[:FEEDBACK_BATCH]

    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="demo-traffic") as pool:
        in_flight: set[Future[Answer]] = set()
        try:
            for index, body in enumerate(bodies):
                if len(in_flight) >= CONCURRENCY:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    collect(done)
                finished = {f for f in in_flight if f.done()}  # keeps the bar moving at low rates
                in_flight -= finished
                collect(finished)
                if tally.unanswered_in_a_row >= GIVE_UP_AFTER:
                    tally.stopped = f"{GIVE_UP_AFTER} requests in a row got no answer from the server"
                    break
                sleep(pacer.delay(time.monotonic()))
                unit = f"unit-{index % units}"
                in_flight.add(pool.submit(_predict, http, predict_path, index, unit, body))
        except KeyboardInterrupt:
            tally.stopped = "interrupted"
        collect(set(wait(in_flight).done))
    if tally.feedback is not None:
        for start in range(0, len(pending), FEEDBACK_BATCH):
            _send_feedback(http, feedback_path, pending[start : start + FEEDBACK_BATCH], tally.feedback)
    return tally


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def summary(run: Run, tally: Tally, elapsed: float) -> dict[str, Any]:
    """What the run sent and got back, as the fixed-key object ``--format json`` prints.

    ``ok`` and ``failed`` count requests; ``failures`` counts them by kind (``HTTP 503``,
    ``ConnectTimeout``); latencies are of the answered requests; ``variants`` counts answers
    by the version and experiment variant that gave them; ``feedback`` is None without
    ``--feedback``.
    """
    return {
        **asdict(run),
        "requests": tally.requests,
        "instances": tally.instances,
        "ok": tally.ok,
        "failed": tally.failed,
        "failures": dict(tally.failures.most_common()),
        "first_error": tally.first_error,
        "latency_ms": {
            "p50": _ms(percentile(tally.latencies, 50)),
            "p99": _ms(percentile(tally.latencies, 99)),
        },
        "elapsed_s": round(elapsed, 3),
        "rate_rps": round(tally.requests / elapsed, 2) if elapsed > 0 else None,
        "variants": [
            {"version": version, "variant": variant, "answers": count}
            for (version, variant), count in sorted(tally.served.items())
        ],
        "feedback": None if tally.feedback is None else asdict(tally.feedback),
        "stopped": tally.stopped,
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """A :func:`summary` for a person: rich markup, one line per topic."""
    rate = "" if report["rate_rps"] is None else f", {report['rate_rps']:.1f} requests/s"
    limit = "" if report["rate_limit"] is None else f" (limit {report['rate_limit']:g}/s)"
    lines = [
        f"sent {report['requests']} requests ({report['instances']} instances, {report['batch']} a request, "
        f"{report['units']} units) to {escape(report['model'])} at {escape(report['url'])} "
        f"in {report['elapsed_s']:.1f} s{rate}{limit}",
    ]
    if report["failed"]:
        kinds = ", ".join(f"{kind} x{count}" for kind, count in report["failures"].items())
        lines.append(f"[red]ok {report['ok']}, failed {report['failed']}[/] ({escape(kinds)})")
        lines.append(f"  first error: {escape(report['first_error'] or '')}")
    else:
        lines.append(f"[green]ok {report['ok']}[/], failed 0")
    latency = report["latency_ms"]
    if latency["p50"] is not None:
        lines.append(f"latency p50 {latency['p50']:.1f} ms, p99 {latency['p99']:.1f} ms")
    for served in report["variants"]:
        lines.append(
            f"answered by version {served['version']} ({escape(served['variant'])}): {served['answers']}"
        )
    feedback = report["feedback"]
    if feedback is not None:
        good = not (feedback["unknown"] or feedback["rejected"] or feedback["unsent"])
        colour = "green" if good else "red"
        lines.append(
            f"feedback: [{colour}]{feedback['attached']} request ids attached[/] "
            f"({plural(feedback['labels'], 'label')} in {plural(feedback['calls'], 'call')}), "
            f"{feedback['unknown']} unknown, "
            f"{feedback['rejected']} rejected, {feedback['unsent']} in failed calls"
        )
        if feedback["first_error"]:
            lines.append(f"  first feedback error: {escape(feedback['first_error'])}")
    if report["stopped"]:
        lines.append(f"[yellow]stopped early[/]: {escape(report['stopped'])}")
    shift = "yes" if report["shift"] else "no"
    lines.append(f"seed {report['seed']} (pass --seed {report['seed']} to send the same rows), shift {shift}")
    return lines


def run_failed(report: dict[str, Any]) -> bool:
    """Whether the run must exit 1: a request failed, or a label did not reach its prediction."""
    feedback = report["feedback"]
    lost = feedback is not None and bool(feedback["unknown"] or feedback["rejected"] or feedback["unsent"])
    return bool(report["failed"]) or lost
