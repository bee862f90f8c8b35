"""The deploy/ tree: the image, the kustomize overlays and the monitoring that ships with them.

Offline, with the tools requirements.lock puts into ``.venv/bin`` (promtool comes from ``./dev
setup``): every overlay renders with ``kubectl kustomize`` and its objects pass
``kubernetes-validate --strict`` (the Prometheus Operator's custom resources, which it has no
schema for, are checked here field by field); yamllint, hadolint and the generated PrometheusRule
are current; every dashboard query parses with promtool and names only metrics the code defines.
Then what a reader of the manifests relies on: resources and probes, the restricted Pod Security
Standard, the GPU of vLLM, CronJobs that run ``opsloop jobs run`` once at a time with the
server's image, settings and security, and the settings that tell the overlays apart.

Without a tool these tests skip locally and fail in CI, so CI never passes by not running them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SECRET_EXAMPLE = K8S / "overlays" / "production" / "secret.example.yaml"
OVERLAYS = ("local", "production", "production-postgres-trial")
SCALED_OUT = ("production", "production-postgres-trial")
PACKAGES = ("opsloop", "workflows", "rag", "evals", "agents", "serving")

# Grafana replaces these before a query reaches Prometheus; promtool needs a literal range.
GRAFANA_RANGES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1d"}
_METRIC = re.compile(r"\bopsloop_[a-z_]+")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|count|sum)$")
_CUSTOM_GROUP = "monitoring.coreos.com/"
_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# The volume types the restricted Pod Security Standard allows.
_RESTRICTED_VOLUMES = frozenset(
    (
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    )
)

Obj = dict[str, Any]


def _tool(name: str) -> str:
    """``name`` beside this interpreter (.venv/bin), else on PATH; skip locally or fail in CI."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which(name)
    if found is None:
        hint = f"{name} not found: run ./dev setup (it installs the deploy tools into .venv/bin)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(hint)
        pytest.skip(hint)
    return found


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


@functools.cache
def _render(overlay: str) -> list[Obj]:
    done = _run(_tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay), timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed:\n{done.stderr}"
    objects = [obj for obj in yaml.safe_load_all(done.stdout) if obj]
    assert objects, f"overlay {overlay} rendered nothing"
    return objects


