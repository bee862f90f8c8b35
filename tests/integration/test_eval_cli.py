"""``opsloop eval`` as a user runs it: a run killed with SIGKILL resumes, and the gate's exit code.

Every command is a real ``opsloop`` process on one temporary home (two of the bundled docs in
collection ``docs``, eight golden questions, answers capped at 16 tokens).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from opsloop.registry import Registry
from opsloop.settings import load_settings
from rag.answer import ANSWER_PROMPT

REPO = Path(__file__).resolve().parents[2]
DOCS = ("index.md", "rag.md")
BROKEN_PROMPT = (
    "Sources: {{context}}\nQuestion: {{question}}\n\n"
    "Forget the question. Write a short poem about the sea.\nPoem:"
)
OPSLOOP = [str(Path(sys.executable).with_name("opsloop"))]
RUN = [
    "eval",
    "run",
    "--collection",
    "docs",
    "--top-k",
    "3",
    "--max-answer-tokens",
    "16",
    "--concurrency",
    "1",
]
RUN += ["--metric", "hit_rate", "--metric", "rouge_score", "--metric", "semantic_similarity"]
ITEMS = 8
"""Golden questions in the set: fewer short SmolLM2 answers leave the gate's interval too wide to tell."""


def _opsloop(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OPSLOOP, "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home.parent,
        check=False,
    )


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.stdout.strip(), done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evalcli")
    docs = root / "docs"
    docs.mkdir()
    for name in DOCS:
        shutil.copy(REPO / "docs" / name, docs / name)
    done = _opsloop(root / "home", "ingest", str(docs), "--collection", "docs")
    assert done.returncode == 0, done.stderr[-2000:]
    golden = (REPO / "evals" / "datasets" / "docs_golden.jsonl").read_text(encoding="utf-8").splitlines()
    items = [
        line for line in golden if line.strip() and set(json.loads(line)["reference_sources"]) <= set(DOCS)
    ]
    (root / "set.jsonl").write_text("\n".join(items[:ITEMS]) + "\n", encoding="utf-8")
    return root / "home"


def _checkpoints(home: Path) -> list[Path]:
    return sorted((home / "evals").glob("*/samples.jsonl"))


def test_a_killed_run_resumes_without_rescoring_and_a_broken_prompt_fails_the_gate(home: Path) -> None:
    dataset = str(home.parent / "set.jsonl")
    command = [*OPSLOOP, "--home", str(home), *RUN, "--dataset", dataset, "--format", "json"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=home.parent, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and process.poll() is None:
            files = _checkpoints(home)
            if files and files[0].read_text(encoding="utf-8").count("\n") >= 1:
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    (checkpoint,) = _checkpoints(home)
    run_id = checkpoint.parent.name
    before = [line for line in checkpoint.read_text(encoding="utf-8").splitlines() if line]
    assert 1 <= len(before) < ITEMS
    state = json.loads((checkpoint.parent / "run.json").read_text(encoding="utf-8"))
    assert state["status"] == "running"

    # The same command again continues the killed run and scores only the rest.
    done = _opsloop(home, *RUN, "--dataset", dataset, "--format", "json")
    assert done.returncode == 0, done.stderr[-2000:]
    body = _json(done)
    assert body["run_id"] == run_id
    assert (body["samples"], body["resumed_samples"]) == (ITEMS, len(before))
    assert body["summaries"]["semantic_similarity"]["scored"] == ITEMS
    after = [json.loads(line) for line in checkpoint.read_text(encoding="utf-8").splitlines() if line]
    assert len({s["id"] for s in after}) == ITEMS
    for line in before:  # the finished samples were kept as they were, not scored again
        kept = json.loads(line)
        assert next(s for s in after if s["id"] == kept["id"]) == kept
    listed = _json(_opsloop(home, "eval", "list", "--format", "json"))
    assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "FINISHED")]

    # A deliberately broken prompt version, gated against production (the run above).
    settings = load_settings(home=home)
    registry = Registry(settings.tracking_uri, settings.artifact_root).start()
    try:
        broken = registry.register_prompt(ANSWER_PROMPT, BROKEN_PROMPT, commit_message="broken on purpose")
    finally:
        registry.close()
    # Two answer-quality metrics: on a few short answers one can miss a real regression.
    gate = ["--gate", "semantic_similarity", "--gate", "rouge_score", "--gate", "hit_rate"]
    args = [*RUN, "--dataset", dataset, "--prompt-version", str(broken.version), "--baseline", "production"]
    done = _opsloop(home, *args, *gate, "--format", "json")
    assert done.returncode == 3, done.stderr[-2000:]
    body = _json(done)
    assert body["gate"]["baseline_run"] == run_id
    assert body["gate"]["passed"] is False
    regressions = body["gate"]["regressions"]
    assert regressions and set(regressions) <= {"semantic_similarity", "rouge_score"}
    candidate = body["run_id"]

    text = _opsloop(home, "eval", "compare", candidate, run_id, *gate)
    assert text.returncode == 3
    assert regressions[0] in text.stdout and "gate failed" in text.stdout
    assert _opsloop(home, "eval", "compare", run_id, run_id).returncode == 0
    shown = _json(_opsloop(home, "eval", "show", candidate, "--format", "json"))
    assert shown["params"]["prompt"] == str(broken.version)
    assert shown["gate"] == "failed: " + ", ".join(regressions)
    assert len(shown["samples"]) == ITEMS
