"""Score-CAM (Wang et al., CVPR-W 2020) at runtime: one forward pass per activation map.

Score-CAM weights each channel ``A_k`` of a target layer by how much the class probability rises
when the image is shown only where that channel fires. It needs no gradient, but K forward passes per
image, so it cannot live inside one exported graph: it runs here, on any score function (an
:class:`onnxcam.runtime.Scorer` on the plain model is one) and the activations of an onnxcam export
made with ``raw=True`` (``Explanation.activations``).

Definition (the paper's §3, "Increase of Confidence", with its softmax output), for an image ``X``
(the model's *preprocessed* input ``[C, H, W]``), class ``c`` and activations ``A`` ``[K, h, w]``::

    U_k   = Up(A_k)                                   bilinear, half-pixel centres, to [H, W]
    H_k   = (U_k - min U_k) / (max U_k - min U_k)     in [0, 1]; H_k = 0 when A_k is constant
    α_k   = p_c(X ⊙ H_k) - p_c(X_b)                   p = softmax probabilities (the score function)
    L     = ReLU(Σ_k α_k A_k)                         [h, w], at the layer's resolution
    heat  = minmax(Up(L))                             exactly the exported graph's onnxcam_heatmap

* ``X ⊙ H_k`` multiplies every channel of the preprocessed image by the mask, and the baseline
  ``X_b`` is the zero input (``X ⊙ 0``), also in the preprocessed space: for ImageNet normalisation
  that is the dataset-mean colour, not black. Its probability ``p_c(X_b)`` is computed once per call
  (one forward pass), since the zero image is the same for every image.
* A channel that is constant over space (often all zero after a ReLU) has no min-max normalisation;
  here ``H_k = 0``, so ``X ⊙ H_k = X_b`` and ``α_k = 0`` exactly, *without* a forward pass: the
  baseline pass stands for all of them. :attr:`ScoreCamResult.forward_passes` counts the images
  actually scored: ``1 + (number of non-constant (image, channel) pairs)``, at most ``1 + N·K``.
  (The authors' code skips such channels too.)
* The heatmap is ``L`` resized bilinear (half-pixel) to ``[H, W]``, min-max normalised per image to
  [0, 1], 0 where ``L`` is constant: :func:`cam_heatmap`, the same computation, in the same order and
  float32, as the graph's ``onnxcam_heatmap`` (``onnxcam/exporters/cam.py``), so Score-CAM heatmaps
  compare pixel for pixel with the exported methods'.

Differences from pytorch-grad-cam's ``ScoreCAM`` (grad-cam 1.5.7, ``pytorch_grad_cam/score_cam.py``):
its weights are ``softmax_k(y_c(X ⊙ H'_k))``, a softmax *over the channels* of the target's raw score
(the logit, with ``ClassifierOutputTarget``), with no baseline; ``H'_k`` comes from
``UpsamplingBilinear2d`` (``align_corners=True``) and ``(U - min) / (max - min + 1e-8)`` (a constant
channel becomes an all-zero mask and is scored like any other); and its heatmap normalises ``L`` at low
resolution before a ``cv2.resize`` (see ``tests/exporters/test_methods.py``). The authors' code
(``haofanwang/Score-CAM``, ``cam/scorecam.py``) uses ``p_c(X ⊙ H_k)`` without subtracting the baseline
and sums ``α_k Up(A_k)`` at the input resolution. Subtracting ``p_c(X_b)`` shifts every ``α_k`` by the
same amount, which changes ``L`` by ``-p_c(X_b) Σ_k A_k``: not a no-op.

Only numpy is imported (OpenCV, onnxruntime, torch and onnx are not needed).

Example (a score function whose "probability" of class 0 is the mean of the image's channel 0, so
``α_k = mean(H_k)`` for an all-ones image and ``p_0(X_b) = 0``)::

    >>> import numpy as np
    >>> def score_fn(x):
    ...     p = x[:, 0].mean(axis=(1, 2))
    ...     return np.stack([p, 1 - p], axis=1)
    >>> image = np.ones((1, 1, 2, 2), np.float32)
    >>> acts = np.array([[[[0, 1], [2, 3]], [[0, 0], [0, 4]], [[5, 5], [5, 5]]]], np.float32)
    >>> result = score_cam(score_fn, image, acts, classes=[0])
    >>> result.coefficients.astype(float).round(4).tolist()  # mean of [0, 1/3, 2/3, 1], of [0, 0, 0, 1]; constant -> 0
    [[0.5, 0.25, 0.0]]
    >>> result.maps.tolist()  # ReLU(0.5 A_0 + 0.25 A_1)
    [[[0.0, 0.5], [1.0, 2.5]]]
    >>> result.heatmaps.astype(float).round(4).tolist(), result.forward_passes  # baseline + 2 scored channels
    ([[[0.0, 0.2], [0.4, 1.0]]], 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np

from onnxcam.resize import bilinear_matrix, parse_hw  # bilinear_matrix re-exported: the graph's resize, shared with the exporter

__all__ = ["ScoreCamResult", "bilinear_matrix", "cam_heatmap", "score_cam", "upsample"]

#: ``progress(done, total)``: images scored so far and in all (``total`` = ``forward_passes``).
ProgressCallback = Callable[[int, int], None]


@dataclass(eq=False)
class ScoreCamResult:
    """What :func:`score_cam` returns.

    Attributes:
        coefficients: float32 ``[N, K]``, ``α_k = p_c(X ⊙ H_k) - p_c(X_b)`` (0 for constant channels).
        maps: float32 ``[N, h, w]``, ``L = ReLU(Σ_k α_k A_k)``, not normalised.
        heatmaps: float32 ``[N, H, W]``, ``L`` resized and min-max normalised like ``onnxcam_heatmap``.
        forward_passes: images the score function was run on: 1 (the zero baseline) + the number of
            non-constant (image, channel) pairs. The honest cost of the call.
    """

    coefficients: np.ndarray
    maps: np.ndarray
    heatmaps: np.ndarray
    forward_passes: int

    def __repr__(self) -> str:
        return (
            f"ScoreCamResult(coefficients={self.coefficients.shape}, maps={self.maps.shape}, "
            f"heatmaps={self.heatmaps.shape}, forward_passes={self.forward_passes})"
        )


# ---------------------------------------------------------------------------- resizing
def _resizer(low_hw: tuple[int, int], out_hw: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    rows = bilinear_matrix(out_hw[0], low_hw[0])  # [H, h]
    cols = np.ascontiguousarray(bilinear_matrix(out_hw[1], low_hw[1]).T)  # [w, W]
    # The graph's order: MatMul(map, cols), then MatMul(rows, ·); float32 throughout.
    return lambda m: np.matmul(rows, np.matmul(m, cols))


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel) resize of float maps ``[M, h, w]`` to float32 ``[M, H, W]``.

    ``R_H · m · R_Wᵀ`` with :func:`bilinear_matrix`, as the exported graph computes it.
    """
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim != 3:
        raise ValueError(f"maps must be [M, h, w], got shape {m.shape}")
    return _resizer(m.shape[1:], parse_hw(size, "size"))(m)