def _one(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_templates(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    """``(kind/name, pod template)`` of every workload, CronJobs included."""
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in _WORKLOADS:
            yield where, obj["spec"]["template"]
        elif obj["kind"] == "CronJob":
            yield where, obj["spec"]["jobTemplate"]["spec"]["template"]


def _server(objects: list[Obj]) -> Obj:
    """The opsloop Deployment's container."""
    container: Obj = _one(objects, "Deployment", "opsloop")["spec"]["template"]["spec"]["containers"][0]
    return container


def _settings(objects: list[Obj]) -> dict[str, str]:
    """The opsloop-config the server reads (its generated name carries a hash)."""
    name = next(s["configMapRef"]["name"] for s in _server(objects)["envFrom"] if "configMapRef" in s)
    data: dict[str, str] = _one(objects, "ConfigMap", name)["data"]
    return data


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def dashboard_exprs() -> dict[str, list[str]]:
    """Every panel query of every dashboard, by file name (rows' nested panels included)."""
    found: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        panels = json.loads(path.read_text())["panels"]
        panels += [inner for panel in panels for inner in panel.get("panels", [])]
        found[path.name] = [t["expr"] for p in panels for t in p.get("targets", []) if t.get("expr")]
    return found


def rule_exprs() -> list[str]:
    """The ``expr`` of every rule in deploy/prometheus/alerts.yml."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def metric_names(exprs: list[str]) -> set[str]:
    """The opsloop metrics ``exprs`` name, a histogram's series by the histogram's own name."""
    return {_HISTOGRAM_SERIES.sub("", name) for expr in exprs for name in _METRIC.findall(expr)}


def metrics_in_use() -> set[str]:
    """Every opsloop metric a dashboard or an alert rule names."""
    return metric_names([e for exprs in dashboard_exprs().values() for e in exprs] + rule_exprs())


@functools.cache
def _package_source() -> str:
    return "\n".join(p.read_text() for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")))


# ---- rendering and schemas ----


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(overlay: str) -> None:
    kinds = {obj["kind"] for obj in _render(overlay)}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_pass_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    core = [o for o in _render(overlay) if not o["apiVersion"].startswith(_CUSTOM_GROUP)]
    if overlay == "production":  # the example Secrets are in no kustomization: validate them here
        core += list(yaml.safe_load_all(SECRET_EXAMPLE.read_text()))
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(core))
    done = _run(_tool("kubernetes-validate"), "--strict", "--quiet", str(manifest))
    # A kind without a schema only warns: any output means something went unchecked.
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


@pytest.mark.parametrize("overlay", SCALED_OUT)
def test_service_monitor_scrapes_the_servers_http_port(overlay: str) -> None:
    objects = _render(overlay)
    custom = {o["kind"] for o in objects if o["apiVersion"].startswith(_CUSTOM_GROUP)}
    assert custom == {"ServiceMonitor", "PrometheusRule"}, "a custom resource no test checks"
    monitor = _one(objects, "ServiceMonitor", "opsloop")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [s for s in objects if s["kind"] == "Service"]
    assert [s["metadata"]["name"] for s in services if _selects(selector, s["metadata"]["labels"])] == [
        "opsloop"
    ]
    service = _one(objects, "Service", "opsloop")
    ports = {port["name"] for port in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"], "no endpoints"
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in ports and endpoint["path"] == "/metrics", endpoint
    # The CronJobs' pushed metrics: from the Pushgateway, with the labels they were pushed with.
    jobs = _one(objects, "ServiceMonitor", "opsloop-jobs")
    selector = jobs["spec"]["selector"]["matchLabels"]
    assert [s["metadata"]["name"] for s in services if _selects(selector, s["metadata"]["labels"])] == [
        "pushgateway"
    ]
    assert [e.get("honorLabels") for e in jobs["spec"]["endpoints"]] == [True]
    assert _settings(objects)["OPSLOOP_PUSHGATEWAY_URL"] == "http://pushgateway:9091"


@pytest.mark.parametrize("overlay", SCALED_OUT)
def test_prometheus_rule_has_named_groups_of_alerts_with_exprs(overlay: str) -> None:
    rule = _one(_render(overlay), "PrometheusRule", "opsloop")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"], group
        for entry in group["rules"]:
            assert entry.get("expr") and ("alert" in entry) != ("record" in entry), entry


# ---- linters and generated files ----


def test_yamllint_passes_on_deploy() -> None:
    done = _run(_tool("yamllint"), "--strict", "-c", ".yamllint.yaml", "deploy")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_passes_on_the_dockerfile() -> None:
    done = _run(_tool("hadolint"), "--no-color", "deploy/Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_prometheus_rule_is_generated_from_alerts_yml() -> None:
    done = _run(sys.executable, "deploy/k8s/generate.py", "--check")
    assert done.returncode == 0, done.stderr
    committed = yaml.safe_load((K8S / "overlays" / "production" / "prometheusrule.yaml").read_text())
    assert committed["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


# ---- dashboards ----


def test_every_dashboard_query_parses_with_promtool(tmp_path: Path) -> None:
    exprs = [e for found in dashboard_exprs().values() for e in found]
    for variable, literal in GRAFANA_RANGES.items():
        exprs = [e.replace(variable, literal) for e in exprs]
    assert not [e for e in exprs if "$__" in e], "a Grafana variable promtool cannot read"
    rules = [{"record": f"dashboard:expr_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = _run(_tool("promtool"), "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboards_and_rules_name_only_metrics_the_code_defines() -> None:
    used = metrics_in_use()
    unknown = sorted(name for name in used if f'"{name}"' not in _package_source())
    assert not unknown, f"no Counter/Gauge/Histogram defines {unknown}"
    histograms = set(re.findall(r'Histogram\(\s*"(opsloop_[a-z_]+)"', _package_source()))
    exprs = [e for found in dashboard_exprs().values() for e in found] + rule_exprs()
    named = {name for expr in exprs for name in _METRIC.findall(expr)}
    series = {name for name in named if _HISTOGRAM_SERIES.search(name)}
    assert {_HISTOGRAM_SERIES.sub("", name) for name in series} <= histograms, "_bucket of no histogram"
    assert not named & histograms, "a histogram by its bare name: it has only _bucket/_count/_sum series"


def test_every_dashboard_is_a_labelled_configmap_with_its_own_uid() -> None:
    files = sorted(DASHBOARDS.glob("*.json"))
    titles = {"Overview", "LLM cost and tokens", "RAG", "Drift and evals", "Experiments"}
    dashboards = [json.loads(path.read_text()) for path in files]
    assert {d["title"].removeprefix("opsloop / ") for d in dashboards} == titles
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    for exprs in dashboard_exprs().values():
        assert exprs
    configmaps = [o for o in _render("production") if o["metadata"]["name"].startswith("opsloop-dashboard-")]
    assert sorted(name for cm in configmaps for name in cm["data"]) == [path.name for path in files]
    assert all(cm["metadata"]["labels"]["grafana_dashboard"] == "1" for cm in configmaps)


# ---- what the manifests promise ----


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_serving_ones_have_probes(overlay: str) -> None:
    for where, template in _pod_templates(_render(overlay)):
        for container in template["spec"]["containers"]:
            resources = container.get("resources", {})
            assert {"cpu", "memory"} <= set(resources.get("requests", {})), f"{where}: requests"
            assert "memory" in resources.get("limits", {}), f"{where}: memory limit"
            if container.get("ports"):
                for probe in ("readinessProbe", "livenessProbe"):
                    assert probe in container, f"{where} serves without a {probe}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_the_restricted_pod_security_standard(overlay: str) -> None:
    objects = _render(overlay)
    namespace = next(o for o in objects if o["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for where, template in _pod_templates(objects):
        pod = template["spec"]
        assert not (pod.get("hostNetwork") or pod.get("hostPID") or pod.get("hostIPC")), where
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= _RESTRICTED_VOLUMES, f"{where}: volume {volume['name']}"
        for container in pod["containers"]:
            context = container.get("securityContext", {})
            merged = {**pod.get("securityContext", {}), **context}
            assert merged.get("runAsNonRoot") is True, f"{where}: runAsNonRoot"
            assert merged.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp"
            assert context.get("allowPrivilegeEscalation") is False, f"{where}: privilege escalation"
            assert context.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities"
            assert not context.get("privileged"), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_opsloop_runs_unprivileged_on_a_read_only_root_without_api_access(overlay: str) -> None:
    objects = _render(overlay)
    server = _server(objects)
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert server["securityContext"]["runAsUser"] == 10001
    mounts = {m["mountPath"] for m in server["volumeMounts"]}
    assert {"/tmp", _settings(objects)["OPSLOOP_HOME"]} <= mounts, "no writable OPSLOOP_HOME and /tmp"
    account = _one(objects, "ServiceAccount", "opsloop")
    assert account["automountServiceAccountToken"] is False
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & {o["kind"] for o in objects}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_disruption_budgets_select_their_own_pods(overlay: str) -> None:
    objects = _render(overlay)
    pods = list(_pod_templates(objects))
    for obj in objects:
        if obj["kind"] not in {"Service", "PodDisruptionBudget"}:
            continue
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector) if obj["kind"] == "PodDisruptionBudget" else selector
        chosen = [(w, t) for w, t in pods if _selects(selector, t["metadata"].get("labels", {}))]
        what = f"{obj['kind']} {obj['metadata']['name']}"
        assert chosen, f"{what} selects no pod"
        assert not any(w.startswith("CronJob/") for w, _ in chosen), f"{what} selects a job's pods"
        if obj["kind"] == "Service":
            containers = [c for _, t in chosen for c in t["spec"]["containers"]]
            named = {p.get("name") for c in containers for p in c.get("ports", [])}
            assert {port["targetPort"] for port in obj["spec"]["ports"]} <= named, f"{what}: a target port"


def test_local_runs_one_pod_on_a_volume_with_its_own_scheduler() -> None:
    objects = _render("local")
    deployment = _one(objects, "Deployment", "opsloop")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    kinds = {o["kind"] for o in objects}
    assert "HorizontalPodAutoscaler" not in kinds and "CronJob" not in kinds
    home = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "home")
    assert set(home) == {"name", "persistentVolumeClaim"}
    _one(objects, "PersistentVolumeClaim", home["persistentVolumeClaim"]["claimName"])
    settings = _settings(objects)
    assert settings.get("OPSLOOP_SCHEDULER_ENABLED", "true") != "false"
    assert not any(key in settings for key in ("OPSLOOP_DATABASE_URL", "OPSLOOP_VECTOR_STORE"))


@pytest.mark.parametrize("overlay", SCALED_OUT)
def test_production_scales_out_on_the_twins_with_the_scheduler_off(overlay: str) -> None:
    objects = _render(overlay)
    settings = _settings(objects)
    assert settings["OPSLOOP_SCHEDULER_ENABLED"] == "false"
    assert settings["OPSLOOP_VECTOR_STORE"] == "qdrant"
    assert settings["OPSLOOP_QDRANT_URL"] == "http://qdrant:6333"
    assert settings["OPSLOOP_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert settings["OPSLOOP_BOOTSTRAP_DEMO"] == settings["OPSLOOP_BOOTSTRAP_DOCS"] == "false"
    from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in _server(objects)["env"]}
    assert from_secrets == {
        "OPSLOOP_DATABASE_URL": "database-url",
        "OPSLOOP_REDIS_URL": "redis-url",
        "OPSLOOP_QDRANT_API_KEY": "qdrant-api-key",
    }
    assert _one(objects, "Deployment", "opsloop")["spec"]["replicas"] == 3
    hpa = _one(objects, "HorizontalPodAutoscaler", "opsloop")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "opsloop"}
    qdrant = _one(objects, "StatefulSet", "qdrant")["spec"]
    assert qdrant["replicas"] == 3 and qdrant["volumeClaimTemplates"]


def test_the_llm_routes_and_eval_jobs_of_production_are_valid_settings() -> None:
    from pydantic import TypeAdapter

    from evals.schedule import parse_jobs
    from opsloop.llm.routes import RouteTable

    objects = _render("production")
    settings = _settings(objects)
    routes = TypeAdapter(RouteTable).validate_json(settings["OPSLOOP_LLM_ROUTES"])
    vllm = _one(objects, "Service", "vllm")
    served = _one(objects, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]["args"]
    for spec in (s for route in routes.values() for s in route.backends if s.kind == "openai"):
        assert spec.base_url == f"http://vllm:{vllm['spec']['ports'][0]['port']}/v1"
        assert spec.model == served[served.index("--served-model-name") + 1]
    assert parse_jobs(json.loads(settings["OPSLOOP_EVAL_JOBS"]))


def test_vllm_gets_a_gpu_and_serves_a_local_model_offline() -> None:
    objects = _render("production")
    pod = _one(objects, "Deployment", "vllm")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"].startswith("vllm/vllm-openai:")
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    model = container["args"][container["args"].index("--model") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert model.startswith("/models/") and "persistentVolumeClaim" in volumes[mounts["/models"]]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"


def test_cronjobs_run_opsloop_jobs_once_at_a_time_on_the_settings_schedules() -> None:
    objects = _render("production")
    settings = _settings(objects)
    eval_crons = {job["name"]: job["cron"] for job in json.loads(settings["OPSLOOP_EVAL_JOBS"])}
    cronjobs = [o for o in objects if o["kind"] == "CronJob"]
    jobs = {}
    for cronjob in cronjobs:
        assert cronjob["apiVersion"] == "batch/v1" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
        (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[:3] == ["opsloop", "jobs", "run"] and len(command) == 4, command
        jobs[command[3]] = cronjob["spec"]["schedule"]
    minutes = int(float(settings["OPSLOOP_DRIFT_CHECK_SECONDS"]) // 60)
    assert jobs.pop("drift-checks") == f"*/{minutes} * * * *"
    assert jobs.pop("retraining") == settings["OPSLOOP_RETRAIN_SCHEDULE"]
    assert jobs == {f"eval:{name}": cron for name, cron in eval_crons.items()}


def test_cronjobs_share_the_servers_image_settings_and_security() -> None:
    objects = _render("production")
    server = _one(objects, "Deployment", "opsloop")["spec"]["template"]["spec"]
    same = ("image", "envFrom", "env", "securityContext", "resources", "volumeMounts")
    for where, template in _pod_templates(objects):
        if not where.startswith("CronJob/"):
            continue
        pod = template["spec"]
        assert pod["securityContext"] == server["securityContext"], where
        assert pod["serviceAccountName"] == server["serviceAccountName"], where
        assert pod["volumes"] == server["volumes"], where
        for field in same:
            assert pod["containers"][0][field] == server["containers"][0][field], f"{where}: {field}"


def _secret_example() -> dict[str, dict[str, str]]:
    return {s["metadata"]["name"]: s["stringData"] for s in yaml.safe_load_all(SECRET_EXAMPLE.read_text())}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_required_secret_key_is_in_the_example(overlay: str) -> None:
    example = _secret_example()
    for where, template in _pod_templates(_render(overlay)):
        for container in template["spec"]["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in example.get(ref["name"], {}), f"{where}: {ref} not in the example"


def test_the_secret_example_holds_placeholders_and_is_in_no_kustomization() -> None:
    for name, data in _secret_example().items():
        assert "CHANGE-ME" in json.dumps(data), f"{name}: no placeholder"
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        listed = [*kustomization.get("resources", []), *kustomization.get("components", [])]
        listed += [patch.get("path", "") for patch in kustomization.get("patches", [])]
        assert not any(entry.endswith("secret.example.yaml") for entry in listed), path


def test_the_image_and_the_manifests_agree() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    runtime = dockerfile.split("AS runtime", 1)[1]
    # One install path: the developer's, less the test tools (./dev's tools()) an image does not run.
    assert re.search(r"^\s+OPSLOOP_NO_TEST_TOOLS=1 \./dev setup \\$", dockerfile, re.M), "one install path"
    assert re.search(r"^USER 10001:10001$", runtime, re.M) and re.search(r"^EXPOSE 8000$", runtime, re.M)
    assert 'VOLUME ["/var/lib/opsloop"]' in runtime and "/healthz" in runtime
    assert 'ENTRYPOINT ["opsloop"]' in runtime and 'CMD ["serve", "--host", "0.0.0.0"]' in runtime
    objects = _render("local")
    settings = _settings(objects)
    assert settings["OPSLOOP_HOME"] == "/var/lib/opsloop" and settings["OPSLOOP_PORT"] == "8000"
    assert _server(objects)["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".opsloop", ".git", "bench/results"} <= ignored


def test_the_infra_agents_sized_overlay_renders_over_production_with_its_size(tmp_path: Path) -> None:
    from agents.infra.sizing import OVERLAY_DIR, overlay

    tree = tmp_path / "deploy"
    shutil.copytree(ROOT / "deploy", tree)
    where = tmp_path / OVERLAY_DIR.format(replicas=6)
    where.mkdir()
    for name, text in overlay(6, 1_200 * (1 << 20)).items():
        (where / name).write_text(text)
    done = _run(_tool("kubectl"), "kustomize", str(where), timeout=60)
    assert done.returncode == 0, done.stderr
    objects = [obj for obj in yaml.safe_load_all(done.stdout) if obj]
    server = _one(objects, "Deployment", "opsloop")
    assert server["spec"]["replicas"] == 6
    container = next(c for c in server["spec"]["template"]["spec"]["containers"] if c["name"] == "opsloop")
    assert container["resources"]["requests"] == {
        "cpu": "1",
        "memory": "1536Mi",
    }  # 1.25 x 1,200 MiB, up to 256s
    assert container["resources"]["limits"]["memory"] == "3072Mi"
    assert container["env"], "the production overlay's settings are kept"
    hpa = _one(objects, "HorizontalPodAutoscaler", "opsloop")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (6, 12)
    assert len(objects) == len(_render("production"))  # the same objects, only sized
    lint = _run(_tool("yamllint"), "--strict", "-c", ".yamllint.yaml", str(where))
    assert lint.returncode == 0, lint.stdout + lint.stderr
