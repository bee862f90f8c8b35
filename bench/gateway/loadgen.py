"""The load generator: keep-alive HTTP/1.1 connections POSTing one body, every latency kept.

Runs as its own process (``python -m bench.gateway.loadgen``), one per measured run, and
prints one ``BENCH_RESULT {json}`` line: completed requests, errors by kind, and latency
percentiles computed from every single request's latency (no histogram buckets, no
coordinated-omission correction: what is reported is each request's own service time, from
the first byte written to the last byte read, as the client saw it).

Two ways to load a server:

- closed loop (``--rate`` unset): ``--connections`` connections each send their next
  request as soon as the previous answer arrived; throughput and latency are two views of
  the same queue, so this finds the highest throughput at that concurrency;
- paced (``--rate R``): the connections together send ``R`` requests a second on a fixed
  schedule (connection ``i`` of ``C`` at ``start + (i / C + k) * C / R``), whatever the
  answers do, which is how "moderate load" is meant: the server is busy part of the time
  and latency is mostly service time, not queueing. A request whose connection was still
  busy at its scheduled time is sent at once and counted in ``late``; a run with many late
  sends did not sustain the rate.

The request bytes are formatted once; a response is read by its ``Content-Length`` or its
chunked encoding (server-sent events), and must have status 200 and contain
``--expect`` (the stub's answer), or it counts as an error. Only the standard library (and
uvloop, when installed) is used, so its overhead is small and the same for every server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = ["MARKER", "LoadSpec", "main", "percentile", "run"]

MARKER = "BENCH_RESULT "
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


@dataclass(frozen=True)
class LoadSpec:
    """One run: where, what, how hard and for how long."""

    url: str
    body: bytes
    key: str
    connections: int
    duration_s: float
    warmup_s: float
    rate: float | None = None
    timeout_s: float = 10.0
    expect: bytes = b""


@dataclass
class _Tally:
    """What the connections measured, shared by all of them (one event loop, no locks)."""

    measure_from: float
    stop_at: float
    latencies_us: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(
        default_factory=lambda: {"connect": 0, "read": 0, "status": 0, "content": 0, "timeout": 0}
    )
    late: int = 0
    scheduled: int = 0
    sent: int = 0
    warmup_requests: int = 0


def percentile(ordered: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, by linear interpolation; NaN when empty."""
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _request_bytes(spec: LoadSpec) -> tuple[str, int, bytes]:
    parts = urlsplit(spec.url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"--url must be http://host:port/path, got {spec.url!r}")
    port = parts.port or 80
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\n"
        f"Authorization: Bearer {spec.key}\r\nContent-Type: application/json\r\n"
        f"Accept: application/json\r\nContent-Length: {len(spec.body)}\r\n\r\n"
    )
    return parts.hostname, port, head.encode("latin-1") + spec.body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one response (``Content-Length`` or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        return status, await reader.readexactly(int(head[at + 17 : end]))
    if b"\r\ntransfer-encoding: chunked" in lower:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return status, bytes(body)
            body += chunk[:-2]
    return status, b""  # no body (e.g. 204)


async def _connection(index: int, spec: LoadSpec, tally: _Tally, host: str, port: int, raw: bytes) -> None:
    """One connection's loop until ``tally.stop_at``; reconnects after an error."""
    clock = time.perf_counter
    interval = spec.connections / spec.rate if spec.rate else 0.0
    start = clock()
    next_at = start + (index / spec.connections) * interval
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    while True:
        if interval:
            now = clock()
            if next_at >= tally.stop_at:
                break
            if next_at > now:
                await asyncio.sleep(next_at - now)
            elif next_at >= tally.measure_from and now - next_at > min(0.001, interval / 2):
                tally.late += 1
            if next_at >= tally.measure_from:
                tally.scheduled += 1
            next_at += interval
        elif clock() >= tally.stop_at:
            break
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), spec.timeout_s)
            assert reader is not None  # noqa: S101 - set with writer
            sent = clock()
            assert writer is not None  # noqa: S101 - connected above
            writer.write(raw)
            tally.sent += 1
            status, body = await asyncio.wait_for(_read_response(reader), spec.timeout_s)
            done = clock()
        except TimeoutError:
            tally.errors["timeout"] += 1
            _drop(writer)
            writer = None
            continue
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            tally.errors[
                "connect" if writer is None or isinstance(exc, ConnectionRefusedError) else "read"
            ] += 1
            _drop(writer)
            writer = None
            await asyncio.sleep(0.01)
            continue
        if sent < tally.measure_from:
            tally.warmup_requests += 1
            continue
        if sent >= tally.stop_at:
            break
        if status != 200:
            tally.errors["status"] += 1
        elif spec.expect and spec.expect not in body:
            tally.errors["content"] += 1
        else:
            tally.latencies_us.append((done - sent) * 1e6)
    _drop(writer)


def _drop(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()


async def run(spec: LoadSpec) -> dict[str, Any]:
    """Drive the server as ``spec`` says; the summary (latencies in microseconds)."""
    host, port, raw = _request_bytes(spec)
    now = time.perf_counter()
    tally = _Tally(measure_from=now + spec.warmup_s, stop_at=now + spec.warmup_s + spec.duration_s)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(_connection(i, spec, tally, host, port, raw) for i in range(spec.connections)))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    ordered = sorted(tally.latencies_us)
    latency = {name: percentile(ordered, q) for name, q in _PERCENTILES.items()}
    latency |= {
        "min": ordered[0] if ordered else float("nan"),
        "max": ordered[-1] if ordered else float("nan"),
        "mean": sum(ordered) / len(ordered) if ordered else float("nan"),
    }
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {
        "requests": len(ordered),
        "duration_s": spec.duration_s,
        "connections": spec.connections,
        "rate": spec.rate,
        "scheduled": tally.scheduled,
        "late": tally.late,
        "warmup_requests": tally.warmup_requests,
        "sent": tally.sent,
        "errors": tally.errors,
        "latency_us": latency,
        "client_cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run, print the ``BENCH_RESULT`` line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway.loadgen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT/v1/chat/completions")
    parser.add_argument("--body-file", required=True, help="The JSON request body.")
    parser.add_argument("--key", default="", help="Bearer key sent with every request.")
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True, help="Measured seconds.")
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds before measuring (dropped).")
    parser.add_argument("--rate", type=float, default=None, help="Paced: requests/s over all connections.")
    parser.add_argument("--timeout", type=float, default=10.0, help="Seconds per request.")
    parser.add_argument("--expect", default="", help="Text every answer must contain.")
    args = parser.parse_args(argv)
    with open(args.body_file, "rb") as handle:
        body = handle.read().strip()
    spec = LoadSpec(
        url=args.url,
        body=body,
        key=args.key,
        connections=args.connections,
        duration_s=args.duration,
        warmup_s=args.warmup,
        rate=args.rate,
        timeout_s=args.timeout,
        expect=args.expect.encode(),
    )
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    sys.stdout.write(MARKER + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
