"""Query drift for RAG: have the questions, or how well retrieval answers them, moved?

Pure, vectorised functions over numpy arrays; nothing here embeds text or reads files.

**Query embeddings** (:func:`embedding_drift`) are compared with a two-sample kernel test.
The statistic is the unbiased squared maximum mean discrepancy (MMD^2) under the sum kernel

    k(x, y) = <x, y> + exp(-||x - y||^2 / (2 sigma^2))

on L2-normalised rows. The linear half is exactly the squared distance between the mean
embeddings, the signature of a topic shift; the Gaussian (RBF) half is characteristic, so it
also sees changes that keep the mean, such as queries spreading out or bunching up (less
sharply: with 500 synthetic queries a side, a 1.6x wider scatter is always caught, a 1.2x one
one time in ten). The RBF
half is approximated by random Fourier features (Rahimi and Recht, 2007) with the bandwidth
``sigma`` set to the median pairwise distance of at most :data:`BANDWIDTH_ROWS` pooled rows.
Each row then has an explicit feature vector ``phi(x) = [x, z(x)]`` of ``d + features``
entries, and MMD^2 is a function of per-sample sums of ``phi`` and of ``||phi||^2`` alone:
building the features costs ``O((n + m) d features)``, and every permutation of the
permutation test only re-sums the same precomputed rows, ``O((n + m)(d + features))``, all
permutations at once as one product of a ``(permutations, n + m)`` label matrix with the
feature matrix. The p-value is ``(1 + #{permuted >= observed}) / (1 + permutations)``, which
is a valid p-value for any number of permutations: ``P(p <= alpha) <= alpha`` under no drift.

Why this and not the alternatives the issue names: the quadratic MMD needs the
``(n + m)^2`` Gram matrix (10,000 queries a side is 400 million kernel values per
permutation); Gretton's linear-time MMD pairs rows up and throws most of the information
away, so it needs several times the sample for the same power; a classifier two-sample test
(train a model to tell the windows apart, test its held-out accuracy) has a training loop, a
model and hyper-parameters of its own for what a mean difference in feature space already
measures. Random features keep the kernel test's power at linear cost, and since the random
kernel is itself a valid kernel the permutation test stays exact; the approximation only
costs a little power.

Besides the test, the result carries the cosine distance between the two mean embeddings,
a number people can read: 0 for the same centre; with all-MiniLM-L6-v2, two halves of 60
billing questions are 0.02-0.05 apart, billing and Kubernetes questions about 0.95.

**Retrieval scores** (:func:`score_drift`, e.g. each query's top-1 similarity) are one
number per query and get the two-sample Kolmogorov-Smirnov test and the Wasserstein distance
in reference standard deviations of :mod:`workflows.drift`, plus the means before and after
(a falling mean is the usual sign that the index no longer covers what users ask).

Decision rule: a test fires when its p-value is at most ``alpha`` *and* its distance reaches
the materiality floor (:class:`QueryDriftThresholds`; the floors are 0, i.e. off, by default,
because how far is too far depends on the embedding model). :func:`query_drift` runs both
tests at ``alpha / 2`` each, so the report's false-alarm rate stays at ``alpha``.

Results are exactly reproducible for a ``seed`` and do not depend on the order of the rows:
each sample is put into a canonical order (by a seeded random projection) before anything
random touches it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from opsloop.errors import InvalidInputError
from workflows.drift import ks_test, normalised_wasserstein

__all__ = [
    "BANDWIDTH_ROWS",
    "MIN_ROWS",
    "EmbeddingDrift",
    "QueryDriftReport",
    "QueryDriftThresholds",
    "ScoreDrift",
    "embedding_drift",
    "query_drift",
    "score_drift",
]

MIN_ROWS = 20
"""Fewest rows per sample; below this neither test has useful power."""

BANDWIDTH_ROWS = 1000
"""Most pooled rows whose pairwise distances set the RBF bandwidth (the median heuristic)."""


@dataclass(frozen=True)
class QueryDriftThresholds:
    """When query drift counts as drift (see the module docstring).

    Attributes:
        alpha: Significance level of the report; each of its two tests runs at half of it.
        cosine_distance: Least cosine distance between the mean embeddings for a significant
            embedding change to count (0 turns the floor off).
        score_wasserstein: Least Wasserstein distance of the retrieval scores, in reference
            standard deviations, for a significant score change to count (0 turns it off).
    """

    alpha: float = 0.05
    cosine_distance: float = 0.0
    score_wasserstein: float = 0.0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        for name in ("cosine_distance", "score_wasserstein"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise InvalidInputError(f"threshold {name} must be >= 0, got {value}", field=name)


@dataclass(frozen=True)
class EmbeddingDrift:
    """The permutation test of query embeddings and its verdict.

    Attributes:
        drifted: ``pvalue <= alpha`` and ``cosine_distance >= min_cosine_distance``.
        statistic: Unbiased MMD^2 under the linear + RBF kernel (about 0, possibly negative,
            without drift).
        pvalue: Permutation p-value, in ``(0, 1]``; never below ``1 / (1 + permutations)``.
        alpha: The significance level the verdict used.
        min_cosine_distance: The materiality floor the verdict used.
        cosine_distance: ``1 - cos`` of the angle between the mean embeddings, in [0, 2].
        mean_distance: Euclidean distance between the mean embeddings.
        bandwidth: The RBF kernel's ``sigma`` (median heuristic).
        permutations: Label permutations drawn.
        features: Random Fourier features of the RBF half.
        reference_count: Rows of the reference.
        current_count: Rows of the current sample.
        dimension: Embedding dimension.
    """

    drifted: bool
    statistic: float
    pvalue: float
    alpha: float
    min_cosine_distance: float
    cosine_distance: float
    mean_distance: float
    bandwidth: float
    permutations: int
    features: int
    reference_count: int
    current_count: int
    dimension: int

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-able plain values."""
        return asdict(self)


