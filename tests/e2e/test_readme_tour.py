"""The README's tour, run as a reader runs it: every command, in order, against a live server.

The shell commands of the ```sh blocks between "## A short tour" and "## Configuration" run
one by one with bash, in a folder laid out like a clone (the repository's entries linked in,
state in ``./.opsloop``), against a real ``opsloop serve``. The test substitutes only what a
reader must: the port, the keys the tour makes (``$ACME_USER_KEY``, ``$ACME_OPERATOR_KEY``)
and the reader's own files (``path/to/handbook``, ``reference.csv``, ...), which it makes.
A command naming a file or variable the test does not provide fails before anything runs,
naming it, so a new README command cannot slip through untested. The two commands at the
top of the README are what CI itself runs, so they are not repeated here.

Every command must exit 0 and every curl call must answer 2xx. Two exceptions, by design:
``audit tail --follow`` never ends, so it is stopped a second after it printed the newest
entries, and passes if it printed some; and the eval gate (``--baseline``) may exit 3, which
is its verdict that the candidate prompt regressed, not a failure of the command: whether
SmolLM2-135M's answers with an edited prompt score lower on 20 questions is the model's
business, not the README's. A crash there exits 1 and fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.server import Server, environment

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
TOUR = ("## A short tour", "## Configuration")
README_HOST = "localhost:8000"

# For the test only: by default a query's answer is up to 256 tokens written from 1500 tokens of
# sources, tens of seconds each on 2 busy cores. Shorter answers from less context run the same
# commands. The eval gate's 40 answers keep their own cap (`--max-answer-tokens`, 64) but read
# the shorter context too; they are most of this test's time.
SERVER_ENV = {
    "OPSLOOP_BOOTSTRAP_DOCS": "true",
    "OPSLOOP_RAG_MAX_ANSWER_TOKENS": "16",
    "OPSLOOP_RAG_CONTEXT_TOKENS": "384",
}
COMMAND_TIMEOUT_S = 300
FOLLOW_S = 60  # most seconds `audit tail --follow` may take to print the entries it starts with
GATE_EXIT_CODE = 3


def _handbook(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "keys.md").write_text(
        "# Rotating keys\n\nRotate keys every 90 days: create a new key with `opsloop keys create`, "
        "move your clients to it, then revoke the old key with `opsloop keys revoke`.\n"
    )
    (folder / "billing.md").write_text(
        "# Billing\n\nInvoices are sent on the first day of each month; refunds take 14 days.\n"
    )


def _mlflow_model(path: Path) -> None:
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) % 7})
    model = LogisticRegression().fit(frame, frame["a"] > 20)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlflow.sklearn.save_model(
        model, path, signature=infer_signature(frame), pip_requirements=["scikit-learn"]
    )


def _csv(path: Path, shift: float) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(int(shift))
    n = 400
    pd.DataFrame(
        {"amount": rng.normal(100 + shift, 15, n), "region": rng.choice(["eu", "us", "apac"], n)}
    ).to_csv(path, index=False)


def _questions(path: Path, topic: str) -> None:
    lines = [f"How do I {verb} {topic} number {i}?" for i in range(12) for verb in ("rotate", "list")]
    path.write_text("\n".join(lines) + "\n")


# The reader's own files the tour names, made by the test; anything else a command names must
# be in the clone, made by an earlier command, or written by the command itself.
READER_FILES: dict[str, Callable[[Path], None]] = {
    "path/to/handbook": _handbook,
    "path/to/mlflow-model": _mlflow_model,
    "reference.csv": lambda p: _csv(p, 0),
    "current.csv": lambda p: _csv(p, 20),
    "last_week.txt": lambda p: _questions(p, "API keys"),
    "this_week.txt": lambda p: _questions(p, "invoices"),
    "setup.md": lambda p: p.write_text("# Setup\n\nInstall the handbook tool with `pip install hb`.\n"),
    "faq.md": lambda p: p.write_text("# FAQ\n\nKeys expire after 90 days unless rotated earlier.\n"),
}
# Variables the tour uses without setting them: the keys of tenant acme it creates.
TOUR_KEYS = ("ACME_USER_KEY", "ACME_OPERATOR_KEY")


# What the README tells the reader to do by hand, done after the command that asks for it.
def _shorter_answers(path: Path) -> None:
    """The edit the README's ``--message "shorter answers"`` describes: one more instruction line."""
    first, rest = path.read_text().split("\n", 1)
    path.write_text(f"{first}\nKeep the answer to one short sentence.\n{rest}")


