"""``opsloop prompts``: list, show, register, alias and diff prompts in the MLflow prompt registry.

Reads go to MLflow's tables (:mod:`opsloop.registry_view`) or, where that cannot be, to
:class:`opsloop.registry.Registry`; the two changes are the typed operations of
:mod:`workflows.prompts`, called as the local CLI operator (``serving.platform.cli_principal``)
and audited as ``prompt.register`` and ``prompt.alias``. For the RAG answer prompt
(``rag-answer``) they pass in ``rag``'s own check of a template (it must hold ``{{context}}``
and ``{{question}}``), so a version the answerer would refuse is neither registered nor aliased.

Every command first makes sure ``rag-answer@production`` exists, as the RAG service does on
its first query: on a fresh home it is then listed, and a template registered before any
query becomes version 2 rather than taking the default's place as version 1.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from opsloop.errors import InvalidInputError, NotFoundError, OpsloopError
from serving.cli.common import err, fail, out

if TYPE_CHECKING:
    from opsloop.registry import PromptVersionInfo, Registry
    from opsloop.registry_view import RegistryView
    from serving.local import Store
    from workflows.prompts import TemplateCheck

PRODUCTION = "production"
"""The alias that is served (the RAG service answers with ``rag-answer@production``)."""

app = typer.Typer(
    help="List, show, register, alias and diff prompts (MLflow prompt registry, '{{ variable }}' templates).",
    no_args_is_help=True,
)


def _check(name: str) -> TemplateCheck | None:
    """What prompt ``name``'s renderer requires of a template; None: any text."""
    from rag.answer import ANSWER_PROMPT, check_answer_template

    return check_answer_template if name == ANSWER_PROMPT else None


def _open(ctx: typer.Context) -> tuple[Store, Registry]:
    from rag.answer import ensure_answer_prompt

    store, registry = ctx.obj.store_and_registry()
    try:
        ensure_answer_prompt(registry)
    except NotFoundError as exc:
        # rag-answer exists without a production alias and with someone else's version 1:
        # say so, but go on, since 'prompts alias' is how that gets fixed.
        err.print(f"[yellow]warning:[/yellow] {exc.message}", highlight=False)
    except OpsloopError as exc:
        raise fail(exc) from exc
    return store, registry


def _reader(ctx: typer.Context) -> Registry | RegistryView:
    """For reads: the tables as they are when ``rag-answer@production`` exists, else :func:`_open`."""
    from rag.answer import ANSWER_PROMPT

    reader = ctx.obj.registry_reader()
    try:
        reader.load_prompt(ANSWER_PROMPT, PRODUCTION)
    except OpsloopError:
        return _open(ctx)[1]
    return reader


@app.command("list")
def prompts_list(ctx: typer.Context) -> None:
    """List every prompt with its versions and which version each alias points at."""
    registry = _reader(ctx)
    table = Table("prompt", "versions", "aliases", "latest")
    try:
        for name in registry.prompts():
            versions = registry.prompt_versions(name)
            aliases = sorted((alias, v.version) for v in versions for alias in v.aliases)
            table.add_row(
                name,
                ", ".join(str(v.version) for v in versions),
                ", ".join(f"{alias}={version}" for alias, version in aliases),
                str(versions[-1].version) if versions else "",
            )
    except OpsloopError as exc:
        raise fail(exc) from exc
    out.print(table)