@dataclass(frozen=True)
class ScoreDrift:
    """The drift of per-query retrieval scores and its verdict.

    Attributes:
        drifted: ``ks_pvalue <= alpha`` and ``wasserstein >= min_wasserstein``.
        ks_statistic: Two-sample Kolmogorov-Smirnov statistic.
        ks_pvalue: Its p-value.
        wasserstein: Wasserstein-1 distance in reference standard deviations.
        alpha: The significance level the verdict used.
        min_wasserstein: The materiality floor the verdict used.
        reference_mean: Mean score of the reference.
        current_mean: Mean score of the current sample.
        mean_change: ``current_mean - reference_mean`` (negative: retrieval got worse).
        reference_count: Scores in the reference.
        current_count: Scores in the current sample.
    """

    drifted: bool
    ks_statistic: float
    ks_pvalue: float
    wasserstein: float
    alpha: float
    min_wasserstein: float
    reference_mean: float
    current_mean: float
    mean_change: float
    reference_count: int
    current_count: int

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-able plain values."""
        return asdict(self)


@dataclass(frozen=True)
class QueryDriftReport:
    """Query drift of one RAG collection: embeddings and, when logged, retrieval scores.

    Attributes:
        embedding: The embedding test.
        scores: The score test; None when no scores were given.
    """

    embedding: EmbeddingDrift
    scores: ScoreDrift | None = None

    @property
    def drifted(self) -> bool:
        """Whether either test fired."""
        return self.embedding.drifted or (self.scores is not None and self.scores.drifted)

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"drifted", "embedding", "scores"}`` as JSON-able plain values."""
        return {
            "drifted": self.drifted,
            "embedding": self.embedding.to_dict(),
            "scores": None if self.scores is None else self.scores.to_dict(),
        }


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha <= 1.0:
        raise InvalidInputError(f"alpha must be in (0, 1], got {alpha}", field="alpha")


def _as_float_array(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be numeric ({exc})", field=name) from exc
    return array


def _check_rows(array: np.ndarray, name: str) -> None:
    if array.shape[0] < MIN_ROWS:
        raise InvalidInputError(
            f"{name} needs at least {MIN_ROWS} rows, got {array.shape[0]}", field=name, rows=array.shape[0]
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.reshape(array.shape[0], -1).all(axis=1))[0])
        raise InvalidInputError(
            f"{name} holds NaN or infinite values (first in row {bad})", field=name, row=bad
        )