EDITS: dict[str, Callable[[Path], None]] = {"my_prompt.txt": _shorter_answers}
_ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=")
_VARIABLE = re.compile(r"\$\{?([A-Za-z_]\w*)")
_HOST = re.compile(r"\b(?:localhost|127\.0\.0\.1):(\d+)")
_CURL = re.compile(r"(?<![\w./-])curl ")
_STATUS = re.compile(r"^HTTP (\d{3})$", re.M)


def tour_commands(readme: str) -> list[str]:
    """The shell commands of the tour's ```sh blocks, in order, each as one (maybe multi-line) string."""
    start, end = TOUR
    assert start in readme and end in readme, f"README.md lost its {start!r} or {end!r} heading"
    section = readme.split(start, 1)[1].split(end, 1)[0]
    blocks = re.findall(r"^[ \t]*```sh\n(.*?)^[ \t]*```", section, re.S | re.M)
    commands: list[str] = []
    for block in blocks:
        current: list[str] = []
        for line in textwrap.dedent(block).splitlines():
            if not current and not line.strip():
                continue
            current.append(line)
            if line.endswith("\\"):
                continue
            try:
                shlex.split("\n".join(current), comments=True)
            except ValueError:  # an open quote: the command goes on on the next line
                continue
            commands.append("\n".join(current))
            current = []
        assert not current, f"unterminated command in README.md: {current}"
    return commands


def _paths(command: str) -> tuple[list[str], list[str]]:
    """Local paths ``command`` names, and those among them it writes (``> f``, ``-o f``, ``tee f``)."""
    tokens = shlex.split(command, comments=True)
    named, written = [], []
    for before, token in zip(["", *tokens], tokens, strict=False):
        candidate = token.split("=@", 1)[1] if "=@" in token else token.removeprefix("@")
        candidate = candidate.strip("()")
        if candidate.startswith("-") or re.search(r"[\s:${}\"']", candidate) or not candidate:
            continue  # an option, a URL, a header, a JSON body, a variable
        if "/" in candidate or re.search(r"\.[A-Za-z]\w{1,4}$", candidate):
            named.append(candidate)
            if before in (">", "-o", "--output", "tee"):
                written.append(candidate)
    return named, written


def check_placeholders(command: str, workdir: Path, variables: set[str]) -> None:
    """Fail, naming it, on a file or variable of ``command`` that nobody provides."""
    named, written = _paths(command)
    missing = [p for p in named if p not in written and not (workdir / p).exists()]
    assert not missing, (
        f"README tour command {command!r} names {missing}: not in the clone, not made by an earlier "
        "command and not a reader's file this test makes (add it to READER_FILES)"
    )
    assigned = {m.group(1)} if (m := _ASSIGNMENT.match(command)) else set()
    unknown = sorted(set(_VARIABLE.findall(command)) - variables - assigned)
    assert not unknown, f"README tour command {command!r} uses ${unknown}, which nothing sets (map it here)"
    ports = {port for port in _HOST.findall(command) if port != README_HOST.split(":")[1]}
    assert not ports, f"README tour command {command!r} uses port(s) {ports}; the tour's server is on 8000"


@dataclass
class Ran:
    command: str
    returncode: int | None  # None: stopped after its time was up
    stdout: str
    stderr: str


