"""Experiments as a service: create, list, show, stop, promote, roll back and approve, each for a caller.

Every operation takes the caller (:class:`~opsloop.auth.Principal`): reading needs a viewer,
acting an operator; an experiment belongs to its creator's tenant and other tenants do not
see it. Each action is audited with the numbers that justified it. The decider
(:mod:`workflows.experiments.decider`) acts through the same methods as the system caller.

Targets: a classical model's ``champion`` against a challenger version (its A/B tests decide
on labelled ``accuracy``), and a prompt's ``production`` version against a candidate version:
``/query`` answers the routed share with the candidate, A/B tests decide on ``answer_score``
(``/feedback/query``), and a promotion moves ``production``. A prompt A/B test may instead be
decided by an eval on a data set (primary ``eval:METRIC``, :mod:`~workflows.experiments.evaluation`).
And a gateway route (``/v1/chat/completions``' ``model``) against another configured route:
the challenger route's backends answer the routed share, A/B tests decide on ``latency_ms``
by default (or ``error_rate``, ``cost_per_request``), and a promotion makes the challenger
serve the route's name (:mod:`opsloop.llm.aliases`); a shadow copies each call the champion
answered to the challenger route (which must share no backend with the champion, or the copies
would slow the callers). Shadows of a prompt are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from opsloop.audit import AuditLog
from opsloop.auth import Principal, Role
from opsloop.errors import ConflictError, InvalidInputError, NotFoundError
from opsloop.llm.aliases import RouteAliases, applicable
from opsloop.registry import Registry
from opsloop.tables import utcnow
from opsloop.traffic import CHALLENGER, CHAMPION, TargetKind
from workflows import prompts
from workflows.experiments.evaluation import eval_metric
from workflows.experiments.labels import LabelSource
from workflows.experiments.metrics import PRIMARY_METRICS
from workflows.experiments.policy import DEFAULT_STEPS, Policy
from workflows.experiments.store import ENDED, Experiment, ExperimentStore, Kind, VariantSamples, new_salt

if TYPE_CHECKING:
    from opsloop.llm.routes import RouteConfig

__all__ = ["ExperimentPlan", "ExperimentReport", "ExperimentService", "VariantReport"]

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
PRODUCTION = "production"
"""The prompt alias that is served; a prompt experiment's champion."""
DEFAULT_EVAL_PRIMARY = "eval:semantic_similarity"
"""What an experiment with an eval data set decides on when it names no primary metric."""
_FEEDBACK_METRIC = {"model": "accuracy", "prompt": "answer_score"}
"""The primary each target kind decides on by default, read from its feedback; a route has none."""
DEFAULT_ROUTE_PRIMARY = "latency_ms"


@dataclass(frozen=True)
class ExperimentPlan:
    """What ``experiments create`` asks for."""

    name: str
    kind: Kind
    target_kind: TargetKind
    target: str
    challenger: str
    weight: float | None = None
    """The challenger's share in percent (``ab``; default 50)."""
    steps: Sequence[float] = DEFAULT_STEPS
    """The canary's weights in percent, rising to 100."""
    primary: str | None = None
    """The metric an A/B test decides on; None: ``accuracy`` for a model, ``answer_score`` for a
    prompt, ``latency_ms`` for a route."""
    guardrails: Sequence[str] = ()
    """Specs such as ``error_rate:0.01`` or ``p99_ms:+20%``; defaults fill the rest."""
    min_samples: int = 200
    """Requests per variant before a step or a decision may be taken."""
    require_approval: bool = False
    evaluation: Mapping[str, Any] | None = None
    """For a primary ``eval:METRIC``: ``dataset`` (a path), ``collection``, and optionally
    ``limit`` (first N questions), ``route`` (answers) and ``judge`` (judge metrics)."""


@dataclass(frozen=True)
class VariantReport:
    """One variant's outcomes so far."""

    name: str
    version: str
    weight: float
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p99_ms: float | None
    cost_per_request: float
    labelled: int
    """Instances with a label (a model), or answers with a score (a prompt)."""
    accuracy: float | None
    """A model's share of labelled instances it got right."""
    agreement: float | None
    """A shadow's share of answers equal to the champion's (None for routed variants)."""
    answer_score: float | None = None
    """A prompt's mean ``/feedback/query`` score of its answers."""