def _embeddings(values: Any, name: str, normalise: bool) -> np.ndarray:
    array = _as_float_array(values, name)
    if array.ndim != 2 or array.shape[1] == 0:
        raise InvalidInputError(
            f"{name} must be a 2-D array of shape (rows, dimension), got shape {array.shape}",
            field=name,
            shape=list(array.shape),
        )
    _check_rows(array, name)
    if normalise:
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        if not (norms > 0.0).all():
            bad = int(np.flatnonzero(norms[:, 0] <= 0.0)[0])
            raise InvalidInputError(
                f"{name} row {bad} is all zeros and has no direction", field=name, row=bad
            )
        array = array / norms
    return array


def _bandwidth(pooled: np.ndarray, rng: np.random.Generator) -> float:
    """Median pairwise Euclidean distance of at most BANDWIDTH_ROWS pooled rows."""
    rows = pooled
    if len(pooled) > BANDWIDTH_ROWS:
        rows = pooled[rng.choice(len(pooled), BANDWIDTH_ROWS, replace=False)]
    squared = np.sum(rows * rows, axis=1)
    gram = rows @ rows.T
    upper = np.triu_indices(len(rows), k=1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2.0 * gram, 0.0)[upper])
    median = float(np.median(distances))
    if median > 0.0:
        return median
    positive = distances[distances > 0.0]  # mostly duplicates: fall back to the typical non-zero gap
    return float(positive.mean()) if len(positive) else 1.0


def _mmd2(
    sum_ref: np.ndarray, sum_cur: np.ndarray, sq_ref: np.ndarray, sq_cur: np.ndarray, n: int, m: int
) -> np.ndarray:
    """Unbiased MMD^2 from per-sample feature sums (``..., F``) and sums of squared row norms.

    ``||sum||^2`` is the sum of all kernel values within a sample, diagonal included;
    subtracting the diagonal (the squared norms) leaves the off-diagonal U-statistic.
    """
    within_ref = (np.einsum("...f,...f->...", sum_ref, sum_ref) - sq_ref) / (n * (n - 1))
    within_cur = (np.einsum("...f,...f->...", sum_cur, sum_cur) - sq_cur) / (m * (m - 1))
    between = np.einsum("...f,...f->...", sum_ref, sum_cur) / (n * m)
    return np.asarray(within_ref + within_cur - 2.0 * between)