@app.command("show")
def prompts_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Prompt name, e.g. rag-answer.")],
    version: Annotated[
        str | None,
        typer.Option(
            "--version", "-v", help="Version number or alias (default: production, else the latest)."
        ),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Print only the template, e.g. to save it for editing.")
    ] = False,
) -> None:
    """Show one version of a prompt: its template, version, aliases and variables."""
    registry = _reader(ctx)
    try:
        info = _default_version(registry, name) if version is None else registry.load_prompt(name, version)
    except OpsloopError as exc:
        raise fail(exc) from exc
    if raw:
        sys.stdout.write(info.template)  # byte for byte, so a saved copy registers unchanged
        return
    fields = [
        ("prompt", info.name),
        ("version", str(info.version)),
        ("aliases", ", ".join(info.aliases) or "-"),
        ("variables", ", ".join(info.variables) or "-"),
        ("message", info.commit_message or "-"),
    ]
    header = "".join(f"{key + ':':<11}{value}\n" for key, value in fields)
    # Plain writes: rich would wrap long lines and read brackets in the template as markup.
    sys.stdout.write(header + "template:\n" + "".join(_lines(info.template)))


@app.command("register")
def prompts_register(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Prompt name; created if it does not exist.")],
    template: Annotated[
        Path,
        typer.Option(
            "--template",
            "-t",
            help="UTF-8 text file with the template; variables are written {{ name }}.",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="What changed in this version.")
    ] = None,
) -> None:
    """Register a template as the next version of a prompt; no alias moves.

    rag-answer templates must contain {{context}} and {{question}}. Point an alias at the
    new version with 'opsloop prompts alias'.
    """
    from serving.local import cli_principal
    from workflows.prompts import register

    store, registry = _open(ctx)
    try:
        text = _read_template(template)
        info = register(
            cli_principal(), registry, store.audit, name, text, message=message, check=_check(name)
        )
    except OpsloopError as exc:
        raise fail(exc) from exc
    err.print(
        f"registered prompt {name} version {info.version} "
        f"(variables: {', '.join(info.variables) or 'none'}); "
        f"point an alias at it with 'opsloop prompts alias {name} candidate {info.version}'",
        highlight=False,
    )


@app.command("alias")
def prompts_alias(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Prompt name.")],
    alias: Annotated[str, typer.Argument(help="Alias to set, e.g. candidate or production.")],
    version: Annotated[int, typer.Argument(min=1, help="Version the alias should point at.")],
) -> None:
    """Point an alias at a version; moving rag-answer's production changes what RAG answers with."""
    from serving.local import cli_principal
    from workflows.prompts import set_alias

    store, registry = _open(ctx)
    try:
        move = set_alias(cli_principal(), registry, store.audit, name, alias, version, check=_check(name))
    except OpsloopError as exc:
        raise fail(exc) from exc
    before = "unset" if move.before is None else str(move.before)
    err.print(f"{name}: {alias} {before} -> {move.after}", highlight=False)


@app.command("diff")
def prompts_diff(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Prompt name.")],
    first: Annotated[str, typer.Argument(metavar="V1", help="Version number or alias (the old side).")],
    second: Annotated[str, typer.Argument(metavar="V2", help="Version number or alias (the new side).")],
) -> None:
    """Print a unified diff of two versions' templates; nothing when they are the same."""
    registry = _reader(ctx)
    try:
        old, new = registry.load_prompt(name, first), registry.load_prompt(name, second)
    except OpsloopError as exc:
        raise fail(exc) from exc
    lines = difflib.unified_diff(
        _lines(old.template),
        _lines(new.template),
        fromfile=_label(old, first),
        tofile=_label(new, second),
    )
    sys.stdout.writelines(lines)


def _default_version(registry: Registry | RegistryView, name: str) -> PromptVersionInfo:
    try:
        return registry.load_prompt(name, PRODUCTION)
    except NotFoundError:
        pass  # a prompt nothing serves yet: show its newest version
    versions = registry.prompt_versions(name)
    if not versions:
        raise NotFoundError(f"prompt {name!r} has no versions", prompt=name)
    return versions[-1]


def _read_template(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path} is not UTF-8 text: {exc}", field="template") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}", field="template") from exc


def _lines(text: str) -> list[str]:
    # A last line without a newline would run into the next diff line.
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return lines


def _label(info: PromptVersionInfo, asked: str) -> str:
    label = f"{info.name} version {info.version}"
    return label if asked.isdigit() else f"{label} ({asked})"
