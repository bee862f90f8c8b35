"""Eval runs in MLflow: one MLflow run per eval run, in the ``opsloop-evals`` experiment.

What a run holds, so MLflow's own client and UI show everything::

    params    dataset, dataset_sha256, collection, tenant, top_k, prompt, route, generate,
              judge (and judge_*), metrics, max_answer_tokens, concurrency
    metrics   <metric>            the mean over scored samples (only when some were scored)
              <metric>.ci_low, <metric>.ci_high    its 95 % bootstrap interval
              <metric>.scored, <metric>.failed, <metric>.undefined    sample counts
              samples, seconds
    tags      opsloop.kind=eval, opsloop.eval.dataset_sha256, opsloop.eval.config_key (the
              resume key), opsloop.eval.base_key (the config without the prompt: how a
              baseline is matched), opsloop.eval.prompt_version, opsloop.eval.gate
    artifacts samples.jsonl       every SampleResult, as checkpointed
              per_sample.json     the per-sample table (MLflow's table format)
              summary.json        the metric summaries

MlflowExceptions are translated at this boundary: an unknown run is a ``NotFoundError``, the rest
``BackendError``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.results import MetricSummary, SampleResult
from opsloop.errors import BackendError, ConfigError, NotFoundError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["EVAL_EXPERIMENT", "TAG_BASE_KEY", "TAG_CONFIG_KEY", "EvalRunInfo", "EvalTracker"]

EVAL_EXPERIMENT = "opsloop-evals"
TAG_KIND = "opsloop.kind"
TAG_DATASET = "opsloop.eval.dataset_sha256"
TAG_CONFIG_KEY = "opsloop.eval.config_key"
TAG_BASE_KEY = "opsloop.eval.base_key"
TAG_PROMPT_VERSION = "opsloop.eval.prompt_version"
TAG_GATE = "opsloop.eval.gate"
_SAMPLES = "samples.jsonl"
_STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")


@dataclass(frozen=True)
class EvalRunInfo:
    """An eval run as MLflow has it."""

    run_id: str
    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)

    def summary(self, metric: str) -> dict[str, float | None]:
        """A metric's mean, interval and counts as logged (None where not logged)."""
        m = self.metrics
        return {
            "mean": m.get(metric),
            "ci_low": m.get(f"{metric}.ci_low"),
            "ci_high": m.get(f"{metric}.ci_high"),
            "scored": m.get(f"{metric}.scored"),
            "failed": m.get(f"{metric}.failed"),
            "undefined": m.get(f"{metric}.undefined"),
        }

    def metric_names(self) -> list[str]:
        """The metrics this run reports (those with a ``.scored`` count)."""
        return [key.removesuffix(".scored") for key in self.metrics if key.endswith(".scored")]


