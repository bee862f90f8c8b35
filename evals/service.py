"""The I/O shell around the runner: run directories, resuming, MLflow tracking and baselines.

A run lives in ``$OPSLOOP_HOME/evals/<mlflow run id>/``: ``run.json`` (its key, data set, params,
and ``status``: ``running`` until it finishes) and ``samples.jsonl`` (the checkpoint). While a
process runs it, it holds an exclusive ``flock`` on the directory's ``.lock``.

Resuming. A run's *config key* hashes the data set's content and every param (the prompt as a
version number: an alias is resolved before the run, so a moved alias makes a new run). Unless
told otherwise, :meth:`EvalService.run` resumes the newest unfinished run with the same key that
no live process holds (a killed run), reopening its MLflow run, so nothing finished is scored
again; ``resume="never"`` starts afresh, and a run id resumes that run.

Baselines. ``--baseline production`` means: the newest finished run with the same key except that
the prompt is the version ``production`` points at now (the *base key* drops the prompt).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Literal

from evals.dataset import EvalDataset
from evals.gate import DEFAULT_GATE, GateReport, GateRule, compare
from evals.results import Checkpoint
from evals.runner import EvalConfig, EvalOutcome, EvalRunner
from evals.tracking import (
    TAG_BASE_KEY,
    TAG_CONFIG_KEY,
    TAG_DATASET,
    TAG_GATE,
    TAG_PROMPT_VERSION,
    EvalRunInfo,
    EvalTracker,
)
from opsloop.errors import ConflictError, InvalidInputError, NotFoundError
from opsloop.registry import Registry
from rag.answer import ensure_answer_prompt, load_answer_prompt

__all__ = ["EvalService", "Resume", "TrackedRun", "base_key", "config_key"]

Resume = Literal["auto", "never"] | str
"""``auto`` (continue a killed run with the same settings), ``never``, or the id of a run to continue."""
_RUN_FILE = "run.json"
_LOCK_FILE = ".lock"


def config_key(dataset: EvalDataset, config: EvalConfig) -> str:
    """The resume key: the data set's content and every param that can change a score."""
    return _key({"dataset": dataset.sha256, **_scoring_params(config)})


def base_key(dataset: EvalDataset, config: EvalConfig) -> str:
    """The baseline key: :func:`config_key` without the prompt."""
    params = _scoring_params(config)
    params.pop("prompt")
    return _key({"dataset": dataset.sha256, **params})


def _scoring_params(config: EvalConfig) -> dict[str, Any]:
    params = config.params()
    params.pop("concurrency")  # how fast, not what: a run resumes at another concurrency
    return params


