"""Small statistics for metric reports: a percentile-bootstrap interval and agreement between two vectors.

Only numpy is imported (no scipy).

Example::

    >>> import numpy as np
    >>> bootstrap_ci([1.0, 1.0, 1.0])
    (1.0, 1.0, 1.0)
    >>> agreement(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]))["spearman"]
    -1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import numpy as np

__all__ = ["agreement", "average_ranks", "bootstrap_ci", "pearson"]

#: Elements of the ``[resamples, n]`` index matrix drawn at once (bounds the memory of a bootstrap).
_BOOTSTRAP_CHUNK = 4_000_000


def _check_vector(values: object, name: str) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(v.shape)}")
    if v.size == 0:
        raise ValueError(f"{name} is empty")
    if v.dtype == np.bool_ or not np.issubdtype(v.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {v.dtype}")
    v = v.astype(np.float64)
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or Inf at index {int(np.argmin(np.isfinite(v)))}")
    return v


def bootstrap_ci(
    values: Union[Sequence[float], np.ndarray],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of ``values`` with a percentile-bootstrap confidence interval: ``(mean, low, high)``.

    Draw ``resamples`` samples of size ``n`` with replacement (``numpy.random.default_rng(seed)``), take
    each sample's mean ``m_b``; the interval is the ``(1 − confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of the ``m_b`` (``np.quantile``, linear interpolation). Vectorised: one index matrix
    ``[resamples, n]`` (in chunks for very large ``n``). Deterministic for a given ``seed``.

    Args:
        values: 1-D finite numbers (one per image).
        confidence: in (0, 1).
        resamples: >= 1.
        seed: seed of the generator.

    Example::

        >>> mean, low, high = bootstrap_ci(np.arange(100.0))   # standard error 2.9: about ± 1.96 · 2.9
        >>> mean, round(low, 1), round(high, 1)
        (49.5, 43.9, 55.1)
    """
    v = _check_vector(values, "values")
    if isinstance(confidence, (bool, np.bool_)) or not (0.0 < float(confidence) < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(resamples, (bool, np.bool_)) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1, got {resamples!r}")
    rng = np.random.default_rng(seed)
    n = v.size
    per_chunk = max(1, _BOOTSTRAP_CHUNK // n)
    means = np.concatenate([
        v[rng.integers(0, n, size=(min(per_chunk, resamples - start), n))].mean(axis=1)
        for start in range(0, int(resamples), per_chunk)
    ])
    alpha = (1.0 - float(confidence)) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(v.mean()), float(low), float(high)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing the average of their ranks (as ``scipy.stats.rankdata``).

    Example::

        >>> average_ranks(np.array([10.0, 30.0, 20.0, 30.0])).tolist()
        [1.0, 3.5, 2.0, 3.5]
    """
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    starts_group = np.concatenate([[True], ordered[1:] != ordered[:-1]])
    group = np.cumsum(starts_group) - 1
    first = np.flatnonzero(starts_group)  # 0-based position where each group of equal values starts
    last = np.concatenate([first[1:], [v.size]]) - 1
    ranks = np.empty(v.size)
    ranks[order] = ((first + last) / 2.0 + 1.0)[group]
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two float 1-D arrays; NaN when either is constant."""
    da, db = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(da @ da) * float(db @ db))
    return float(da @ db) / denominator if denominator > 0 else math.nan


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values (ties: the lower index first)."""
    return np.argsort(-values, kind="stable")[:k]


def agreement(reference: np.ndarray, estimate: np.ndarray, top_fraction: float = 0.1) -> dict[str, float]:
    """How well ``estimate`` agrees with ``reference`` (1-D, same length ``K``).

    Returns a dict with

    * ``"pearson"``: ``Σ (a − ā)(b − b̄) / sqrt(Σ (a − ā)² Σ (b − b̄)²)``;
    * ``"spearman"``: the Pearson correlation of the ranks, ties given their average rank
      (:func:`average_ranks`);
    * ``"cosine"``: ``a·b / (‖a‖ ‖b‖)``;
    * ``"top_overlap"``: with ``k = ⌈top_fraction · K⌉``, ``|top_k(a) ∩ top_k(b)| / k``, where
      ``top_k`` holds the indices of the ``k`` largest values (ties: the lower index first).

    A correlation whose denominator is 0 (a constant vector; a zero vector for the cosine) is NaN.

    Args:
        reference: 1-D, the ground truth (e.g. exact Shapley values).
        estimate: 1-D, same length (e.g. LIFT-CAM coefficients).
        top_fraction: in (0, 1].

    Example::

        >>> r = agreement(np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 8.0]), top_fraction=0.5)
        >>> {name: round(value, 6) for name, value in r.items()}
        {'pearson': 1.0, 'spearman': 1.0, 'cosine': 1.0, 'top_overlap': 1.0}
    """
    a = _check_vector(reference, "reference")
    b = _check_vector(estimate, "estimate")
    if a.shape != b.shape:
        raise ValueError(f"estimate has shape {tuple(b.shape)}; expected {tuple(a.shape)} matching reference")
    if isinstance(top_fraction, (bool, np.bool_)) or not (0.0 < float(top_fraction) <= 1.0):
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    norms = float(np.linalg.norm(a)) * float(np.linalg.norm(b))
    k = math.ceil(round(float(top_fraction) * a.size, 9))  # round: 0.1 * 30 is 3.0000000000000004
    shared = np.intersect1d(_top(a, k), _top(b, k)).size
    return {
        "pearson": pearson(a, b),
        "spearman": pearson(average_ranks(a), average_ranks(b)),
        "cosine": float(a @ b) / norms if norms > 0 else math.nan,
        "top_overlap": shared / k,
    }
