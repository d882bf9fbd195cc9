"""Faithfulness of saliency maps: Average Drop / Increase in Confidence, and deletion / insertion curves.

Every metric takes

* ``x``: preprocessed model inputs, float ``[N, C, H, W]`` (what the model is fed);
* ``saliency``: maps ``[N, H, W]`` on the same pixel grid, any scale (only their order, or their
  min-max normalised values, matter; see each function);
* ``classes``: int ``[N]``, the explained class of every image;
* ``score_fn``: a function from a float32 batch ``[M, C, H, W]`` to **probabilities**
  ``[M, num_classes]``. An :class:`onnxcam.runtime.Scorer` is one (it splits its input into its own
  chunks); ``batch_size`` here bounds how many perturbed images are built and handed to ``score_fn``
  at once, so memory stays bounded whatever ``N`` and ``steps`` are.

Only numpy and OpenCV are imported (no onnx, no torch). Pixels are never looped over in Python: masks
come from pixel ranks, perturbed images from ``np.where``.

Example (a hand-made "model" whose probability of class 0 is the mean of channel 0)::

    >>> import numpy as np
    >>> def score_fn(batch):
    ...     p0 = batch[:, 0].mean(axis=(1, 2))
    ...     return np.stack([p0, 1 - p0], axis=1)
    >>> x = np.array([[[[1, 1], [0, 0]]]], np.float32)       # one 1-channel 2x2 image, p0 = 0.5
    >>> good = np.array([[[1.0, 1.0], [0.0, 0.0]]])          # points at the two bright pixels
    >>> deletion_auc(score_fn, x, good, [0], steps=2).curves.tolist()
    [[0.5, 0.0, 0.0]]
    >>> deletion_auc(score_fn, x, 1 - good, [0], steps=2).curves.tolist()
    [[0.5, 0.5, 0.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import cv2
import numpy as np

__all__ = [
    "AverageDropResult",
    "CurveResult",
    "DeletionInsertionResult",
    "ScoreFunction",
    "average_drop_increase",
    "deletion_auc",
    "deletion_insertion",
    "gaussian_blur",
    "insertion_auc",
    "normalize_maps",
    "pixel_ranks",
]

#: A function from a float32 batch ``[M, C, H, W]`` to probabilities ``[M, num_classes]``
#: (the same contract as :data:`onnxcam.runtime.scoring.ScoreFunction`).
ScoreFunction = Callable[[np.ndarray], np.ndarray]
#: A baseline image: ``"zero"``, ``"mean"``, ``"blur"``, a number, or an array broadcastable to ``x``.
Baseline = Union[str, float, np.ndarray]

#: Perturbed images handed to ``score_fn`` per call, unless ``batch_size`` says otherwise.
DEFAULT_BATCH_SIZE = 128
#: RISE's blur (Petsiuk et al. 2018, ``evaluation.py``: ``gkern(klen=11, nsig=5)``).
BLUR_KERNEL = 11
BLUR_SIGMA = 5.0


# ---------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class AverageDropResult:
    """Result of :func:`average_drop_increase` (arrays are per image, ``[N]``).

    Attributes:
        original: ``Y_c = p_c(x)``.
        explained: ``O_c = p_c(E)``, the score of the explanation image.
        drop: ``max(0, Y_c - O_c) / Y_c`` (a fraction; 0 where ``Y_c = 0``).
        increase: ``O_c > Y_c``.
        average_drop: ``100 · mean(drop)`` (percent; lower is better).
        increase_in_confidence: ``100 · mean(increase)`` (percent; higher is better).
    """

    original: np.ndarray
    explained: np.ndarray
    drop: np.ndarray
    increase: np.ndarray
    average_drop: float
    increase_in_confidence: float


@dataclass(frozen=True)
class CurveResult:
    """A deletion or insertion curve per image (see :func:`deletion_insertion`).

    Attributes:
        mode: ``"deletion"`` or ``"insertion"``.
        fractions: ``[steps + 1]``, ``i / steps``: the x axis of every curve.
        counts: ``[steps + 1]`` int, the number of pixels changed at each point, ``round(i · H·W / steps)``.
        curves: ``[N, steps + 1]``, ``p_c`` of each perturbed image.
        aucs: ``[N]``, the trapezoid area under each curve over ``fraction ∈ [0, 1]``.
    """

    mode: str
    fractions: np.ndarray
    counts: np.ndarray
    curves: np.ndarray
    aucs: np.ndarray

    @property
    def mean_auc(self) -> float:
        """Mean of :attr:`aucs` over the images."""
        return float(self.aucs.mean())


@dataclass(frozen=True)
class DeletionInsertionResult:
    """Both curves of the same maps: :attr:`deletion` (lower AUC is better), :attr:`insertion` (higher)."""

    deletion: CurveResult
    insertion: CurveResult


# ---------------------------------------------------------------------------------------- validation
def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_x(x: object) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise ValueError(f"x must be a numpy float array [N, C, H, W], got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"x must be a batch [N, C, H, W], got {x.ndim}-D shape {tuple(x.shape)}")
    if x.shape[0] == 0 or 0 in x.shape[2:]:
        raise ValueError(f"x has shape {tuple(x.shape)}: no images or no pixels")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"x must hold preprocessed floats (float32), got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or Inf")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_maps(saliency: object, expected: tuple[int, int, int], what: str = "x") -> np.ndarray:
    """``saliency`` as float64 ``[N, H, W]``, refused unless it has exactly the ``expected`` shape."""
    s = np.asarray(saliency)
    if s.shape != expected:
        n, h, w = expected
        raise ValueError(
            f"saliency has shape {tuple(s.shape)}; expected [N, H, W] = [{n}, {h}, {w}] matching {what}"
        )
    return finite_maps(s)


def finite_maps(s: np.ndarray) -> np.ndarray:
    """``s`` as float64, refused unless numeric (or bool) and finite (shape checked by the caller)."""
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_):
        raise ValueError(f"saliency must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.isfinite(s).all():
        raise ValueError("saliency contains NaN or Inf")
    return s


def _check_classes(classes: object, n: int) -> np.ndarray:
    c = np.asarray(classes)
    if c.shape != (n,):
        raise ValueError(f"classes has shape {tuple(c.shape)}; expected [N] = [{n}] (one class per image)")
    if c.dtype == np.bool_ or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"classes must hold integer class indices, got dtype {c.dtype}")
    if n and c.min() < 0:
        raise ValueError(f"classes[{int(np.argmin(c))}] = {int(c.min())} is negative")
    return c.astype(np.int64)


def _class_scores(score_fn: ScoreFunction, batch: np.ndarray, picked: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``score_fn(batch)[i, picked[i]]`` as float64, after checking the output's shape and ``classes``."""
    probs = np.asarray(score_fn(batch))
    m = batch.shape[0]
    if probs.ndim != 2 or probs.shape[0] != m:
        raise ValueError(
            f"score_fn must return probabilities [M, num_classes] = [{m}, num_classes] for a batch of {m}, "
            f"got shape {tuple(probs.shape)}"
        )
    num_classes = probs.shape[1]
    if classes.max() >= num_classes:
        i = int(np.argmax(classes))
        raise ValueError(f"classes[{i}] = {int(classes[i])} is out of range [0, {num_classes}) of score_fn's output")
    return probs[np.arange(m), picked].astype(np.float64)