def _key(data: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class TrackedRun:
    """A finished, tracked run."""

    run_id: str
    directory: Path
    config: EvalConfig
    outcome: EvalOutcome
    resumed_run: bool
    """Whether an unfinished earlier run was continued."""


class EvalService:
    """Runs, resumes, tracks and compares eval runs.

    Args:
        home: ``$OPSLOOP_HOME``; runs live in its ``evals`` folder.
        tracker: The MLflow side (started on first use).
        registry: Where the answer prompt's aliases resolve (started on first use).
    """

    def __init__(self, home: Path, tracker: EvalTracker, registry: Registry) -> None:
        self.root = home / "evals"
        self.tracker = tracker
        self.registry = registry

    # -- running --------------------------------------------------------------------------

    def resolve(self, config: EvalConfig) -> EvalConfig:
        """``config`` with its prompt alias resolved to a version number (retrieval-only: None).

        Raises:
            NotFoundError: No such prompt alias or version.
        """
        if not config.generate:
            return replace(config, prompt=None)
        self.registry.start()
        ensure_answer_prompt(self.registry)
        wanted = "production" if config.prompt is None else config.prompt
        return replace(config, prompt=load_answer_prompt(self.registry, wanted).version)

    async def run(
        self,
        runner: EvalRunner,
        dataset: EvalDataset,
        config: EvalConfig,
        *,
        resume: Resume = "auto",
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> TrackedRun:
        """Resolve the prompt, find or start the run, score it, and log it to MLflow.

        Raises:
            NotFoundError: ``resume`` names a run this home does not have.
            ConflictError: That run is held by a live process, or was made with other settings.
            OpsloopError: What the runner raised (the MLflow run is then ended FAILED, or KILLED
                when interrupted, and can be resumed).
        """
        asked = config.prompt
        # MLflow's calls block; on a server this coroutine runs on the loop that answers requests.
        config = await asyncio.to_thread(self.resolve, config)
        tracker = await asyncio.to_thread(self.tracker.start)
        key = config_key(dataset, config)
        # Every file of the run is read and written off the loop too: finding a run to resume
        # reads the state of every run this home kept, and each write ends in an fsync.
        claimed = await asyncio.to_thread(self._claim, key, resume)
        resumed = claimed is not None
        if claimed is None:
            params = {"dataset": dataset.name, "dataset_sha256": dataset.sha256, "samples": len(dataset)}
            run_id = await asyncio.to_thread(
                tracker.create_run,
                name or _run_name(dataset, config),
                {**params, **config.params()},
                {
                    TAG_DATASET: dataset.sha256,
                    TAG_CONFIG_KEY: key,
                    TAG_BASE_KEY: base_key(dataset, config),
                    TAG_PROMPT_VERSION: "" if config.prompt is None else str(config.prompt),
                    "opsloop.eval.dataset": dataset.name,
                    **({"opsloop.eval.prompt_asked": str(asked)} if asked is not None else {}),
                    **(tags or {}),
                },
            )
            directory = self.root / run_id
            state = {
                "run_id": run_id,
                "config_key": key,
                "status": "running",
                "dataset": dataset.name,
                "dataset_path": dataset.path,
                "params": config.params(),
                "created": time.time(),
            }
            lock = await asyncio.to_thread(_create, directory, state)
        else:
            directory, lock = claimed
            run_id = directory.name
        try:
            if resumed:
                await asyncio.to_thread(tracker.reopen, run_id)
            try:
                checkpoint = Checkpoint(directory)
                outcome = await runner.run(dataset, config, checkpoint)
                await asyncio.to_thread(checkpoint.rewrite, outcome.samples)  # now in data set order
                await asyncio.to_thread(
                    tracker.finish,
                    run_id,
                    outcome.summaries,
                    outcome.samples,
                    checkpoint.path,
                    seconds=outcome.seconds,
                )
                await asyncio.to_thread(_finish, directory)
            except BaseException as exc:
                killed = not isinstance(exc, Exception)  # KeyboardInterrupt, cancellation
                await asyncio.to_thread(tracker.fail, run_id, killed=killed)
                raise
        finally:
            lock.close()
        return TrackedRun(run_id, directory, config, outcome, resumed)

    def _claim(self, key: str, resume: Resume) -> tuple[Path, IO[str]] | None:
        """The run directory to resume and its lock (the caller closes it), or None to start a new one."""
        if resume == "never":
            return None
        if resume != "auto":
            directory = self.root / resume
            state = _read_state(directory)
            if state.get("config_key") != key:
                raise ConflictError(
                    f"eval run {resume} was made with other settings or another data set; "
                    "run it with the same options, or start a new run",
                    run_id=resume,
                )
            if state.get("status") == "finished":
                raise ConflictError(f"eval run {resume} has finished already", run_id=resume)
            return directory, _lock(directory)
        for directory in self._unfinished():
            if _read_state(directory).get("config_key") != key:
                continue
            try:
                return directory, _lock(directory)
            except ConflictError:
                continue  # a live process is running it
        return None

    def _unfinished(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        found = []
        for directory in self.root.iterdir():
            try:
                state = _read_state(directory)
            except NotFoundError:
                continue
            if state.get("status") == "running":
                found.append(directory)
        return sorted(found, key=_last_write, reverse=True)

    # -- baselines and the gate ----------------------------------------------------------

    def find_baseline(
        self,
        dataset: EvalDataset,
        config: EvalConfig,
        alias: str = "production",
        *,
        exclude: str | None = None,
    ) -> tuple[EvalConfig, EvalRunInfo | None]:
        """The baseline's config (prompt at ``alias``) and its newest finished run, if any."""
        base = self.resolve(replace(config, prompt=alias))
        runs = self.tracker.start().runs(
            limit=5, tags={TAG_CONFIG_KEY: config_key(dataset, base)}, status="FINISHED"
        )
        runs = [run for run in runs if run.run_id != exclude]
        return base, (runs[0] if runs else None)

    def compare(
        self,
        candidate: str,
        baseline: str,
        *,
        rules: tuple[GateRule, ...] = DEFAULT_GATE,
        confidence: float = 0.95,
        record: bool = True,
    ) -> GateReport:
        """Compare two finished runs by id; with ``record``, tag the candidate with the verdict.

        Raises:
            NotFoundError: A run does not exist or never finished.
            InvalidInputError: The runs evaluated different data sets with no question in common.
        """
        tracker = self.tracker.start()
        cand_info, base_info = tracker.get(candidate), tracker.get(baseline)
        report = compare(
            tracker.samples(candidate), tracker.samples(baseline), rules=rules, confidence=confidence
        )
        if report.paired == 0:
            raise InvalidInputError(
                f"runs {candidate} and {baseline} have no question in common "
                f"(data sets {cand_info.params.get('dataset')!r} and {base_info.params.get('dataset')!r})",
                field="baseline",
            )
        if record:
            verdict = (
                "passed" if report.passed else "failed: " + ",".join(c.metric for c in report.regressions)
            )
            tracker.set_tags(candidate, {TAG_GATE: verdict, "opsloop.eval.baseline_run": baseline})
        return report


def _last_write(directory: Path) -> float:
    samples = directory / Checkpoint.FILE
    return samples.stat().st_mtime if samples.exists() else (directory / _RUN_FILE).stat().st_mtime


def _run_name(dataset: EvalDataset, config: EvalConfig) -> str:
    prompt = "retrieval" if config.prompt is None else f"prompt-v{config.prompt}"
    return f"{dataset.name}-{config.collection}-{prompt}-{time.strftime('%Y%m%d-%H%M%S')}"


def _lock(directory: Path) -> IO[str]:
    fd = os.open(directory / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise ConflictError(
            f"eval run {directory.name} is being run by another process", run_id=directory.name
        ) from exc
    return handle


def _read_state(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / _RUN_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError) as exc:
        # The run id is what the caller knows; the folder is the server's (clients see this).
        raise NotFoundError(
            f"no eval run {directory.name} (see opsloop eval list)", run_id=directory.name
        ) from exc
    except json.JSONDecodeError as exc:
        raise NotFoundError(
            f"eval run {directory.name} has a damaged {_RUN_FILE}", run_id=directory.name
        ) from exc
    return data if isinstance(data, dict) else {}


def _create(directory: Path, state: dict[str, Any]) -> IO[str]:
    """Make a new run's directory and state file; return its lock, held."""
    directory.mkdir(parents=True, exist_ok=True)
    lock = _lock(directory)
    try:
        _write_state(directory, state)
    except BaseException:
        lock.close()
        raise
    return lock


def _finish(directory: Path) -> None:
    _write_state(directory, {**_read_state(directory), "status": "finished", "finished": time.time()})


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    tmp = directory / f"{_RUN_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, default=str), encoding="utf-8")
    tmp.replace(directory / _RUN_FILE)  # atomic: a kill never leaves half a state file
