"""Deploy manifests for a given size: a kustomize overlay over ``deploy/k8s/overlays/production``.

The overlay sets how many server replicas run (the Deployment, and the autoscaler's floor and
ceiling) and what each asks of its node: one CPU per replica (one worker each) and the memory
this server uses now, plus headroom. It is text to save beside the production overlay and
render with ``kubectl kustomize``; nothing here talks to a cluster. Pure: the tool passes in
what it measured.
"""

from __future__ import annotations

import math

__all__ = ["HEADROOM", "OVERLAY_DIR", "memory_request", "overlay"]

HEADROOM = 1.25
"""Memory requested per replica, as a multiple of what this server uses now (loads grow caches)."""
OVERLAY_DIR = "deploy/k8s/overlays/size-{replicas}"
"""Where the overlay goes in a checkout: beside ``production``, which it builds on."""
_MI = 1 << 20
_STEP_MI = 256


def memory_request(rss_bytes: int) -> int:
    """MiB to request per replica: the resident size with headroom, rounded up to 256 MiB."""
    wanted = rss_bytes * HEADROOM / _MI
    return max(_STEP_MI, math.ceil(wanted / _STEP_MI) * _STEP_MI)


def overlay(replicas: int, rss_bytes: int, *, max_replicas: int | None = None) -> dict[str, str]:
    """The overlay's files by name: ``kustomization.yaml`` and the server's ``size.yaml`` patch.

    Args:
        replicas: Server replicas to run, and the autoscaler's floor.
        rss_bytes: What one replica uses now (this process's resident size).
        max_replicas: The autoscaler's ceiling; default twice ``replicas``.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    ceiling = max(max_replicas or 2 * replicas, replicas)
    memory = memory_request(rss_bytes)
    kustomization = f"""\
# opsloop at {replicas} replicas (autoscaled up to {ceiling}): the production overlay, sized.
# Rendered by the infra agent from this server's memory use; render with
#   kubectl kustomize {OVERLAY_DIR.format(replicas=replicas)}
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization

resources:
  - ../production

patches:
  - path: size.yaml
  - target:
      kind: HorizontalPodAutoscaler
      name: opsloop
    patch: |-
      - op: replace
        path: /spec/minReplicas
        value: {replicas}
      - op: replace
        path: /spec/maxReplicas
        value: {ceiling}
"""
    size = f"""\
# Each replica: one worker on one CPU, and {memory} MiB ({HEADROOM:g}x what this server uses now).
apiVersion: apps/v1
kind: Deployment
metadata:
  name: opsloop
spec:
  replicas: {replicas}
  template:
    spec:
      containers:
        - name: opsloop
          resources:
            requests:
              cpu: "1"
              memory: {memory}Mi
            limits:
              cpu: "2"
              memory: {2 * memory}Mi
"""
    return {"kustomization.yaml": kustomization, "size.yaml": size}