def _scores(score_fn: ScoreFunction, images: np.ndarray, classes: np.ndarray, batch_size: int) -> np.ndarray:
    """``p_c`` of every image (``classes[i]`` for ``images[i]``), ``batch_size`` images per call."""
    parts = [
        _class_scores(score_fn, images[a : a + batch_size], classes[a : a + batch_size], classes)
        for a in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(parts)


# ---------------------------------------------------------------------------------------- helpers
def normalize_maps(saliency: np.ndarray) -> np.ndarray:
    """Min-max normalise every map of ``[N, H, W]`` to [0, 1]: ``(s − min s) / (max s − min s)``.

    A constant map becomes all zeros (as onnxcam's heatmaps). Returns float64.

    Example::

        >>> normalize_maps(np.array([[[2.0, 4.0], [6.0, 6.0]], [[3.0, 3.0], [3.0, 3.0]]])).tolist()
        [[[0.0, 0.5], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]
    """
    s = np.asarray(saliency, dtype=np.float64)
    low = s.min(axis=(-2, -1), keepdims=True)
    span = s.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 0, (s - low) / np.where(span > 0, span, 1.0), 0.0)


def pixel_ranks(saliency: np.ndarray) -> np.ndarray:
    """Rank of every pixel by descending saliency: int ``[N, H·W]``, 0 = most salient.

    Ties are broken by the row-major pixel index ``y·W + x`` (the lower index ranks first): a stable
    sort of ``−saliency``. So a constant map deletes/inserts pixels in reading order.

    Example::

        >>> pixel_ranks(np.array([[[0.5, 0.9], [0.5, 0.1]]])).tolist()
        [[1, 0, 2, 3]]
    """
    flat = np.asarray(saliency, dtype=np.float64).reshape(len(saliency), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None, :], axis=1)
    return ranks