def embedding_drift(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    alpha: float = 0.05,
    min_cosine_distance: float = 0.0,
    permutations: int = 200,
    features: int = 256,
    seed: int = 0,
    normalise: bool = True,
) -> EmbeddingDrift:
    """Test whether the query embeddings of ``current`` come from the reference's distribution.

    The linear-time MMD permutation test of the module docstring. Time is
    ``O((n + m) d features + permutations (n + m)(d + features))``; memory is
    ``(n + m)(d + features)`` floats for the feature matrix plus ``permutations (n + m)`` for
    the label matrix (about 100 MB at the peak for 5,000 rows a side, ``d = 384``, the defaults).

    Args:
        reference: Reference window's embeddings, shape ``(n, d)``.
        current: Current window's embeddings, shape ``(m, d)``.
        alpha: Significance level of the verdict.
        min_cosine_distance: Least cosine distance between the mean embeddings for the verdict
            to fire (0: significance alone decides).
        permutations: Label permutations; at least ``1 / alpha - 1`` so the test can fire.
        features: Random Fourier features for the RBF half of the kernel.
        seed: Seed of the projection, bandwidth subsample, random features and permutations.
        normalise: Scale rows to unit length first (cosine geometry, as retrieval uses). Turn
            off only for embeddings that are already normalised or whose length means something.

    Returns:
        Statistic, p-value, verdict, distances between the mean embeddings, sizes.

    Raises:
        InvalidInputError: An input is not a 2-D numeric array, has fewer than
            :data:`MIN_ROWS` rows, holds NaN/inf or (with ``normalise``) an all-zero row, the
            dimensions differ, or a setting is out of range.
    """
    _check_alpha(alpha)
    if not min_cosine_distance >= 0.0:
        raise InvalidInputError(
            f"min_cosine_distance must be >= 0, got {min_cosine_distance}", field="min_cosine_distance"
        )
    if features < 1:
        raise InvalidInputError(f"features must be at least 1, got {features}", field="features")
    if permutations < 1 or 1.0 / (1 + permutations) > alpha:
        least = max(1, int(np.ceil(1.0 / alpha - 1.0 - 1e-9)))
        raise InvalidInputError(
            f"permutations must be at least {least} for a p-value of alpha={alpha}, got {permutations}",
            field="permutations",
        )
    ref = _embeddings(reference, "reference", normalise)
    cur = _embeddings(current, "current", normalise)
    if ref.shape[1] != cur.shape[1]:
        raise InvalidInputError(
            f"reference and current differ in dimension: {ref.shape[1]} != {cur.shape[1]}",
            field="current",
            reference_dimension=ref.shape[1],
            current_dimension=cur.shape[1],
        )
    n, m, dimension = ref.shape[0], cur.shape[0], ref.shape[1]
    rng = np.random.default_rng(seed)

    # Canonical row order, so the seeded draws below see the same rows whatever order the caller
    # logged them in; rows with equal projections are (almost surely) equal rows.
    direction = rng.standard_normal(dimension)
    ref = ref[np.argsort(ref @ direction, kind="stable")]
    cur = cur[np.argsort(cur @ direction, kind="stable")]
    pooled = np.concatenate([ref, cur])

    bandwidth = _bandwidth(pooled, rng)
    weights = rng.standard_normal((dimension, features)) / bandwidth
    offsets = rng.uniform(0.0, 2.0 * np.pi, features)
    rff = np.sqrt(2.0 / features) * np.cos(pooled @ weights + offsets)
    phi = np.concatenate([pooled, rff], axis=1)
    squared_norms = np.einsum("if,if->i", phi, phi)
    total, total_sq = phi.sum(axis=0), float(squared_norms.sum())

    sum_ref, sq_ref = phi[:n].sum(axis=0), float(squared_norms[:n].sum())
    observed = float(_mmd2(sum_ref, total - sum_ref, np.asarray(sq_ref), np.asarray(total_sq - sq_ref), n, m))

    labels = rng.permuted(np.tile(np.arange(n + m) < n, (permutations, 1)), axis=1).astype(np.float64)
    perm_ref = labels @ phi
    perm_sq = labels @ squared_norms
    permuted = _mmd2(perm_ref, total - perm_ref, perm_sq, total_sq - perm_sq, n, m)
    # A relative tolerance, so a permutation that reproduces the observed split counts as reaching
    # it despite a different summation order.
    reached = int(np.count_nonzero(permuted >= observed - 1e-9 * max(abs(observed), 1e-12)))
    pvalue = (1 + reached) / (1 + permutations)

    mean_ref, mean_cur = ref.mean(axis=0), cur.mean(axis=0)
    norms = float(np.linalg.norm(mean_ref) * np.linalg.norm(mean_cur))
    # Two samples whose mean is the zero vector have no centre direction; call them orthogonal.
    cosine = float(np.clip(1.0 - (mean_ref @ mean_cur) / norms, 0.0, 2.0)) if norms > 0.0 else 1.0
    return EmbeddingDrift(
        drifted=bool(pvalue <= alpha and cosine >= min_cosine_distance),
        statistic=observed,
        pvalue=float(pvalue),
        alpha=float(alpha),
        min_cosine_distance=float(min_cosine_distance),
        cosine_distance=cosine,
        mean_distance=float(np.linalg.norm(mean_ref - mean_cur)),
        bandwidth=bandwidth,
        permutations=int(permutations),
        features=int(features),
        reference_count=int(n),
        current_count=int(m),
        dimension=int(dimension),
    )


def _scores(values: Any, name: str) -> np.ndarray:
    array = _as_float_array(values, name)
    if array.ndim != 1:
        raise InvalidInputError(
            f"{name} must be a 1-D array of one score per query, got shape {array.shape}",
            field=name,
            shape=list(array.shape),
        )
    _check_rows(array, name)
    return array