def cam_heatmap(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The exported graph's ``onnxcam_heatmap`` from ``onnxcam_map``: resize, then min-max per image.

    ``R = upsample(L)``; ``heat = (R − min R) · v / max(max R − min R, FLT_MIN)``, with ``v = 0`` where
    the low-resolution map ``L`` is constant (resizing a constant map is not exactly constant in
    float32, and normalising that rounding noise would invent structure), else 1: the graph's
    convention (``onnxcam/exporters/cam.py``). When upsampling, the graph applies the normalisation
    before its last resize product instead of after it, so the two agree up to float32 rounding.

    Args:
        maps: float ``[N, h, w]`` maps (``onnxcam_map``, :attr:`ScoreCamResult.maps`).
        size: ``(H, W)`` of the model input.

    Returns:
        float32 ``[N, H, W]`` in [0, 1].

    Example::

        >>> cam_heatmap(np.array([[[0.0, 2.0]], [[3.0, 3.0]]]), (1, 4)).tolist()
        [[[0.0, 0.25, 0.75, 1.0]], [[0.0, 0.0, 0.0, 0.0]]]
    """
    low = np.asarray(maps, dtype=np.float32)
    if low.ndim != 3 or 0 in low.shape:
        raise ValueError(f"maps must be a non-empty [N, h, w] array, got shape {low.shape}")
    resized = upsample(low, size)
    varies = low.max(axis=(1, 2), keepdims=True) > low.min(axis=(1, 2), keepdims=True)
    lowest = resized.min(axis=(1, 2), keepdims=True)
    span = resized.max(axis=(1, 2), keepdims=True) - lowest
    inv_span = varies.astype(np.float32) / np.maximum(span, np.finfo(np.float32).tiny)
    return ((resized - lowest) * inv_span).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------- validation
def _check_inputs(
    batch: np.ndarray, activations: np.ndarray, classes: Union[Sequence[int], np.ndarray], batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = np.asarray(batch)
    if x.ndim != 4 or 0 in x.shape:
        raise ValueError(f"batch must be a non-empty preprocessed batch [N, C, H, W], got shape {x.shape}")
    a = np.asarray(activations)
    if a.ndim != 4 or 0 in a.shape:
        raise ValueError(f"activations must be a non-empty [N, K, h, w] array, got shape {a.shape}")
    if a.shape[0] != x.shape[0]:
        raise ValueError(
            f"activations have N={a.shape[0]} images (shape {a.shape}) but batch has N={x.shape[0]} "
            f"(shape {x.shape})"
        )
    for name, array in (("batch", x), ("activations", a)):
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"{name} must be floating point, got dtype {array.dtype}")
        finite = np.isfinite(array).reshape(array.shape[0], -1).all(axis=1)
        if not finite.all():
            raise ValueError(f"{name} contains NaN or Inf in image(s) {np.flatnonzero(~finite)[:10].tolist()}")
    c = np.asarray(classes)
    if c.shape != (x.shape[0],):
        raise ValueError(f"classes must have shape [N] = ({x.shape[0]},), got shape {c.shape}")
    if c.dtype == np.bool_ or not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"classes must hold integer class indices, got dtype {c.dtype}")
    if (c < 0).any():
        bad = int(np.flatnonzero(c < 0)[0])
        raise ValueError(
            f"class {int(c[bad])} (image {bad}) is negative; Score-CAM needs the explained classes "
            "themselves (e.g. Explanation.classes of the raw export)"
        )
    return x.astype(np.float32, copy=False), a.astype(np.float32, copy=False), c.astype(np.int64)


def _scores(score_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, num_classes: Optional[int]) -> np.ndarray:
    """``score_fn(x)`` as float64 ``[M, num_classes]``, checked."""
    out = np.asarray(score_fn(x))
    if out.ndim != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"score_fn must return probabilities [M, num_classes] for a batch of M={x.shape[0]}, "
            f"got shape {out.shape}"
        )
    if num_classes is not None and out.shape[1] != num_classes:
        raise ValueError(f"score_fn returned {out.shape[1]} classes, earlier {num_classes}")
    if not np.issubdtype(out.dtype, np.number) or not np.all(np.isfinite(out)):
        raise ValueError("score_fn returned non-numeric, NaN or Inf scores")
    return out.astype(np.float64)


# ---------------------------------------------------------------------------- Score-CAM
def score_cam(
    score_fn: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    activations: np.ndarray,
    classes: Union[Sequence[int], np.ndarray],
    *,
    batch_size: int = 64,
    progress: Optional[ProgressCallback] = None,
) -> ScoreCamResult:
    """Score-CAM of a batch (see the module docstring for the definition and its conventions).

    Args:
        score_fn: preprocessed batch float32 ``[M, C, H, W]`` -> probabilities ``[M, num_classes]``
            (an :class:`onnxcam.runtime.Scorer`; softmax probabilities, as in the paper).
        batch: the preprocessed images, float ``[N, C, H, W]`` (float32 is what the model sees).
        activations: the target layer's activations ``A``, float ``[N, K, h, w]`` (``onnxcam_activations``
            of a ``raw=True`` export, :attr:`Explanation.activations`).
        classes: the class to explain per image, ints ``[N]`` in ``[0, num_classes)``.
        batch_size: masked images built and scored per ``score_fn`` call (bounds the memory:
            ``batch_size · C · H · W`` floats). The masks are built for a whole chunk at once.
        progress: optional ``progress(done, total)`` after each call, in images scored.

    Returns:
        A :class:`ScoreCamResult`.

    Raises:
        ValueError: shapes (named) that do not fit, non-float or non-finite inputs, classes not
            integers of shape ``[N]`` or outside ``[0, num_classes)``, a bad ``batch_size``, or a
            ``score_fn`` result that is not ``[M, num_classes]`` finite numbers.
    """
    x, a, c = _check_inputs(batch, activations, classes, batch_size)
    n, k, h, w = a.shape
    size = x.shape[2:]
    flat = a.reshape(n * k, h, w)
    varies = (flat.max(axis=(1, 2)) - flat.min(axis=(1, 2))) > 0
    pairs = np.flatnonzero(varies)  # image-major (n·K + k) indices of the channels to score
    total = 1 + pairs.size
    # The baseline X_b = 0 is the same image for every input, and also X ⊙ H_k of every constant channel.
    baseline = _scores(score_fn, np.zeros((1, *x.shape[1:]), np.float32), None)[0]
    num_classes = baseline.shape[0]
    if (c >= num_classes).any():
        bad = int(np.flatnonzero(c >= num_classes)[0])
        raise ValueError(f"class {int(c[bad])} (image {bad}) is out of range [0, {num_classes})")
    if progress is not None:
        progress(1, total)

    resize = _resizer((h, w), size)
    scores = np.zeros(n * k, np.float64)  # p_c(X ⊙ H_k) - p_c(X_b); 0 where the channel is constant
    for start in range(0, pairs.size, int(batch_size)):
        idx = pairs[start : start + int(batch_size)]
        image = idx // k
        masks = _masks(resize(flat[idx]))
        probs = _scores(score_fn, x[image] * masks[:, None], num_classes)
        scores[idx] = probs[np.arange(idx.size), c[image]] - baseline[c[image]]
        if progress is not None:
            progress(1 + start + idx.size, total)

    alpha = scores.reshape(n, k)
    maps = np.maximum(np.einsum("nk,nkyx->nyx", alpha, a.astype(np.float64)), 0.0).astype(np.float32)
    return ScoreCamResult(
        coefficients=alpha.astype(np.float32),
        maps=maps,
        heatmaps=cam_heatmap(maps, size),
        forward_passes=int(total),
    )


def _masks(upsampled: np.ndarray) -> np.ndarray:
    """Min-max normalise each ``[H, W]`` of ``[P, H, W]`` to [0, 1]; 0 where it is constant."""
    lowest = upsampled.min(axis=(1, 2), keepdims=True)
    span = upsampled.max(axis=(1, 2), keepdims=True) - lowest
    safe = np.where(span > 0, span, np.float32(1.0))
    return np.where(span > 0, (upsampled - lowest) / safe, np.float32(0.0)).astype(np.float32, copy=False)