class EvalTracker:
    """Eval runs in an MLflow tracking store (the registry's; see the module docs).

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///home/mlflow.db``.
        artifact_root: Artifact root of the ``opsloop`` experiment; eval runs keep theirs in
            its ``evals`` folder.
    """

    def __init__(self, tracking_uri: str, artifact_root: str) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root.rstrip("/") + "/evals"
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    def start(self) -> EvalTracker:
        """Open the client and ensure the experiment; returns self.

        Raises:
            ConfigError: MLflow is not installed.
            BackendError: The store cannot be opened.
        """
        if self._client is not None:
            return self
        try:
            from mlflow import MlflowClient
        except ImportError as exc:
            raise ConfigError("eval tracking needs MLflow: pip install 'mlflow>=3.1'") from exc
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        client = MlflowClient(tracking_uri=self.tracking_uri)
        with _translated(f"experiment {EVAL_EXPERIMENT!r}"):
            experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
            if experiment is None:
                from mlflow.exceptions import MlflowException

                try:
                    self._experiment_id = client.create_experiment(
                        EVAL_EXPERIMENT, artifact_location=self.artifact_root
                    )
                except MlflowException as exc:  # a racing process created it
                    experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
                    if experiment is None:
                        raise exc from None
            if experiment is not None:
                if experiment.lifecycle_stage == "deleted":
                    client.restore_experiment(experiment.experiment_id)
                self._experiment_id = str(experiment.experiment_id)
        self._client = client
        return self

    @property
    def experiment_id(self) -> str:
        """The ``opsloop-evals`` experiment's id."""
        self._started()
        if self._experiment_id is None:  # pragma: no cover - start() sets both
            raise RuntimeError("EvalTracker.start() was not called")
        return self._experiment_id

    # -- writing --------------------------------------------------------------------------

    def create_run(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Start an MLflow run with ``params`` and ``tags``; returns its id."""
        from mlflow.entities import Param

        client = self._started()
        with _translated(f"creating eval run {name!r}"):
            run = client.create_run(self.experiment_id, run_name=name, tags={TAG_KIND: "eval", **tags})
            run_id = str(run.info.run_id)
            client.log_batch(run_id, params=[Param(k, _param(v)) for k, v in sorted(params.items())])
        return run_id

    def reopen(self, run_id: str) -> None:
        """Mark a killed or failed run as running again (it is being resumed)."""
        client = self._started()
        with _translated(f"eval run {run_id}", run_id=run_id):
            client.update_run(run_id, status="RUNNING")

    def finish(
        self,
        run_id: str,
        summaries: Mapping[str, MetricSummary],
        samples: list[SampleResult],
        checkpoint: Path,
        *,
        seconds: float,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Log the summaries, the per-sample table and the checkpoint; end the run FINISHED."""
        from mlflow.entities import Metric, RunTag

        client = self._started()
        metrics: dict[str, float] = {"samples": float(len(samples)), "seconds": float(seconds)}
        for name, summary in summaries.items():
            if summary.mean is not None:  # never log a NaN: a metric nobody scored is left out
                metrics[name] = summary.mean
                metrics[f"{name}.ci_low"] = float(summary.ci_low or 0.0)
                metrics[f"{name}.ci_high"] = float(summary.ci_high or 0.0)
            metrics[f"{name}.scored"] = float(summary.scored)
            metrics[f"{name}.failed"] = float(summary.failed)
            metrics[f"{name}.undefined"] = float(summary.undefined)
        with _translated(f"logging eval run {run_id}", run_id=run_id):
            import time

            now = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                tags=[RunTag(k, v) for k, v in (tags or {}).items()],
            )
            client.log_artifact(run_id, str(checkpoint))
            client.log_table(run_id, data=_table(samples), artifact_file="per_sample.json")
            client.log_dict(run_id, {k: s.to_dict() for k, s in summaries.items()}, "summary.json")
            client.set_terminated(run_id, status="FINISHED")

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Add tags to a run (e.g. the gate's verdict)."""
        client = self._started()
        with _translated(f"tagging eval run {run_id}", run_id=run_id):
            for key, value in tags.items():
                client.set_tag(run_id, key, value)

    def fail(self, run_id: str, *, killed: bool = False) -> None:
        """End a run FAILED (or KILLED: interrupted, resumable)."""
        client = self._started()
        with _translated(f"ending eval run {run_id}", run_id=run_id):
            client.set_terminated(run_id, status="KILLED" if killed else "FAILED")

    # -- reading --------------------------------------------------------------------------

    def get(self, run_id: str) -> EvalRunInfo:
        """One eval run.

        Raises:
            NotFoundError: No such run, or it is no eval run.
        """
        client = self._started()
        with _translated(f"eval run {run_id!r}", run_id=run_id):
            run = client.get_run(run_id)
        if run.data.tags.get(TAG_KIND) != "eval":
            raise NotFoundError(f"run {run_id!r} is not an eval run", run_id=run_id)
        return _info(run)

    def runs(
        self,
        *,
        limit: int = 20,
        tags: Mapping[str, str] | None = None,
        status: str | None = None,
    ) -> list[EvalRunInfo]:
        """Eval runs, newest first, optionally only those with ``tags`` and ``status``."""
        client = self._started()
        filters = [f"tags.`{TAG_KIND}` = 'eval'"]
        filters += [f"tags.`{k}` = '{_quoted(v)}'" for k, v in (tags or {}).items()]
        if status is not None:
            if status not in _STATUSES:
                raise ValueError(f"status must be one of {_STATUSES}")
            filters.append(f"attributes.status = '{status}'")
        with _translated("listing eval runs"):
            found = client.search_runs(
                [self.experiment_id],
                filter_string=" and ".join(filters),
                order_by=["attributes.start_time DESC"],
                max_results=limit,
            )
        return [_info(run) for run in found]

    def samples(self, run_id: str) -> list[SampleResult]:
        """The per-sample results of a finished run, from its ``samples.jsonl`` artifact.

        Raises:
            NotFoundError: No such run, or it has no samples artifact (it never finished).
        """
        client = self._started()
        with (
            tempfile.TemporaryDirectory() as tmp,
            _translated(f"samples of eval run {run_id!r}", run_id=run_id),
        ):
            try:
                path = client.download_artifacts(run_id, _SAMPLES, tmp)
            except OSError as exc:
                raise NotFoundError(
                    f"eval run {run_id!r} has no {_SAMPLES} (did it finish?)", run_id=run_id
                ) from exc
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        return [SampleResult.from_dict(json.loads(line)) for line in lines if line.strip()]

    def _started(self) -> MlflowClient:
        if self._client is None:
            raise RuntimeError("EvalTracker.start() was not called")
        return self._client


def _param(value: Any) -> str:
    return "" if value is None else str(value)


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"tag values with quotes cannot be searched for: {value!r}")
    return value


def _table(samples: list[SampleResult]) -> dict[str, list[Any]]:
    metrics = sorted({name for s in samples for name in (*s.scores, *s.failures, *s.undefined)})
    table: dict[str, list[Any]] = {
        "id": [s.id for s in samples],
        "question": [s.question for s in samples],
        "reference": [s.reference for s in samples],
        "answer": [s.answer for s in samples],
        "sources": [", ".join(s.sources) for s in samples],
        "error": [s.error for s in samples],
    }
    for name in metrics:
        table[name] = [s.scores.get(name) for s in samples]
        table[f"{name}.outcome"] = [
            s.outcome(name) if name not in s.failures else s.failures[name] for s in samples
        ]
    return table


def _info(run: Run) -> EvalRunInfo:
    info = run.info
    return EvalRunInfo(
        run_id=str(info.run_id),
        name=str(info.run_name or ""),
        status=str(info.status),
        start_ms=info.start_time,
        end_ms=info.end_time,
        params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        tags=dict(run.data.tags),
    )


@contextmanager
def _translated(what: str, **details: Any) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        code = str(exc.error_code)
        if code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise NotFoundError(f"{what}: {exc.message}", **details) from exc
        raise BackendError(f"{what}: {exc.message}", **details, mlflow_error=code) from exc