def score_drift(
    reference_scores: np.ndarray,
    current_scores: np.ndarray,
    *,
    alpha: float = 0.05,
    min_wasserstein: float = 0.0,
) -> ScoreDrift:
    """Test whether per-query retrieval scores (e.g. top-1 similarity) changed distribution.

    Args:
        reference_scores: Reference window's scores, one per query.
        current_scores: Current window's scores.
        alpha: Significance level of the Kolmogorov-Smirnov test.
        min_wasserstein: Least Wasserstein distance, in reference standard deviations, for the
            verdict to fire (0: significance alone decides).

    Returns:
        KS statistic and p-value, normalised Wasserstein distance, means, sizes, verdict.

    Raises:
        InvalidInputError: A sample is not 1-D numeric, has fewer than :data:`MIN_ROWS` scores
            or holds NaN/inf, or a setting is out of range.
    """
    _check_alpha(alpha)
    if not min_wasserstein >= 0.0:
        raise InvalidInputError(
            f"min_wasserstein must be >= 0, got {min_wasserstein}", field="min_wasserstein"
        )
    ref = _scores(reference_scores, "reference_scores")
    cur = _scores(current_scores, "current_scores")
    ks_statistic, ks_pvalue = ks_test(ref, cur)
    wasserstein = normalised_wasserstein(ref, cur)
    reference_mean, current_mean = float(ref.mean()), float(cur.mean())
    return ScoreDrift(
        drifted=bool(ks_pvalue <= alpha and wasserstein >= min_wasserstein),
        ks_statistic=float(ks_statistic),
        ks_pvalue=float(ks_pvalue),
        wasserstein=float(wasserstein),
        alpha=float(alpha),
        min_wasserstein=float(min_wasserstein),
        reference_mean=reference_mean,
        current_mean=current_mean,
        mean_change=current_mean - reference_mean,
        reference_count=len(ref),
        current_count=len(cur),
    )


def query_drift(
    reference_embeddings: np.ndarray,
    current_embeddings: np.ndarray,
    reference_scores: np.ndarray | None = None,
    current_scores: np.ndarray | None = None,
    thresholds: QueryDriftThresholds | None = None,
    *,
    permutations: int = 200,
    features: int = 256,
    seed: int = 0,
) -> QueryDriftReport:
    """Check a RAG collection's query drift: embeddings, and retrieval scores when given.

    With scores, each test runs at ``thresholds.alpha / 2`` (Bonferroni), so the report's
    verdict keeps a false-alarm rate of at most ``alpha``; without, the embedding test gets all
    of it.

    Args:
        reference_embeddings: Reference window's query embeddings, ``(n, d)``.
        current_embeddings: Current window's query embeddings, ``(m, d)``.
        reference_scores: Reference window's retrieval scores, or None.
        current_scores: Current window's retrieval scores; given exactly when the reference's are.
        thresholds: Decision thresholds; the defaults of :class:`QueryDriftThresholds` when None.
        permutations: Permutations of the embedding test.
        features: Random Fourier features of the embedding test.
        seed: Seed of the embedding test.

    Returns:
        Both results and the combined verdict.

    Raises:
        InvalidInputError: Only one of the score samples is given, or as in
            :func:`embedding_drift` and :func:`score_drift`.
    """
    thresholds = thresholds or QueryDriftThresholds()
    if (reference_scores is None) != (current_scores is None):
        missing = "reference_scores" if reference_scores is None else "current_scores"
        raise InvalidInputError(f"scores need both samples; {missing} is missing", field=missing)
    with_scores = reference_scores is not None and current_scores is not None
    alpha = thresholds.alpha / 2 if with_scores else thresholds.alpha
    embedding = embedding_drift(
        reference_embeddings,
        current_embeddings,
        alpha=alpha,
        min_cosine_distance=thresholds.cosine_distance,
        permutations=permutations,
        features=features,
        seed=seed,
    )
    scores = None
    if reference_scores is not None and current_scores is not None:
        scores = score_drift(
            reference_scores, current_scores, alpha=alpha, min_wasserstein=thresholds.score_wasserstein
        )
    return QueryDriftReport(embedding=embedding, scores=scores)