def gaussian_blur(x: np.ndarray, kernel: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """Gaussian blur of every channel of every image of ``[N, C, H, W]`` (``cv2.GaussianBlur``).

    The defaults are RISE's insertion substrate (an 11×11 kernel, sigma 5). Borders are reflected
    (OpenCV's ``BORDER_REFLECT_101``); RISE's ``conv2d`` pads with zeros instead, which darkens a
    5-pixel frame towards the zero input. ``kernel`` must be odd.

    Example::

        >>> blurred = gaussian_blur(np.ones((1, 3, 8, 8), np.float32), kernel=3, sigma=1.0)
        >>> blurred.shape, bool(np.allclose(blurred, 1.0))
        ((1, 3, 8, 8), True)
    """
    kernel = _check_positive_int(kernel, "blur kernel")
    if kernel % 2 == 0:
        raise ValueError(f"blur kernel must be odd, got {kernel}")
    if not sigma > 0:
        raise ValueError(f"blur sigma must be > 0, got {sigma!r}")
    out = np.empty(x.shape, np.float32)
    for i, image in enumerate(x):  # one cv2 call per image, all channels at once
        blurred = cv2.GaussianBlur(np.ascontiguousarray(image.transpose(1, 2, 0), np.float32), (kernel, kernel), sigma)
        out[i] = blurred.reshape(x.shape[2], x.shape[3], x.shape[1]).transpose(2, 0, 1)
    return out


def _baseline_images(x: np.ndarray, baseline: Baseline, name: str, kernel: int, sigma: float) -> np.ndarray:
    """The baseline as an array of ``x``'s shape (possibly a broadcast view)."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return np.broadcast_to(np.float32(0.0), x.shape)
        if baseline == "mean":
            return np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape)
        if baseline == "blur":
            return gaussian_blur(x, kernel, sigma)
        raise ValueError(f"{name} must be 'zero', 'mean', 'blur', a number or an array, got {baseline!r}")
    b = np.asarray(baseline)
    if not np.issubdtype(b.dtype, np.number) or b.dtype == np.bool_:
        raise ValueError(f"{name} must be 'zero', 'mean', 'blur', a number or an array, got dtype {b.dtype}")
    try:
        b = np.broadcast_to(b.astype(np.float32), x.shape)
    except ValueError:
        raise ValueError(
            f"{name} has shape {tuple(b.shape)}, which does not broadcast to x's shape {tuple(x.shape)} "
            "(use a scalar, [C, 1, 1], [C, H, W] or [N, C, H, W])"
        ) from None
    if not np.isfinite(b).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return b


# ---------------------------------------------------------------------------------------- Average Drop
def average_drop_increase(
    score_fn: ScoreFunction,
    x: np.ndarray,
    saliency: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    baseline: Union[float, np.ndarray] = 0.0,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AverageDropResult:
    """Average Drop % and Increase in Confidence % (Chattopadhyay et al., Grad-CAM++, WACV 2018).

    With ``H`` the saliency min-max normalised per image to [0, 1] (a constant map gives ``H = 0``) and
    ``b`` the baseline, the explanation image is ``E = H ⊙ x + (1 − H) ⊙ b`` (``H`` applied to every
    channel). With ``Y_c = p_c(x)`` and ``O_c = p_c(E)``:

    * Average Drop % ``= 100 · mean_i max(0, Y_c − O_c) / Y_c`` (lower is better; an image with
      ``Y_c = 0`` counts 0);
    * Increase in Confidence % ``= 100 · mean_i 1[O_c > Y_c]`` (higher is better).

    The paper multiplies the image by the map, ``E = H ⊙ x``: that is ``b = 0`` here. ``x`` lives in
    the model's input space, so for mean/std-normalised inputs ``b = 0`` is the dataset's mean colour,
    not black (pass ``baseline=(0 - mean) / std`` per channel, shape ``[C, 1, 1]``, for black).

    Args:
        score_fn: float32 ``[M, C, H, W]`` -> probabilities ``[M, num_classes]``.
        x: preprocessed images ``[N, C, H, W]``.
        saliency: maps ``[N, H, W]`` (any scale).
        classes: explained class per image, ``[N]``.
        baseline: a number or an array broadcastable to ``x`` (``[C, 1, 1]``, ``[C, H, W]``, ...).
        batch_size: images per ``score_fn`` call (``2N`` images are scored).

    Example::

        >>> def score_fn(batch):   # p0 = mean of channel 0
        ...     p0 = batch[:, 0].mean(axis=(1, 2))
        ...     return np.stack([p0, 1 - p0], axis=1)
        >>> x = np.full((2, 1, 2, 2), 0.8, np.float32)
        >>> maps = np.array([[[1, 1], [0, 0]], [[1, 1], [1, 1]]], float)  # keep half, keep all
        >>> r = average_drop_increase(score_fn, x, maps, [0, 0])
        >>> r.original.round(3).tolist(), r.explained.round(3).tolist(), r.drop.round(3).tolist()
        ([0.8, 0.8], [0.4, 0.0], [0.5, 1.0])
        >>> round(r.average_drop, 3), r.increase_in_confidence
        (75.0, 0.0)

    (The second map is constant, so ``H = 0`` and ``E`` is the baseline.)
    """
    x = _check_x(x)
    n, _, h, w = x.shape
    maps = normalize_maps(_check_maps(saliency, (n, h, w)))
    cls = _check_classes(classes, n)
    batch_size = _check_positive_int(batch_size, "batch_size")
    if isinstance(baseline, str):
        raise ValueError(f"baseline must be a number or an array broadcastable to x, got {baseline!r}")
    b = _baseline_images(x, baseline, "baseline", BLUR_KERNEL, BLUR_SIGMA)
    weight = maps[:, None].astype(np.float32)
    explained_images = weight * x + (1.0 - weight) * b
    scores = _scores(score_fn, np.concatenate([x, explained_images]), np.concatenate([cls, cls]), batch_size)
    original, explained = scores[:n], scores[n:]
    safe = np.where(original > 0, original, 1.0)
    drop = np.where(original > 0, np.maximum(0.0, original - explained) / safe, 0.0)
    increase = explained > original
    return AverageDropResult(
        original=original,
        explained=explained,
        drop=drop,
        increase=increase,
        average_drop=float(100.0 * drop.mean()),
        increase_in_confidence=float(100.0 * increase.mean()),
    )


# ---------------------------------------------------------------------------------------- deletion / insertion
def _curve(
    score_fn: ScoreFunction,
    start: np.ndarray,
    end: np.ndarray,
    ranks: np.ndarray,
    counts: np.ndarray,
    classes: np.ndarray,
    batch_size: int,
) -> np.ndarray:
    """``[N, S]`` scores; point ``s`` of image ``n`` takes its ``counts[s]`` top-ranked pixels from
    ``end[n]`` and the others from ``start[n]``. The ``N·S`` images are built ``batch_size`` at a time."""
    n, c, h, w = start.shape
    points = len(counts)
    total = n * points
    out = np.empty(total)
    for a in range(0, total, batch_size):
        image, step = np.divmod(np.arange(a, min(a + batch_size, total)), points)
        changed = (ranks[image] < counts[step][:, None]).reshape(-1, 1, h, w)
        batch = np.where(changed, end[image], start[image])
        out[a : a + len(image)] = _class_scores(score_fn, batch, classes[image], classes)
    return out.reshape(n, points)


def _trapezoid(curves: np.ndarray, steps: int) -> np.ndarray:
    """Area under ``[N, steps + 1]`` curves sampled at ``i / steps``: ``(Σ y − (y_0 + y_S) / 2) / steps``."""
    return (curves.sum(axis=1) - 0.5 * (curves[:, 0] + curves[:, -1])) / steps


def _prepare(
    x: np.ndarray, saliency: np.ndarray, classes: object, steps: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, np.ndarray]:
    """Checked ``x``, pixel ranks, classes, steps, batch size and the pixel counts ``round(i·H·W/steps)``."""
    x = _check_x(x)
    n, _, h, w = x.shape
    ranks = pixel_ranks(_check_maps(saliency, (n, h, w)))
    cls = _check_classes(classes, n)
    steps = _check_positive_int(steps, "steps")
    batch_size = _check_positive_int(batch_size, "batch_size")
    counts = np.rint(np.arange(steps + 1) * (h * w) / steps).astype(np.int64)
    return x, ranks, cls, steps, batch_size, counts


def _result(mode: str, curves: np.ndarray, counts: np.ndarray, steps: int) -> CurveResult:
    return CurveResult(mode, np.arange(steps + 1) / steps, counts, curves, _trapezoid(curves, steps))


def deletion_insertion(
    score_fn: ScoreFunction,
    x: np.ndarray,
    saliency: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    *,
    steps: int = 50,
    deletion_baseline: Baseline = "zero",
    insertion_baseline: Baseline = "blur",
    blur_kernel: int = BLUR_KERNEL,
    blur_sigma: float = BLUR_SIGMA,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DeletionInsertionResult:
    """Deletion and insertion curves and their AUCs (RISE: Petsiuk, Das & Saenko, BMVC 2018).

    Pixels are ranked by descending saliency (ties: lower row-major index ``y·W + x`` first; see
    :func:`pixel_ranks`). The curve has ``steps + 1`` points at fractions ``f_i = i / steps``,
    ``i = 0..steps``; point ``i`` changes the ``k_i = round(i · H·W / steps)`` top-ranked pixels (half
    to even, as Python's ``round``), all channels at once:

    * **deletion**: start from ``x`` and replace the top ``k_i`` pixels by the deletion baseline
      (``"zero"`` default: 0 in model-input space, the mean colour for mean/std-normalised inputs);
      a faithful map makes ``p_c`` fall fast: lower AUC is better;
    * **insertion**: start from the insertion baseline (``"blur"`` default: ``x`` blurred with an
      11×11, sigma-5 Gaussian as in RISE, see :func:`gaussian_blur`) and put back the top ``k_i``
      original pixels: higher AUC is better.

    The score is ``p_c`` (``score_fn``'s probability of the image's class) and
    ``AUC = Σ_i (y_i + y_{i+1}) / 2 · (f_{i+1} − f_i)`` (trapezoid over ``f ∈ [0, 1]``).

    Baselines: ``"zero"``, ``"mean"`` (per-image, per-channel mean of ``x``), ``"blur"``, a number, or an
    array broadcastable to ``x`` (``[C, 1, 1]``, ``[C, H, W]``, ``[N, C, H, W]``).

    Args:
        score_fn: float32 ``[M, C, H, W]`` -> probabilities ``[M, num_classes]``.
        x: preprocessed images ``[N, C, H, W]``.
        saliency: maps ``[N, H, W]`` (any scale; only the order matters).
        classes: explained class per image, ``[N]``.
        steps: number of equal fractions (>= 1); ``2·N·(steps + 1)`` images are scored.
        deletion_baseline, insertion_baseline: see above.
        blur_kernel, blur_sigma: the ``"blur"`` baseline's Gaussian (odd kernel size, sigma > 0).
        batch_size: perturbed images built and scored per ``score_fn`` call.

    Example (``p0`` = mean of channel 0; a 2×2 image whose top row is 1)::

        >>> def score_fn(batch):
        ...     p0 = batch[:, 0].mean(axis=(1, 2))
        ...     return np.stack([p0, 1 - p0], axis=1)
        >>> x = np.array([[[[1, 1], [0, 0]]]], np.float32)
        >>> r = deletion_insertion(score_fn, x, x[:, 0], [0], steps=2, insertion_baseline="zero")
        >>> r.deletion.curves.tolist(), r.deletion.aucs.tolist()
        ([[0.5, 0.0, 0.0]], [0.125])
        >>> r.insertion.curves.tolist(), r.insertion.aucs.tolist()
        ([[0.0, 0.5, 0.5]], [0.375])
    """
    x, ranks, cls, steps, batch_size, counts = _prepare(x, saliency, classes, steps, batch_size)
    removed = _baseline_images(x, deletion_baseline, "deletion_baseline", blur_kernel, blur_sigma)
    deletion = _curve(score_fn, x, removed, ranks, counts, cls, batch_size)
    start = _baseline_images(x, insertion_baseline, "insertion_baseline", blur_kernel, blur_sigma)
    insertion = _curve(score_fn, start, x, ranks, counts, cls, batch_size)
    return DeletionInsertionResult(
        deletion=_result("deletion", deletion, counts, steps),
        insertion=_result("insertion", insertion, counts, steps),
    )


def deletion_auc(
    score_fn: ScoreFunction,
    x: np.ndarray,
    saliency: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    *,
    steps: int = 50,
    baseline: Baseline = "zero",
    blur_kernel: int = BLUR_KERNEL,
    blur_sigma: float = BLUR_SIGMA,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CurveResult:
    """The deletion curve alone (see :func:`deletion_insertion`; lower AUC is better).

    Start from ``x``; point ``i`` replaces the ``round(i · H·W / steps)`` most salient pixels by
    ``baseline`` (default ``"zero"``); ``AUC = ∫₀¹ p_c df`` by the trapezoid rule.

    Example::

        >>> def score_fn(batch):
        ...     p0 = batch[:, 0].mean(axis=(1, 2))
        ...     return np.stack([p0, 1 - p0], axis=1)
        >>> x = np.array([[[[1, 1], [0, 0]]]], np.float32)
        >>> deletion_auc(score_fn, x, x[:, 0], [0], steps=2).aucs.tolist()
        [0.125]
    """
    x, ranks, cls, steps, batch_size, counts = _prepare(x, saliency, classes, steps, batch_size)
    removed = _baseline_images(x, baseline, "baseline", blur_kernel, blur_sigma)
    return _result("deletion", _curve(score_fn, x, removed, ranks, counts, cls, batch_size), counts, steps)


def insertion_auc(
    score_fn: ScoreFunction,
    x: np.ndarray,
    saliency: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    *,
    steps: int = 50,
    baseline: Baseline = "blur",
    blur_kernel: int = BLUR_KERNEL,
    blur_sigma: float = BLUR_SIGMA,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> CurveResult:
    """The insertion curve alone (see :func:`deletion_insertion`; higher AUC is better).

    Start from ``baseline`` (default ``"blur"``); point ``i`` puts back the ``round(i · H·W / steps)``
    most salient original pixels; ``AUC = ∫₀¹ p_c df`` by the trapezoid rule.

    Example::

        >>> def score_fn(batch):
        ...     p0 = batch[:, 0].mean(axis=(1, 2))
        ...     return np.stack([p0, 1 - p0], axis=1)
        >>> x = np.array([[[[1, 1], [0, 0]]]], np.float32)
        >>> insertion_auc(score_fn, x, x[:, 0], [0], steps=2, baseline="zero").curves.tolist()
        [[0.0, 0.5, 0.5]]
    """
    x, ranks, cls, steps, batch_size, counts = _prepare(x, saliency, classes, steps, batch_size)
    start = _baseline_images(x, baseline, "baseline", blur_kernel, blur_sigma)
    return _result("insertion", _curve(score_fn, start, x, ranks, counts, cls, batch_size), counts, steps)
