"""The bilinear resize the exported graph uses (numpy only, shared by the exporter and the runtime)."""

from __future__ import annotations

import numpy as np

__all__ = ["bilinear_matrix"]


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
    x = np.maximum((rows + 0.5) * in_size / out_size - 0.5, 0.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), in_size - 1)
    x1 = np.minimum(x0 + 1, in_size - 1)
    lam = np.where(x0 < in_size - 1, x - x0, 0.0)
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(matrix, (rows, x0), 1.0 - lam)
    np.add.at(matrix, (rows, x1), lam)
    return matrix.astype(np.float32)