@dataclass(frozen=True)
class ExperimentReport:
    """An experiment with its variants' outcomes, its latest tests and its decision."""

    name: str
    kind: Kind
    target: dict[str, str]
    status: str
    step: int
    steps: list[float]
    config: dict[str, Any]
    variants: list[VariantReport]
    tests: list[dict[str, Any]]
    decision: dict[str, Any] | None
    created_at: str
    created_by: str
    ended_at: str | None = None


def variant_report(
    name: str,
    version: str,
    weight: float,
    samples: VariantSamples,
    feedback: np.ndarray,
    *,
    scores: bool = False,
) -> VariantReport:
    """Summarise one variant's samples; ``feedback`` holds correct flags, or answer scores if ``scores``."""
    latency = samples.latency_ms
    errors = int((~samples.ok).sum())
    mean = float(feedback.mean()) if feedback.size else None
    return VariantReport(
        name=name,
        version=version,
        weight=weight,
        requests=samples.requests,
        errors=errors,
        error_rate=errors / samples.requests if samples.requests else 0.0,
        p50_ms=float(np.percentile(latency, 50)) if latency.size else None,
        p99_ms=float(np.percentile(latency, 99)) if latency.size else None,
        cost_per_request=float(samples.cost_usd.mean()) if samples.cost_usd.size else 0.0,
        labelled=int(feedback.size),
        accuracy=None if scores else mean,
        agreement=float(samples.agreed.mean()) if samples.agreed.size else None,
        answer_score=mean if scores else None,
    )


