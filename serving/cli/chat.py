"""``opsloop chat``: ask the ops assistant of the running server, and approve what it waits for.

The assistant runs inside ``opsloop serve`` (its graph, checkpoints and tools live there); the
command talks to it over the API, as the server's local operator (this machine's state) or,
with ``--url`` and ``--key``, as the key's holder on any server. ``opsloop agents eval``
measures the offline planner on the labelled requests.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.panel import Panel
from rich.table import Table

from opsloop.errors import NotFoundError, OpsloopError
from serving.cli.common import err, fail, out

if TYPE_CHECKING:
    from serving.cli.remote import ServerRag

__all__ = ["agents_app", "chat"]

agents_app = typer.Typer(
    help="The ops assistant's planner: how well it understands requests.", no_args_is_help=True
)

_COLOURS = {
    "ok": "green",
    "failed": "red",
    "error": "red",
    "skipped": "yellow",
    "cancelled": "yellow",
    "planned": "dim",
}


def _server(ctx: typer.Context, url: str | None, key: str | None) -> ServerRag:
    from serving.cli.remote import ServerRag
    from serving.local import cli_actor

    if url is not None:
        if key is None:
            raise typer.BadParameter("--url needs --key (or OPSLOOP_API_KEY)", param_hint="--key")
        return ServerRag(url, key, tenant="default", actor=cli_actor())  # the key's tenant: headers unread
    found = ServerRag.find(ctx.obj.settings().home, tenant="default", actor=cli_actor())
    if found is None:
        raise fail(
            NotFoundError(
                "no opsloop server holds this home; start `opsloop serve` (the assistant runs in it)"
            )
        )
    return found


def _show(answer: dict[str, Any]) -> None:
    plan = answer.get("plan")
    if plan:
        table = Table(title=f"{plan['workflow']} (agent {plan['agent']})", show_lines=False)
        for column in ("#", "tool", "arguments", "outcome"):
            table.add_column(column)
        for n, step in enumerate(plan["steps"], 1):
            args = ", ".join(f"{k}={v}" for k, v in step["args"].items() if v is not None and k != "question")
            colour = _COLOURS.get(step["status"], "white")
            table.add_row(
                str(n),
                step["tool"] + (" *" if step["mutating"] else ""),
                args,
                f"[{colour}]{step['status']}[/] {step['summary']}",
            )
        out.print(table)
    out.print(Panel(answer["reply"], title=f"{answer['status']} · thread {answer['thread_id']}"))


def _approve_prompt(server: ServerRag, answer: dict[str, Any]) -> dict[str, Any]:
    pending = answer["pending"]
    args = ", ".join(f"{k}={v}" for k, v in pending["args"].items())
    decision = typer.confirm(f"Approve {pending['action']}({args})?", default=False)
    comment = typer.prompt("Comment", default="", show_default=False) or None
    return server.approve(answer["thread_id"], decision, comment)


def chat(
    ctx: typer.Context,
    message: Annotated[str | None, typer.Argument(help="The request; none: an interactive session.")] = None,
    thread: Annotated[str | None, typer.Option("--thread", help="Continue this thread.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Plan without running any step.")] = False,
    approve: Annotated[str | None, typer.Option("--approve", help="Approve what THREAD waits for.")] = None,
    reject: Annotated[str | None, typer.Option("--reject", help="Reject what THREAD waits for.")] = None,
    comment: Annotated[str | None, typer.Option("--comment", help="Why, with --approve or --reject.")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Another server's base URL (needs --key).")] = None,
    key: Annotated[
        str | None, typer.Option("--key", envvar="OPSLOOP_API_KEY", help="API key for --url.")
    ] = None,
    format_: Annotated[Literal["table", "json"], typer.Option("--format", "-f")] = "table",
) -> None:
    """Ask the ops assistant in words; actions that change anything wait for an approval.

    Examples: opsloop chat "status of credit-risk"; opsloop chat "promote credit-risk version 2";
    opsloop chat --approve THREAD; opsloop chat (an interactive session with approval prompts).
    """
    server = _server(ctx, url, key)
    try:
        with server:
            if approve or reject:
                answer = server.approve(approve or reject or "", approve is not None, comment)
            elif message is not None:
                answer = server.chat(message, thread, dry_run=dry_run)
            else:
                _session(server, thread, dry_run)
                return
    except OpsloopError as exc:
        raise fail(exc) from exc
    if format_ == "json":
        print(json.dumps(answer, indent=2))
    else:
        _show(answer)


def _session(server: ServerRag, thread: str | None, dry_run: bool) -> None:
    err.print("Ask in words (empty line or Ctrl-D ends). Risky actions ask for your approval here.")
    while True:
        try:
            message = input("you> ").strip()
        except EOFError:
            return
        if not message:
            return
        try:
            answer = server.chat(message, thread, dry_run=dry_run)
            thread = answer["thread_id"]
            _show(answer)
            while answer["status"] == "pending_approval":
                answer = _approve_prompt(server, answer)
                _show(answer)
        except OpsloopError as exc:
            err.print(f"[red]{exc.message}[/]")


@agents_app.command("eval")
def agents_eval(
    split: Annotated[
        Literal["held_out", "blind", "tune"],
        typer.Option("--split", help="held_out: the labelled half not tuned on; blind: a set written apart."),
    ] = "held_out",
    format_: Annotated[Literal["table", "json"], typer.Option("--format", "-f")] = "table",
) -> None:
    """Intent accuracy and slot exact-match of the offline planner, per workflow."""
    from agents.planning.evaluate import evaluate

    with err.status("training the planner and classifying the requests"):
        report = evaluate(split)
    if format_ == "json":
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"offline planner on the {split} requests ({report['requests']})")
    for column in ("workflow", "requests", "intent accuracy", "slot exact-match"):
        table.add_column(column, justify="left" if column == "workflow" else "right")
    for name, row in report["workflows"].items():
        slots = "" if row["slot_exact_match"] is None else f"{row['slot_exact_match']:.1%}"
        table.add_row(name, str(row["requests"]), f"{row['intent_accuracy']:.1%}", slots)
    table.add_row(
        "[bold]all[/]",
        str(report["requests"]),
        f"[bold]{report['intent_accuracy']:.1%}[/]",
        f"[bold]{report['slot_exact_match']:.1%}[/]",
    )
    out.print(table)
    for miss in report["misses"][:20]:
        err.print(f"[dim]{miss}[/]")
