"""The infra agent's tools: readiness of every component, queue depths, stores, and sizing."""

from __future__ import annotations

import os

from agents.infra.sizing import OVERLAY_DIR, memory_request, overlay
from agents.tools import Outcome, ToolCall, jsonable, tool
from opsloop.auth import Role

__all__ = ["TOOLS", "capacity", "health", "key_info", "manifests", "queues", "revoke_key", "stores"]


@tool("infra", role=Role.VIEWER)
async def health(call: ToolCall) -> Outcome:
    """Readiness of every component, and why any is not well."""
    state = call.ops.components()
    components = state["components"]
    unwell = {name: s for name, s in components.items() if s not in ("ready", "degraded", "off")}
    summary = ", ".join(f"{name} {s}" for name, s in components.items())
    lead = "ready" if state["ready"] else f"not ready ({len(unwell)} not well)"
    return Outcome(f"{lead}: {summary}", jsonable(state), "ok" if state["ready"] else "failed")


@tool("infra", role=Role.VIEWER)
async def queues(call: ToolCall) -> Outcome:
    """Depth of each in-process queue and the background jobs running."""
    depths = dict(call.ops.queues())
    return Outcome(", ".join(f"{k} {v}" for k, v in depths.items()), depths)


@tool("infra", role=Role.OPERATOR)
async def stores(call: ToolCall) -> Outcome:
    """The state store, registry and vector store: kind, schema revision, reachability."""
    found = jsonable(call.ops.stores())
    return Outcome(
        "; ".join(
            f"{k}: {v.get('kind', v)}" if isinstance(v, dict) else f"{k}: {v}" for k, v in found.items()
        ),
        found,
    )


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # not a POSIX system that reports it
        return None


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


@tool("infra", role=Role.VIEWER)
async def capacity(call: ToolCall, replicas: int = 1) -> Outcome:
    """What ``replicas`` copies of this server need, from this process's own size, against this machine."""
    rss, memory, cpus = _rss_bytes(), _memory_bytes(), os.cpu_count() or 1
    result = {
        "replicas": replicas,
        "replica_rss_bytes": rss,
        "machine_memory_bytes": memory,
        "machine_cpus": cpus,
    }
    if rss is None or memory is None:
        return Outcome("this system does not report memory use; sizing needs it", result, "failed")
    need = rss * replicas
    fits = need <= memory * 0.8 and replicas <= cpus
    result |= {"needed_memory_bytes": need, "fits": fits}
    gib = 1 << 30
    summary = (
        f"{replicas} replicas at this server's {rss / gib:.2f} GiB each need {need / gib:.2f} GiB and"
        f" {replicas} CPUs (one worker each); this machine has {memory / gib:.1f} GiB and {cpus} CPUs:"
        + (" it fits" if fits else " it does not fit (keep 20% memory free, one CPU per replica)")
    )
    return Outcome(summary, result, "ok" if fits else "failed")


@tool("infra", role=Role.VIEWER)
async def manifests(call: ToolCall, replicas: int = 1) -> Outcome:
    """Kubernetes manifests for ``replicas`` servers: a kustomize overlay sized from this server's memory."""
    rss = _rss_bytes()
    if rss is None:
        return Outcome(
            "this system does not report memory use; sizing needs it", {"replicas": replicas}, "failed"
        )
    files = overlay(replicas, rss)
    where = OVERLAY_DIR.format(replicas=replicas)
    summary = (
        f"an overlay of the production manifests for {replicas} replicas (autoscaled up to {2 * replicas}),"
        f" each requesting 1 CPU and {memory_request(rss)} MiB; save its {len(files)} files in {where}/"
        f" and render it with `kubectl kustomize {where}`"
    )
    return Outcome(summary, {"replicas": replicas, "directory": where, "files": files})


@tool("infra", role=Role.ADMIN)
async def key_info(call: ToolCall, key: str) -> Outcome:
    """An API key's tenant, role, name and whether it is revoked."""
    info = call.ops.key(call.caller, key)
    state = f"revoked at {info.revoked_at:%Y-%m-%d %H:%M} UTC" if info.revoked_at else "active"
    named = f" '{info.name}'" if info.name else ""
    summary = (
        f"key {info.id}{named} of tenant {info.tenant}, role {info.role},"
        f" created {info.created_at:%Y-%m-%d}: {state}"
    )
    return Outcome(summary, info.to_dict(), "failed" if info.revoked_at else "ok")


@tool("infra", role=Role.ADMIN, mutating=True)
async def revoke_key(call: ToolCall, key: str) -> Outcome:
    """Revoke an API key: it stops working at once here, within the key cache time elsewhere."""
    info = call.ops.revoke_key(call.caller, key)
    return Outcome(f"key {info.id} of tenant {info.tenant} ({info.role}) revoked", info.to_dict())


TOOLS = (health, queues, stores, capacity, manifests, key_info, revoke_key)
