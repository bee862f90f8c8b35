"""Query drift on real sentence embeddings: the packaged all-MiniLM-L6-v2 tells topics apart."""

from __future__ import annotations

import numpy as np
import pytest

from rag.embedder import SentenceTransformerEmbedder
from workflows.query_drift import embedding_drift

_BILLING = [
    f"{verb} {thing} for {when}?"
    for verb in (
        "Why was I charged twice on my",
        "How do I download the",
        "Where can I find my",
        "Who do I ask about the",
    )
    for thing in ("invoice", "receipt", "billing statement", "credit card charge", "subscription fee")
    for when in ("March", "last month", "my annual plan", "the team workspace", "order 5521")
] + [
    f"{ask} {topic}"
    for ask in ("Can you explain", "I have a question about", "Please help with")
    for topic in (
        "the VAT on my invoice",
        "a refund for a duplicate payment",
        "changing the billing address on invoices",
        "the late payment fee",
        "updating the card used for billing",
        "a prorated charge after upgrading",
        "getting a PDF copy of an old invoice",
        "why my invoice total is higher than the quote",
    )
]
_KUBERNETES = [
    f"{ask} {topic}"
    for ask in ("How do I fix", "Why does kubectl show", "What causes")
    for topic in (
        "a pod stuck in CrashLoopBackOff after a deployment?",
        "ImagePullBackOff when rolling out a new image?",
        "a rolling update that never finishes in my Kubernetes deployment?",
        "the readiness probe failing on a new replica set?",
        "a helm upgrade that leaves pending pods?",
        "pods evicted for memory pressure on the node?",
        "a horizontal pod autoscaler that does not scale my deployment?",
        "a service with no endpoints after kubectl apply?",
        "OOMKilled containers in the deployment?",
        "a stuck rollout of a StatefulSet?",
        "PersistentVolumeClaim pending when the deployment starts?",
        "an ingress returning 503 after deploying?",
        "a configmap change not picked up by the pods?",
        "node affinity rules leaving pods unscheduled?",
        "the kube-scheduler saying insufficient cpu?",
        "a canary deployment getting no traffic in the cluster?",
        "liveness probes restarting containers in a loop?",
        "secrets not mounted into the pod?",
        "a namespace stuck in Terminating?",
        "kubectl rollout undo not restoring the old replica set?",
    )
]


def test_real_embeddings_split_by_topic() -> None:
    rng = np.random.default_rng(0)
    billing = rng.permutation(_BILLING)[:120]
    assert len(billing) == 120 and len(_KUBERNETES) == 60
    embedded = SentenceTransformerEmbedder().embed([*billing, *_KUBERNETES])
    first, second, kubernetes = embedded[:60], embedded[60:120], embedded[120:]
    same_topic = embedding_drift(first, second)
    other_topic = embedding_drift(first, kubernetes)
    assert not same_topic.drifted, same_topic
    assert other_topic.drifted, other_topic
    assert other_topic.pvalue == pytest.approx(1 / 201)
    assert other_topic.cosine_distance > 5 * same_topic.cosine_distance
