"""``opsloop demo``: drive the built-in credit-risk demo; ``traffic`` sends it live-like requests.

The rows come from the demo's own data process (``workflows.demo.generate_credit_data``),
drifted with ``--shift``, so the server sees what the demo model was trained on, or the world
it drifts into. Each request is ``POST /predict/{model}`` through the public API, with this
home's admin key (or ``--key``) and an experiment unit (``X-Opsloop-Unit: unit-<i mod K>``),
so a running experiment splits the traffic as it would split K users. With ``--feedback`` the
true labels follow (``POST /feedback/{model}``, up to 500 request ids a call): the labels
``opsloop drift concept`` scores.

This module is the typer adapter: the options, the key and URL, the server check before any
data is drawn, the progress bar and the printing. Sending, pacing and tallying live in
:mod:`serving.demo_traffic`. Like every command module, this one imports only typer, rich,
``opsloop.errors`` and light ``serving`` modules at its top; httpx and the demo's data
(pandas, scikit-learn) load when the command runs.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import quote

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from opsloop.errors import (
    BackendError,
    ConfigError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    OpsloopError,
    UnauthorizedError,
)
from serving.cli.common import State, err, fail, out

# Light by design (no httpx or pandas at its top), so importing it here keeps --help fast.
from serving.demo_traffic import (
    CONCURRENCY,
    Pacer,
    Run,
    Tally,
    error_message,
    json_rows,
    opsloop_error,
    report_lines,
    run_failed,
    send,
    summary,
)

if TYPE_CHECKING:
    import httpx


__all__ = ["app"]

app = typer.Typer(help="Drive the built-in credit-risk demo: send it traffic.", no_args_is_help=True)


def _read_key(path: Path) -> str:
    """The admin key ``opsloop serve`` wrote to ``path`` on the home's first start.

    Raises:
        NotFoundError: No file there.
        ConfigError: The file cannot be read or is empty.
    """
    hint = "pass a key with --key (e.g. one from 'opsloop keys create --role user')"
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as exc:
        raise NotFoundError(
            f"no admin key at {path}: 'opsloop serve' writes one there when it first starts on this "
            f"home; {hint}",
            path=str(path),
        ) from exc
    except OSError as exc:
        raise ConfigError(
            f"cannot read the admin key at {path}: {exc.strerror}; {hint}", path=str(path)
        ) from exc
    if not secret:
        raise ConfigError(f"the admin key file {path} is empty; {hint}", path=str(path))
    return secret


def _check_server(http: httpx.Client, url: str, model: str, key_from: str) -> None:
    """Fail before sending anything when the server is away, refuses the key or lacks ``model``.

    Raises:
        BackendError: No server answers at ``url``, or it answers with an error.
        UnauthorizedError: The server does not know the key.
        ForbiddenError: The key may not read models.
        NotFoundError: The server serves no ``model``.
    """
    import httpx

    try:
        response = http.get(f"/models/{quote(model, safe='')}")
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        raise BackendError(
            f"no opsloop server answers at {url} ({type(exc).__name__}: {exc}); start one with "
            "'opsloop serve' or point --url at one",
            url=url,
        ) from exc
    if response.status_code == 200:
        return
    message = opsloop_error(response)
    if message is None:  # someone else's answer: a proxy, another service on the port
        raise BackendError(
            f"the server at {url} answered HTTP {response.status_code} ({error_message(response)!r}), "
            "not as an opsloop server does; check --url",
            url=url,
        )
    if response.status_code == 401:
        raise UnauthorizedError(f"the server at {url} refused the key {key_from}: {message}", url=url)
    if response.status_code == 403:
        raise ForbiddenError(f"the key {key_from} may not use the server at {url}: {message}", url=url)
    if response.status_code == 404:
        raise NotFoundError(f"the server at {url}: {message}", url=url, model=model)
    raise BackendError(f"the server at {url} answered HTTP {response.status_code}: {message}", url=url)


def _progress(enabled: bool) -> Progress:
    """The bar on stderr: instances answered of those to send, the time, ok and failed so far."""
    return Progress(
        TextColumn("[bold]traffic[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=True,
        disable=not enabled,
    )


@app.command("traffic")
def traffic(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Model to send the rows to; it must take the demo's columns.")
    ] = "credit-risk",
    rows: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="Rows (instances) to send, drawn afresh each run.")
    ] = 1000,
    rate: Annotated[
        float | None,
        typer.Option(min=0.001, help="At most this many requests a second (default: as fast as it goes)."),
    ] = None,
    shift: Annotated[
        bool,
        typer.Option(
            "--shift",
            help="Draw from the drifted world: lower incomes, more late payments (workflows/demo.py).",
        ),
    ] = False,
    feedback: Annotated[
        bool,
        typer.Option("--feedback", help="Then send each answered request's true labels to /feedback."),
    ] = False,
    units: Annotated[
        int,
        typer.Option(
            min=1,
            help="Experiment units to spread requests over (X-Opsloop-Unit: unit-<i mod K>): K users, "
            "enough that a 5% canary gets about 5% of them.",
        ),
    ] = 1000,
    url: Annotated[
        str | None,
        typer.Option(
            help="The server's base URL (default: this home's server, from the host and port settings)."
        ),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option(
            help="API key with role user or higher (default: this home's admin.key file). "
            "Other users may see it in the process list.",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            min=0, help="Seed of the data (default: a random one, printed at the end to repeat the run)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000, help="Instances per predict request.")] = 1,
    format_: Annotated[
        Literal["text", "json"],
        typer.Option("--format", "-f", help="text, or json: one object on stdout and no progress bar."),
    ] = "text",
) -> None:
    """Send a served model rows from the demo's data process, as live traffic, and report the answers.

    Each request goes to POST /predict/MODEL with the key, from 8 at a time; with --feedback
    the rows' true labels follow to POST /feedback/MODEL. The report: requests, ok and failed
    (by HTTP status or error), the latency of the answered ones (p50, p99), the versions and
    experiment variants that answered, the feedback attached, and the seed. Exits 1 when a
    request failed or a label was not attached, 130 when interrupted.
    """
    state: State = ctx.obj
    settings = state.settings()
    chosen_seed = secrets.randbits(32) if seed is None else seed  # random: two runs send other rows
    try:
        if url is not None and not url.startswith(("http://", "https://")):
            raise InvalidInputError(f"--url must start with http:// or https://, got {url!r}", field="url")
        from serving.local import local_url

        base = url.rstrip("/") if url is not None else local_url(settings)
        secret = key if key is not None else _read_key(settings.admin_key_path)
        key_from = "given with --key" if key is not None else f"read from {settings.admin_key_path}"
        pacer = Pacer(rate)
    except OpsloopError as exc:
        raise fail(exc) from exc

    import httpx

    # Short connects: a server that is away should fail the run in seconds; long reads: a first
    # request may wait for the model to load.
    timeout = httpx.Timeout(30.0, connect=5.0)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=base, headers=headers, timeout=timeout, limits=limits) as http:
        try:
            _check_server(http, base, model, key_from)  # before the data: failing takes no 3 s of imports
        except OpsloopError as exc:
            raise fail(exc) from exc

        from workflows.demo import FEATURE_NAMES, LABEL, generate_credit_data

        # The process needs 100 rows or more; the first N of a larger draw are the same rows.
        frame = generate_credit_data(max(rows, 100), seed=chosen_seed, shift=shift).head(rows)
        instances = json_rows(frame, FEATURE_NAMES)  # no error to catch: each demo column has a JSON form
        truth = [row[LABEL] for row in json_rows(frame, [LABEL])]
        starts = range(0, rows, batch)
        bodies = [instances[i : i + batch] for i in starts]
        labels = [truth[i : i + batch] for i in starts] if feedback else None

        started = time.perf_counter()
        with _progress(format_ == "text" and err.is_terminal) as bar:
            task = bar.add_task("", total=rows)

            def advance(tally: Tally) -> None:
                bar.update(
                    task, completed=tally.instances, description=f"ok {tally.ok}, failed {tally.failed}"
                )

            tally = send(http, model, bodies, labels, units=units, pacer=pacer, advance=advance)
        elapsed = time.perf_counter() - started

    run = Run(model, base, chosen_seed, shift, rows, batch, units, rate)
    report = summary(run, tally, elapsed)
    if format_ == "json":
        print(json.dumps(report))
    else:
        for line in report_lines(report):
            out.print(line, highlight=False, soft_wrap=True)  # one line per topic, also in a log
    if tally.stopped == "interrupted":
        raise typer.Exit(code=130)
    if run_failed(report):
        raise typer.Exit(code=1)