def _run(command: str, env: dict[str, str], cwd: Path, timeout: float, *, until_output: bool = False) -> Ran:
    """``command`` in bash with pipefail (a failing curl before ``| tee`` counts).

    It runs in a session of its own, so stopping it at ``timeout`` ends the whole pipeline, not
    just bash. ``until_output``: stop it a second after it first printed (``--follow``).
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            ["bash", "-c", f"set -o pipefail\n{command}"],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            if until_output and os.fstat(out.fileno()).st_size:
                time.sleep(1)
                break
            time.sleep(0.1)
        returncode = proc.poll()
        if returncode is None:
            os.killpg(proc.pid, signal.SIGINT)  # the group this test started, by its leader's pid
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.seek(0)
        err.seek(0)
        return Ran(command, returncode, out.read(), err.read())


def _created_key(command: str, stdout: str) -> tuple[str, str] | None:
    """(variable, key) when ``command`` created an API key: ``ACME_USER_KEY`` for tenant acme's user."""
    if "/admin/keys" in command and "-X POST" in command:
        body = json.loads(stdout)
        return f"{body['tenant']}_{body['role']}_KEY".upper(), body["key"]
    tokens = shlex.split(command, comments=True)
    if tokens[1:3] == ["keys", "create"]:
        tenant, role = tokens[tokens.index("--tenant") + 1], tokens[tokens.index("--role") + 1]
        return f"{tenant}_{role}_KEY".upper(), stdout.strip().splitlines()[-1]
    return None


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[Path]:
    """A folder that looks like the clone to the tour's commands, with the reader's files in it."""
    work = tmp_path / "clone"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".opsloop", ".git"):
            (work / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name, make in READER_FILES.items():
        make(work / name)
    yield work


def test_readme_commands_are_found() -> None:
    commands = tour_commands(README.read_text(encoding="utf-8"))
    assert len(commands) > 30 and commands[0] == "KEY=$(cat .opsloop/admin.key)", commands[:2]
    assert any("localhost:8000/feedback/credit-risk" in c for c in commands)
    assert not any(c.startswith("./dev") for c in commands)  # the two commands CI runs itself


def test_an_unmapped_placeholder_is_named(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"names \['path/to/wiki'\]"):
        check_placeholders("opsloop ingest path/to/wiki --collection w", tmp_path, set())
    with pytest.raises(AssertionError, match=r"uses \$\['GLOBEX_USER_KEY'\]"):
        check_placeholders('curl -s -H "Authorization: Bearer $GLOBEX_USER_KEY" x', tmp_path, {"KEY"})
    check_placeholders("opsloop drift compare --format html -o new.html", tmp_path, set())  # an output


def _run_tour_command(command: str, env: dict[str, str], clone: Path, port: str) -> Ran:
    """Run one README command as the reader would, on the test's port; fail unless it worked."""
    runnable = _CURL.sub("curl -w '%{stderr}HTTP %{http_code}\\n' ", command)  # each status, on stderr
    runnable = runnable.replace(README_HOST, f"localhost:{port}")
    if assignment := _ASSIGNMENT.match(command):  # `NAME=$(...)`: print NAME for the next commands
        runnable = f'set -e\n{runnable}\nprintf %s "${assignment.group(1)}"'
    follow = "--follow" in command.split()
    started = time.monotonic()
    if follow:
        done = _run(runnable, env, clone, FOLLOW_S, until_output=True)
    else:
        done = _run(runnable, env, clone, COMMAND_TIMEOUT_S)
    seconds = time.monotonic() - started
    said = f"README command {command!r} ({seconds:.0f} s)\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    if follow:
        assert done.returncode in (None, 0) and done.stdout.strip(), said
    elif "--baseline" in command:
        assert done.returncode in (0, GATE_EXIT_CODE), said
        assert "production" in done.stdout, said  # the gate's comparison was printed
    else:
        assert done.returncode == 0, said
    statuses = _STATUS.findall(done.stderr)
    assert len(statuses) == len(_CURL.findall(command)), said
    assert all(s.startswith("2") for s in statuses), said
    print(f"{seconds:6.1f} s  {command.splitlines()[0][:100]}", file=sys.stderr)  # shown with -s
    return done


# About 30 CLI starts, a demo training and the eval gate's 40 SmolLM2 answers: 4.5 minutes on 2
# cores at load 5, 8.5 at load 8 (other work sharing them); the suite's default limit is 600 s.
@pytest.mark.timeout(1200)
def test_the_readme_tour_runs_against_a_live_server(clone: Path) -> None:
    commands = tour_commands(README.read_text(encoding="utf-8"))
    home = clone / ".opsloop"
    server = Server(home, env=SERVER_ENV)
    try:
        server.wait_for("/readyz", 200, seconds=240)
        port = server.url.rsplit(":", 1)[1]
        # The reader's shell: no OPSLOOP_HOME (state is ./.opsloop of the clone), the tour's variables.
        env = {k: v for k, v in environment(home).items() if not k.startswith("OPSLOOP_")}
        env["PYTHONUNBUFFERED"] = "1"  # so what `--follow` prints reaches its file while it runs
        for command in commands:
            check_placeholders(command, clone, {*TOUR_KEYS, *env})
            done = _run_tour_command(command, env, clone, port)
            if assignment := _ASSIGNMENT.match(command):
                env[assignment.group(1)] = done.stdout
            if key := _created_key(command, done.stdout):
                env[key[0]] = key[1]
            for name, edit in EDITS.items():
                if f"> {name}" in command:
                    edit(clone / name)
        missing = [name for name in TOUR_KEYS if name not in env]
        assert not missing, f"the tour used {missing} but made no such key"
    finally:
        assert server.stop() == 0, "".join(server.output)
