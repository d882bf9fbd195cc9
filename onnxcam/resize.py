"""The bilinear resize the exported graph uses (numpy only, shared by the exporter and the runtime)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["bilinear_matrix", "extreme_rows", "parse_hw"]


def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """``R`` float32 ``[out, in]`` with ``R @ v`` = bilinear interpolation of ``v`` at half-pixel centres.

    Source coordinate ``x = (i + ½)·in/out − ½`` clamped at 0, weights ``1 − λ`` and ``λ`` on ``⌊x⌋``
    and ``min(⌊x⌋ + 1, in − 1)``: ONNX ``Resize(linear, half_pixel)``, PyTorch ``align_corners=False``.
    The graph resizes a map ``m`` [h, w] as ``R_H · m · R_Wᵀ`` (two MatMuls).

    Example::

        >>> bilinear_matrix(4, 2).tolist()
        [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]
    """
    if out_size < 1 or in_size < 1:
        raise ValueError(f"sizes must be positive, got out_size={out_size}, in_size={in_size}")
    rows = np.arange(out_size)
    x, x0 = _source(out_size, in_size)
    x1 = np.minimum(x0 + 1, in_size - 1)
    lam = np.where(x0 < in_size - 1, x - x0, 0.0)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (rows, x0), 1.0 - lam)
    np.add.at(matrix, (rows, x1), lam)
    return matrix.astype(np.float32)


def extreme_rows(out_size: int, in_size: int) -> np.ndarray:
    """Rows of :func:`bilinear_matrix` at which ``R @ v`` reaches its minimum and maximum, for any ``v``.

    ``R @ v`` samples the piecewise-linear interpolant of ``v`` at increasing source coordinates; the
    samples sharing a left knot ``⌊x⌋`` lie on one linear piece (or on the constant clamped ends), so
    each group's extremes are its first and last sample. Upsampling by ``s`` needs about ``2·in`` of
    the ``out = s·in`` rows.

    Example::

        >>> extreme_rows(8, 2).tolist()  # x = -0.375, -0.125 (both clamped to 0), 0.125, ..., 1.375
        [0, 5, 6, 7]
    """
    if out_size < 1 or in_size < 1:
        raise ValueError(f"sizes must be positive, got out_size={out_size}, in_size={in_size}")
    _, x0 = _source(out_size, in_size)
    starts = np.flatnonzero(np.diff(x0, prepend=-1))
    ends = np.append(starts[1:] - 1, out_size - 1)
    return np.unique(np.concatenate([starts, ends]))


def _source(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Clamped half-pixel source coordinates of the output rows and their left knots."""
    x = np.maximum((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0.0)
    return x, np.minimum(np.floor(x).astype(np.int64), in_size - 1)


def parse_hw(value: Sequence[int], what: str) -> tuple[int, int]:
    """``(H, W)`` as two positive ints; ValueError naming ``what`` otherwise."""
    try:
        height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be (H, W), got {value!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return height, width
