"""Shapley values of the target layer's channels, estimated by permutation sampling.

The players are the K channels of one image's target activation ``A`` [K, h, w]; a coalition ``S``
keeps its channels and sets the others to the zero reference, and its value is the explained logit

    v(S) = y_c(A ⊙ 1_S)          (1_S: 1 on the channels of S, 0 elsewhere)

computed by the head ``F`` of the network (:func:`onnxcam.exporters.head.export_head`). The Shapley
value of channel k is its marginal contribution averaged over all orders of the channels:

    φ_k = E_π [ v(P_π(k) ∪ {k}) − v(P_π(k)) ]    (π uniform over the K! orders,
                                                 P_π(k): the channels before k in π)

so that ``Σ_k φ_k = v(all) − v(∅) = y_c(A) − y_c(0)`` (efficiency). LIFT-CAM's coefficients are a
one-pass approximation of these values (exact for a head linear in ``A``).

:func:`shapley_permutation` draws permutations π and evaluates, for each, the K + 1 prefixes of π
(``v(∅)`` and ``v(all)`` are shared by all permutations and evaluated once), batched through
``head_fn``. The marginal contributions of one permutation telescope to ``v(all) − v(∅)``, so the
estimate satisfies efficiency exactly (up to float64 rounding) whatever the number of samples. With
antithetic sampling each π is paired with its reverse (a channel early in one is late in the other),
and a pair's mean is one independent sample. The standard error of ``φ_k`` is the standard deviation
of the independent samples over the square root of their number; the split-half agreement (Pearson
and Spearman correlation of the estimates from the first and the second half of the samples) tells
whether the ranking of the channels has settled.

Runtime side: imports numpy (and onnxruntime through :class:`HeadScorer`), never onnx or torch.

Example (a numpy head, non-linear in the channels; any ``[M, K, h, w] → [M, C]`` function works)::

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> A = rng.random((6, 4, 4)).astype(np.float32)
    >>> W = rng.standard_normal((3, 6))
    >>> head = lambda batch: np.tanh(batch.mean(axis=(2, 3)) @ W.T)
    >>> est = shapley_permutation(head, A, target_class=1, permutations=64, seed=0)
    >>> est.values.shape, est.permutations, est.evaluations
    ((6,), 64, 322)
    >>> bool(est.efficiency_gap < 1e-12), bool(abs(est.values.sum() - (est.value_full - est.value_empty)) < 1e-12)
    (True, True)

With an exported head model (onnxruntime)::

    >>> from onnxcam.exporters.head import export_head  # doctest: +SKIP
    >>> scorer = HeadScorer(export_head("resnet20.onnx", "/layer2/layer2.2/Relu_1_output_0").SerializeToString())  # doctest: +SKIP
    >>> est = shapley_permutation(scorer, activations, target_class=3, permutations=512)  # doctest: +SKIP
    >>> est.relative_stderr, est.split_half_pearson  # doctest: +SKIP
    (0.031, 0.998)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from onnxcam.metrics.statistics import average_ranks, pearson

__all__ = ["HeadFunction", "HeadScorer", "ShapleyEstimate", "shapley_permutation"]

#: A function from a batch of target activations ``[M, K, h, w]`` to logits ``[M, C]``.
HeadFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ShapleyEstimate:
    """A permutation-sampling estimate of the channels' Shapley values.

    Attributes:
        values: float64 ``[K]``, the estimated ``φ_k``.
        stderr: float64 ``[K]``, their standard errors (0 where every sample agrees, e.g. a linear head).
        target_class: the explained class ``c``.
        permutations: permutations evaluated (an antithetic pair counts as two).
        evaluations: activations fed to the head: ``2 + permutations · (K − 1)``.
        value_full: ``v(all) = y_c(A)``.
        value_empty: ``v(∅) = y_c(0)``.
        efficiency_gap: ``|Σ_k φ_k − (v(all) − v(∅))|``, ~1e-15·scale by construction.
        relative_stderr: ``‖stderr‖₂ / ‖φ‖₂`` (the noise-to-signal ratio of the whole vector).
        split_half_pearson: Pearson correlation of the estimates from the two halves of the samples.
        split_half_spearman: Spearman correlation of the same two estimates.
        antithetic: whether permutations were paired with their reverse.
        stderr_target_met: with ``until_stderr``, whether ``relative_stderr <= until_stderr`` (sampling
            stops as soon as it is); None when no stopping rule was given.
    """

    values: np.ndarray
    stderr: np.ndarray
    target_class: int
    permutations: int
    evaluations: int
    value_full: float
    value_empty: float
    efficiency_gap: float
    relative_stderr: float
    split_half_pearson: float
    split_half_spearman: float
    antithetic: bool
    stderr_target_met: Optional[bool] = None

    @property
    def num_channels(self) -> int:
        return int(self.values.shape[0])

    def summary(self) -> dict:
        """JSON-friendly scalars (no arrays): permutations, evaluations, gap, convergence."""
        return {
            "target_class": self.target_class,
            "permutations": self.permutations,
            "evaluations": self.evaluations,
            "value_full": self.value_full,
            "value_empty": self.value_empty,
            "efficiency_gap": self.efficiency_gap,
            "relative_stderr": self.relative_stderr,
            "split_half_pearson": self.split_half_pearson,
            "split_half_spearman": self.split_half_spearman,
            "antithetic": self.antithetic,
            "stderr_target_met": self.stderr_target_met,
        }


def shapley_permutation(
    head_fn: HeadFunction,
    activations: np.ndarray,
    target_class: int,
    *,
    permutations: int = 256,
    antithetic: bool = True,
    batch_size: int = 512,
    seed: int = 0,
    until_stderr: Optional[float] = None,
) -> ShapleyEstimate:
    """Estimate the Shapley values of the K channels of ``activations`` for the logit ``target_class``.

    ``v(S) = y_c(A ⊙ 1_S)``; ``φ_k = E_π[v(P_π(k) ∪ {k}) − v(P_π(k))]`` (see the module docstring).
    Each permutation π costs ``K − 1`` head evaluations (its proper non-empty prefixes; ``v(∅)`` and
    ``v(all)`` are evaluated once); prefixes of several permutations are stacked into batches of
    ``batch_size`` activations per ``head_fn`` call, their masks built at once from π's inverse ranks
    (``mask[j, k] = rank_π(k) < j``).

    Args:
        head_fn: ``[M, K, h, w]`` float32 → logits ``[M, C]`` (a :class:`HeadScorer`, or any function).
        activations: one image's target activation ``[K, h, w]`` (``A``; the zero reference is implied).
        target_class: the explained class ``c`` (an index of the logits).
        permutations: permutations to evaluate (the maximum with ``until_stderr``); with
            ``antithetic`` an odd number is rounded up. At least 2 independent samples are needed
            for a standard error: ``permutations >= 4`` with ``antithetic``, ``>= 2`` without.
        antithetic: pair every permutation with its reverse (variance reduction; unbiased).
        batch_size: activations per ``head_fn`` call (memory: ``batch_size · K·h·w`` floats).
        seed: seed of ``numpy.random.default_rng``; the permutations drawn depend on it alone (not on
            ``batch_size`` or ``until_stderr``), so a stopped run is a prefix of a longer one.
        until_stderr: stop once ``relative_stderr`` (``‖stderr‖/‖φ‖``) is at most this value,
            checked after each batch of permutations (and not before 8 independent samples).

    Returns:
        A :class:`ShapleyEstimate`.

    Raises:
        ValueError: ``activations`` not a finite float ``[K, h, w]`` array, a bad ``target_class``,
            ``permutations``, ``batch_size`` or ``until_stderr``, or ``head_fn`` returning something
            other than ``[M, C]`` with ``C > target_class`` (the message names the shapes).

    Example:
        For a head linear in ``A`` every permutation gives the same marginal contributions, which
        are LIFT-CAM's coefficients ``φ_k = Σ_ij A_kij ∂y_c/∂A_kij`` (here ``W[c, k] · mean_ij A_kij``):

        >>> import numpy as np
        >>> A = np.arange(24, dtype=np.float32).reshape(6, 2, 2)
        >>> W = np.linspace(-1, 1, 12).reshape(2, 6)
        >>> est = shapley_permutation(lambda b: b.mean(axis=(2, 3)) @ W.T, A, 0, permutations=8)
        >>> bool(np.allclose(est.values, W[0] * A.mean(axis=(1, 2)))), bool(est.stderr.max() < 1e-12)
        (True, True)
    """
    a = _check_activations(head_fn, activations)
    c = _check_class(target_class)
    units, per_unit = _check_permutations(permutations, antithetic)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if until_stderr is not None and not (isinstance(until_stderr, (int, float)) and until_stderr > 0):
        raise ValueError(f"until_stderr must be a positive number (a relative standard error) or None, got {until_stderr!r}")
    k = a.shape[0]

    ends = _class_values(head_fn, np.stack([np.zeros_like(a), a]), c)
    value_empty, value_full = float(ends[0]), float(ends[1])
    rng = np.random.default_rng(seed)
    rows_per_unit = per_unit * max(k - 1, 1)
    units_per_round = max(1, int(batch_size) // rows_per_unit)
    samples: list[np.ndarray] = []
    done = 0
    while done < units:
        n = min(units_per_round, units - done)
        perms = _draw(rng, n, k, antithetic)
        contributions = _marginal_contributions(head_fn, a, c, perms, value_empty, value_full, int(batch_size))
        samples.append(contributions.reshape(n, per_unit, k).mean(axis=1))
        done += n
        if until_stderr is not None and done >= 8 and done < units:
            drawn = np.concatenate(samples)
            if _relative_stderr(drawn.mean(axis=0), _stderr(drawn)) <= until_stderr:
                break
    drawn = np.concatenate(samples)
    values = drawn.mean(axis=0)
    stderr = _stderr(drawn)
    relative = _relative_stderr(values, stderr)
    half = drawn.shape[0] // 2
    first, second = drawn[:half].mean(axis=0), drawn[half : 2 * half].mean(axis=0)
    return ShapleyEstimate(
        values=values,
        stderr=stderr,
        target_class=c,
        permutations=done * per_unit,
        evaluations=2 + done * per_unit * max(k - 1, 0),
        value_full=value_full,
        value_empty=value_empty,
        efficiency_gap=float(abs(values.sum() - (value_full - value_empty))),
        relative_stderr=relative,
        split_half_pearson=_split_half(first, second),
        split_half_spearman=_split_half(average_ranks(first), average_ranks(second)),
        antithetic=bool(antithetic),
        stderr_target_met=None if until_stderr is None else bool(relative <= until_stderr),
    )


class HeadScorer:
    """A head model (:func:`onnxcam.exporters.head.export_head`) as a ``head_fn``: activations → logits.

    Wraps :class:`onnxcam.runtime.Scorer` (one onnxruntime session, ``batch_size`` activations per
    run) and checks the activations' shape against the model's input.

    Args:
        model: path or serialised bytes of the head model (any model with one 4-D float input and
            logits ``[N, C]`` as its first output), or an ``onnxruntime.InferenceSession``.
        device: "cpu", "cuda" or "auto".
        threads: onnxruntime intra-op threads (None: onnxruntime's default).
        batch_size: activations per session run.

    Example::

        >>> scorer = HeadScorer("resnet20.head.onnx", device="cpu")  # doctest: +SKIP
        >>> scorer.input_shape, scorer(np.zeros((2, 32, 16, 16), np.float32)).shape  # doctest: +SKIP
        ((32, 16, 16), (2, 10))
    """

    def __init__(
        self,
        model: Union[str, "os.PathLike[str]", bytes, object],
        *,
        device: str = "cpu",
        threads: Optional[int] = None,
        batch_size: int = 512,
    ) -> None:
        from onnxcam import contract
        from onnxcam.runtime.scoring import Scorer

        probe = Scorer(model, device=device, threads=threads, batch_size=batch_size)
        outputs = [o.name for o in probe.session.get_outputs()]
        output = contract.HEAD_OUTPUT if contract.HEAD_OUTPUT in outputs else None
        self._scorer = Scorer(probe.session, output=output, batch_size=batch_size) if output else probe
        shape = next(i.shape for i in self._scorer.session.get_inputs() if i.name == self._scorer.input_name)
        #: ``(K, h, w)`` when the model's input has static trailing dims, else None.
        self.input_shape: Optional[tuple[int, int, int]] = (
            tuple(int(d) for d in shape[1:]) if all(isinstance(d, int) for d in shape[1:]) else None  # type: ignore[assignment]
        )

    @property
    def session(self):
        return self._scorer.session

    def __call__(self, activations: np.ndarray) -> np.ndarray:
        """Logits float32 ``[M, C]`` of the activations ``[M, K, h, w]``."""
        x = np.asarray(activations)
        if x.ndim != 4:
            raise ValueError(f"activations must be a batch [M, K, h, w], got shape {x.shape}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"activations have shape [K, h, w] = {list(x.shape[1:])} but the head model expects {list(self.input_shape)}")
        return self._scorer.logits(x)

    def __repr__(self) -> str:
        return f"HeadScorer(input_shape={self.input_shape}, batch_size={self._scorer.batch_size})"


# ---------------------------------------------------------------------------------------- helpers
def _check_activations(head_fn: HeadFunction, activations: np.ndarray) -> np.ndarray:
    a = np.asarray(activations)
    if a.ndim != 3:
        hint = "; pass one image's activations, e.g. activations[0]" if a.ndim == 4 else ""
        raise ValueError(f"activations must be one image's target activation [K, h, w], got shape {a.shape}{hint}")
    if a.dtype.kind != "f":
        raise ValueError(f"activations must be a float array, got {a.dtype}")
    if a.shape[0] < 1 or a.size == 0:
        raise ValueError(f"activations [K, h, w] must not be empty, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("activations contain NaN or Inf")
    expected = getattr(head_fn, "input_shape", None)
    if expected is not None and tuple(a.shape) != tuple(expected):
        raise ValueError(f"activations have shape [K, h, w] = {list(a.shape)} but the head expects {list(expected)}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_class(target_class: int) -> int:
    if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)) or target_class < 0:
        raise ValueError(f"target_class must be a non-negative integer, got {target_class!r}")
    return int(target_class)


def _check_permutations(permutations: int, antithetic: bool) -> tuple[int, int]:
    """``(independent samples, permutations per sample)``."""
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)):
        raise ValueError(f"permutations must be an integer, got {permutations!r}")
    per_unit = 2 if antithetic else 1
    units = math.ceil(int(permutations) / per_unit)
    if units < 2:
        least = 4 if antithetic else 2
        raise ValueError(
            f"permutations must be >= {least}{' with antithetic sampling' if antithetic else ''} (the standard "
            f"error needs two independent samples), got {permutations!r}"
        )
    return units, per_unit


def _class_values(head_fn: HeadFunction, batch: np.ndarray, c: int) -> np.ndarray:
    """``y_c`` (float64 ``[M]``) of a batch, with the shape of ``head_fn``'s answer checked."""
    out = np.asarray(head_fn(batch))
    if out.ndim != 2 or out.shape[0] != batch.shape[0]:
        raise ValueError(f"head_fn must return logits [M, C] = [{batch.shape[0]}, C] for {batch.shape[0]} activations, got shape {out.shape}")
    if c >= out.shape[1]:
        raise ValueError(f"target_class {c} is out of range for {out.shape[1]} classes")
    return out[:, c].astype(np.float64)


def _draw(rng: np.random.Generator, n: int, k: int, antithetic: bool) -> np.ndarray:
    """``n`` uniform permutations of ``range(k)`` (each followed by its reverse when antithetic)."""
    perms = np.argsort(rng.random((n, k)), axis=1)
    if antithetic:
        perms = np.stack([perms, perms[:, ::-1]], axis=1).reshape(2 * n, k)
    return perms


def _marginal_contributions(
    head_fn: HeadFunction, a: np.ndarray, c: int, perms: np.ndarray, v_empty: float, v_full: float, batch_size: int
) -> np.ndarray:
    """``Δ[p, k] = v(P_π(k) ∪ {k}) − v(P_π(k))`` for each permutation ``π = perms[p]``."""
    p, k = perms.shape
    ranks = np.empty_like(perms)
    ranks[np.arange(p)[:, None], perms] = np.arange(k)  # ranks[p, perm[p, j]] = j: the inverse permutation
    prefix = np.empty((p, k + 1), np.float64)
    prefix[:, 0], prefix[:, k] = v_empty, v_full
    rows = p * (k - 1)  # prefix sizes 1 .. K-1 of every permutation
    inner = np.empty(rows, np.float64)
    for start in range(0, rows, batch_size):
        r = np.arange(start, min(start + batch_size, rows))
        which, size = r // (k - 1), r % (k - 1) + 1
        mask = ranks[which] < size[:, None]  # [B, K]: the first `size` channels of permutation `which`
        inner[start : start + len(r)] = _class_values(head_fn, a[None] * mask[:, :, None, None].astype(np.float32), c)
    prefix[:, 1:k] = inner.reshape(p, k - 1)
    steps = np.diff(prefix, axis=1)  # steps[p, j]: the contribution of the j-th channel of perms[p]
    return np.take_along_axis(steps, ranks, axis=1)


def _stderr(samples: np.ndarray) -> np.ndarray:
    return samples.std(axis=0, ddof=1) / math.sqrt(samples.shape[0])


def _relative_stderr(values: np.ndarray, stderr: np.ndarray) -> float:
    norm = float(np.linalg.norm(values))
    spread = float(np.linalg.norm(stderr))
    if norm == 0.0:
        return 0.0 if spread == 0.0 else math.inf
    return spread / norm


def _split_half(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of the two halves' estimates; 1.0 when they are identical (e.g. a linear head,
    where every permutation gives the same values), NaN when exactly one is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 1.0 if np.array_equal(x, y) else pearson(x, y)