class ExperimentService:
    """Experiments on classical models, for callers.

    Args:
        store: Where experiments and outcomes live.
        registry: The model registry (versions and aliases).
        audit: The audit log.
        labels: The labelled predictions of an experiment (from ``/feedback``).
        loadable: Raises when a model version cannot be served (the serving runtime's loader).
        prompt_checks: For a prompt that is served, what its templates must satisfy (raises
            ``InvalidInputError`` otherwise): the RAG answerer's own check for ``rag-answer``.
        eval_check: Checks an eval-decided experiment's metric and eval settings and returns
            them as stored (the data set's path made absolute); raises ``InvalidInputError``.
            None: this process cannot plan evals, and such experiments are refused.
        routes: The stored route aliases, which a route experiment's promotion moves; None:
            route experiments are refused.
        llm_routes: The gateway's configured routes (``Settings.llm_routes``).
    """

    def __init__(
        self,
        store: ExperimentStore,
        registry: Registry,
        audit: AuditLog,
        labels: LabelSource,
        loadable: Any,
        prompt_checks: Mapping[str, Callable[[str], None]] | None = None,
        eval_check: Callable[[str, Mapping[str, Any]], dict[str, Any]] | None = None,
        *,
        routes: RouteAliases | None = None,
        llm_routes: Mapping[str, RouteConfig] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.audit = audit
        self.labels = labels
        self.loadable = loadable
        self.prompt_checks = prompt_checks or {}
        self.eval_check = eval_check
        self.routes = routes
        self.route_backends = {n: [b.name for b in r.backends] for n, r in (llm_routes or {}).items()}
        """Each configured route's backends, by name."""

    def create(self, caller: Principal, plan: ExperimentPlan) -> Experiment:
        """Start an experiment; its challenger takes traffic within the servers' poll interval.

        Raises:
            ForbiddenError: The caller is below operator.
            InvalidInputError: A bad name, kind, weight, step, guardrail or target kind, a
                prompt opsloop does not serve, a candidate template its answerer refuses, a
                shadow of a prompt, or one of a route on backends the champion route uses.
            NotFoundError: No such model, prompt, version or route, or no champion (production) version.
            ConflictError: The name is taken, an experiment already runs on the target, the
                challenger is the champion, or it cannot be served.
        """
        caller.require(Role.OPERATOR, "starting an experiment")
        if not plan.name or len(plan.name) > 64 or not set(plan.name) <= _NAME_CHARS:
            raise InvalidInputError(
                f"experiment name {plan.name!r}: use 1-64 lowercase letters, digits, '-', '_' or '.'",
                field="name",
            )
        config = self._config(plan)
        champion: int | str
        challenger: int | str
        if plan.target_kind == "model":
            champion, challenger = self._model_versions(plan)
        elif plan.target_kind == "prompt":
            champion, challenger = self._prompt_versions(plan)
        elif plan.target_kind == "route":
            champion, challenger = self._routes(plan)
        else:
            raise InvalidInputError(
                f"target kind {plan.target_kind!r}: use model, prompt or route", field="target"
            )
        weight = {"ab": config["weight"], "canary": config["steps"][0], "shadow": 0.0}[plan.kind]
        now = utcnow()
        experiment = self.store.create(
            Experiment(
                name=plan.name,
                tenant=caller.tenant,
                kind=plan.kind,
                target_kind=plan.target_kind,
                target=plan.target,
                champion=str(champion),
                challenger=str(challenger),
                status="running",
                weight=weight,
                step=0,
                step_started_at=now,
                salt=new_salt(),
                config=config,
                checks={"failed": 0},
                decision=None,
                created_at=now,
                created_by=caller.actor,
            )
        )
        self._audit(caller, "experiment.create", experiment, after={"weight": weight, **config})
        return experiment

    def _model_versions(self, plan: ExperimentPlan) -> tuple[int, int]:
        from workflows import promotion  # the model runtime and SciPy: not for list and show

        champion = self.registry.get_alias(plan.target, promotion.CHAMPION).version
        challenger = self.registry.get_version(plan.target, plan.challenger).version
        if challenger == champion:
            raise ConflictError(
                f"version {challenger} already is {plan.target!r}'s champion; pick another challenger",
                model=plan.target,
            )
        try:
            self.loadable(self.registry, plan.target, challenger)
        except Exception as exc:  # a broken artifact raises anything; serving would fail the same way
            raise ConflictError(
                f"version {challenger} of {plan.target!r} cannot be served,"
                f" so it cannot be a challenger: {exc}",
                model=plan.target,
            ) from exc
        return champion, challenger

    def _prompt_versions(self, plan: ExperimentPlan) -> tuple[int, int]:
        if plan.kind == "shadow":
            # Both prompts answer on the same LLM backends, which serve a bounded number of calls
            # at once: the copies would queue with the queries they copy (as for a route).
            raise InvalidInputError(
                "a shadow experiment on a prompt is not available: its copies would generate on the"
                " same LLM backends as the answers they copy and slow the callers; run an ab test"
                " (on feedback or an eval) or a canary",
                field="kind",
            )
        check = self.prompt_checks.get(plan.target)
        if check is None:
            raise InvalidInputError(
                f"prompt {plan.target!r} is not served by opsloop, so it has no traffic to split;"
                f" prompts that are: {', '.join(sorted(self.prompt_checks)) or 'none'}",
                field="prompt",
            )
        champion = self.registry.load_prompt(plan.target, PRODUCTION)
        candidate = self.registry.load_prompt(plan.target, plan.challenger)
        if candidate.version == champion.version:
            raise ConflictError(
                f"version {candidate.version} already is the {PRODUCTION} version of prompt"
                f" {plan.target!r}; pick another candidate",
                prompt=plan.target,
            )
        check(candidate.template)  # a template the answerer would refuse never takes traffic
        return champion.version, candidate.version

    def _routes(self, plan: ExperimentPlan) -> tuple[str, str]:
        """The route serving ``plan.target`` now (its alias, else itself) and the challenger route."""
        if self.routes is None:
            raise InvalidInputError("this process cannot run experiments on routes", field="route")
        routes = self.route_backends
        for field, route in (("route", plan.target), ("challenger", plan.challenger)):
            if route not in routes:
                known = ", ".join(routes) or "none"
                raise NotFoundError(f"no route {route!r}; the gateway's routes: {known}", field=field)
        champion = applicable(self.routes.all(), routes).get(plan.target, plan.target)
        if plan.challenger == champion:
            raise ConflictError(
                f"route {champion!r} already serves {plan.target!r}; pick another challenger route",
                route=plan.target,
            )
        shared = [b for b in routes[plan.challenger] if b in routes[champion]]
        if plan.kind == "shadow" and shared:
            # A backend serves a bounded number of calls at a time: the copies would queue with
            # the calls they copy, and the callers would wait for the shadow.
            raise InvalidInputError(
                f"a shadow of route {plan.challenger!r} would share backend {shared[0]!r} with"
                f" {champion!r} and slow its callers; shadow a route with backends of its own,"
                " or run an ab test or a canary",
                field="kind",
            )
        return champion, plan.challenger

    def _config(self, plan: ExperimentPlan) -> dict[str, Any]:
        """The stored plan, checked by the policy that will read it (a bad value is named)."""
        if plan.kind not in ("ab", "canary", "shadow"):
            raise InvalidInputError(f"kind {plan.kind!r}: use ab, canary or shadow", field="kind")
        feedback_metric = _FEEDBACK_METRIC.get(plan.target_kind, DEFAULT_ROUTE_PRIMARY)
        others = {m for m in _FEEDBACK_METRIC.values() if m != feedback_metric}
        primary = plan.primary or (DEFAULT_EVAL_PRIMARY if plan.evaluation else feedback_metric)
        if eval_metric(primary) is None and (primary not in PRIMARY_METRICS or primary in others):
            usable = ", ".join(m for m in PRIMARY_METRICS if m not in others)
            if plan.target_kind == "prompt":
                usable += ", or eval:METRIC with --eval-dataset"
            raise InvalidInputError(
                f"primary metric {primary!r} for a {plan.target_kind}: use one of {usable}", field="primary"
            )
        config: dict[str, Any] = {
            "steps": [float(s) for s in plan.steps],
            "weight": 50.0 if plan.weight is None else float(plan.weight),
            "primary": primary,
            "guardrails": list(plan.guardrails),
            "min_samples": plan.min_samples,
            "require_approval": plan.require_approval,
        }
        policy = Policy.from_config(config)
        config["guardrails"] = [g.spec for g in policy.guardrails]
        metric = eval_metric(primary)
        if metric is not None or plan.evaluation:
            config["eval"] = self._eval_config(plan, metric)
        return config

    def _eval_config(self, plan: ExperimentPlan, metric: str | None) -> dict[str, Any]:
        """The checked eval settings of an eval-decided experiment."""
        if metric is None:
            raise InvalidInputError(
                f"an eval data set decides only with an eval primary metric, not {plan.primary!r};"
                f" use --primary eval:METRIC (default {DEFAULT_EVAL_PRIMARY})",
                field="primary",
            )
        if plan.target_kind != "prompt" or plan.kind != "ab":
            raise InvalidInputError(
                f"an eval decides a prompt's ab test (one run per variant on a data set), not a"
                f" {plan.kind} on a {plan.target_kind}",
                field="primary",
            )
        if not plan.evaluation:
            raise InvalidInputError(
                f"primary {plan.primary!r} needs an eval data set and collection (--eval-dataset,"
                " --eval-collection)",
                field="eval",
            )
        if self.eval_check is None:
            raise InvalidInputError("this process cannot plan eval runs", field="eval")
        return self.eval_check(metric, plan.evaluation)

    def experiments(self, caller: Principal) -> list[Experiment]:
        """The caller's tenant's experiments, newest first."""
        caller.require(Role.VIEWER, "listing experiments")
        return self.store.list(tenant=caller.tenant)

    def get(self, caller: Principal, name: str) -> Experiment:
        """One experiment of the caller's tenant.

        Raises:
            NotFoundError: No such experiment in the caller's tenant.
        """
        caller.require(Role.VIEWER, "reading an experiment")
        return self.store.get(name, tenant=caller.tenant)

    def show(self, caller: Principal, name: str) -> ExperimentReport:
        """The experiment with its variants' outcomes so far, the decider's latest tests and its decision.

        Raises:
            NotFoundError: No such experiment in the caller's tenant.
        """
        experiment = self.get(caller, name)
        return ExperimentReport(
            name=experiment.name,
            kind=experiment.kind,
            target={"kind": experiment.target_kind, "name": experiment.target},
            status=experiment.status,
            step=experiment.step,
            steps=list(experiment.config["steps"]) if experiment.kind == "canary" else [],
            config=experiment.config,
            variants=self.variants(experiment),
            tests=_tests(experiment.checks.get("last")),
            decision=experiment.decision,
            created_at=experiment.created_at.isoformat(),
            created_by=experiment.created_by,
            ended_at=experiment.ended_at.isoformat() if experiment.ended_at else None,
        )

    def variants(self, experiment: Experiment) -> list[VariantReport]:
        """Both variants' outcomes since the experiment started."""
        samples = self.store.samples(experiment.name)
        feedback = self.labels.values(experiment.target_kind, experiment.name)
        weights = {CHAMPION: 100.0 - experiment.weight, CHALLENGER: experiment.weight}
        versions = {CHAMPION: experiment.champion, CHALLENGER: experiment.challenger}
        return [
            variant_report(
                v,
                versions[v],
                weights[v],
                samples.get(v, VariantSamples()),
                feedback.get(v, _NONE),
                scores=experiment.target_kind == "prompt",
            )
            for v in (CHAMPION, CHALLENGER)
        ]

    def stop(self, caller: Principal, name: str) -> Experiment:
        """End the experiment without a verdict; the champion takes all traffic again."""
        caller.require(Role.OPERATOR, "stopping an experiment")
        experiment = self._running(caller, name)
        return self._end(caller, experiment, "stopped", "stop", f"stopped by {caller.actor}")

    def rollback(self, caller: Principal, name: str, reason: str | None = None) -> Experiment:
        """Send all traffic back to the champion and end the experiment as rolled back."""
        caller.require(Role.OPERATOR, "rolling back an experiment")
        experiment = self._running(caller, name)
        return self._end(
            caller, experiment, "rolled_back", "rollback", reason or f"rolled back by {caller.actor}"
        )

    def promote(self, caller: Principal, name: str, reason: str | None = None) -> Experiment:
        """Make the challenger the champion and end the experiment as promoted.

        The model's ``champion`` alias moves, the prompt's ``production`` alias, or the route's
        alias: the challenger route serves the route's name from then on (audited as ``route.alias``).

        Raises:
            ConflictError: The experiment has ended, or the challenger cannot be served.
        """
        caller.require(Role.OPERATOR, "promoting an experiment's challenger")
        experiment = self._running(caller, name)
        if experiment.target_kind == "prompt":
            prompts.set_alias(
                caller,
                self.registry,
                self.audit,
                experiment.target,
                PRODUCTION,
                int(experiment.challenger),
                check=self.prompt_checks.get(experiment.target),
            )
        elif experiment.target_kind == "route":
            self._move_route(caller, experiment)
        else:
            from workflows import promotion

            promotion.promote(
                caller, self.registry, self.audit, experiment.target, int(experiment.challenger)
            )
        return self._end(caller, experiment, "promoted", "promote", reason or f"promoted by {caller.actor}")

    def _move_route(self, caller: Principal, experiment: Experiment) -> None:
        if self.routes is None or experiment.challenger not in self.route_backends:
            raise ConflictError(
                f"route {experiment.challenger!r} is not configured in this process, so it cannot"
                f" serve {experiment.target!r}",
                route=experiment.target,
            )
        before = self.routes.set(experiment.target, experiment.challenger, actor=caller.actor)
        self.audit.append(
            actor=caller.actor,
            tenant=caller.tenant,
            action="route.alias",
            target=f"route:{experiment.target}",
            before={"served_by": before},
            after={"served_by": experiment.challenger, "experiment": experiment.name},
        )

    def approve(self, caller: Principal, name: str) -> Experiment:
        """Carry out a promotion that waits for approval.

        Raises:
            ConflictError: The experiment is not waiting for approval.
        """
        caller.require(Role.OPERATOR, "approving an experiment's promotion")
        experiment = self._running(caller, name)
        if experiment.status != "pending_approval":
            raise ConflictError(
                f"experiment {name!r} is {experiment.status}; only a pending_approval one can be approved",
                status=experiment.status,
            )
        reason = (experiment.decision or {}).get("reason", "")
        return self.promote(caller, name, f"approved by {caller.actor}: {reason}".rstrip(": "))

    def _running(self, caller: Principal, name: str) -> Experiment:
        experiment = self.store.get(name, tenant=caller.tenant)
        if experiment.status in ENDED:
            raise ConflictError(
                f"experiment {name!r} has ended ({experiment.status})", status=experiment.status
            )
        return experiment

    def _end(
        self, caller: Principal, experiment: Experiment, status: str, action: str, reason: str
    ) -> Experiment:
        decision = {"action": action, "reason": reason, "at": utcnow().isoformat(timespec="seconds")}
        weight = 100.0 if status == "promoted" else 0.0
        ended = self.store.update(
            experiment.name, expect=experiment.status, status=status, weight=weight, decision=decision
        )
        self._audit(caller, f"experiment.{action}", ended, after=decision)
        return ended

    def hold_for_approval(self, caller: Principal, experiment: Experiment, reason: str) -> Experiment:
        """Record that the challenger won and wait for an operator (the weights stay as they are)."""
        decision = {
            "action": "pending_approval",
            "reason": reason,
            "at": utcnow().isoformat(timespec="seconds"),
        }
        held = self.store.update(
            experiment.name, expect="running", status="pending_approval", decision=decision
        )
        self._audit(caller, "experiment.pending_approval", held, after=decision)
        return held

    def advance(self, caller: Principal, experiment: Experiment, reason: str) -> Experiment:
        """Move a canary to its next step's weight."""
        steps = experiment.config["steps"]
        step = experiment.step + 1
        moved = self.store.update(
            experiment.name, expect="running", step=step, weight=float(steps[step]), step_started_at=utcnow()
        )
        self._audit(
            caller, "experiment.advance", moved, after={"step": step, "weight": steps[step], "reason": reason}
        )
        return moved

    def _audit(
        self, caller: Principal, action: str, experiment: Experiment, *, after: dict[str, Any]
    ) -> None:
        self.audit.append(
            actor=caller.actor,
            tenant=experiment.tenant,
            action=action,
            target=f"experiment:{experiment.name}",
            before={
                "model": experiment.target,
                "champion": experiment.champion,
                "challenger": experiment.challenger,
            },
            after=after,
        )


_NONE = np.zeros(0, dtype=bool)


def _tests(last: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The decider's latest tests, each with a one-line ``summary``: primary, guardrails, latency judge."""
    if not last:
        return []
    tests = []
    primary = last.get("primary")
    if primary:
        low, high = ("unbounded" if end is None else f"{end:.4g}" for end in primary["ci"])
        summary = (
            f"{primary['metric']}: challenger - champion {primary['estimate']:+.4g}, CI [{low}, {high}],"
            f" p={primary['p_value']:.3g} ({primary['method']}, n={primary['n'][0]}/{primary['n'][1]})"
        )
        tests.append({"kind": "primary", "summary": summary, **primary})
    tests.extend({"kind": "guardrail", "summary": g["reason"], **g} for g in last.get("guardrails", []))
    judge = last.get("judge")
    if judge:
        tests.append({"kind": "latency_judge", "summary": judge["reason"], **judge})
    evaluation = last.get("eval")
    if evaluation:
        tests.append({"kind": "eval", "summary": _eval_line(evaluation), **evaluation})
    return tests


def _eval_line(evaluation: dict[str, Any]) -> str:
    """``eval semantic_similarity (finished): champion v1 mean 0.41 of 40, run ...; challenger ...``."""

    def variant(name: str) -> str:
        v = evaluation[name]
        if v["run_id"] is None:
            return f"{name} v{v['version']} {v['done']}/{v['total']} questions"
        mean = "no score" if v["mean"] is None else f"mean {v['mean']:.4g}"
        return f"{name} v{v['version']} {mean} over {v['scored']} questions, run {v['run_id']}"

    both = f"{variant('champion')}; {variant('challenger')}"
    line = f"eval {evaluation['metric']} ({evaluation['status']}): {both}"
    return line + (f"; {evaluation['error']}" if evaluation.get("error") else "")
