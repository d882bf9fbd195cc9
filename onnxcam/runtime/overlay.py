"""Colourising heatmaps and blending them over images (numpy + OpenCV only).

Example::

    >>> import numpy as np
    >>> from onnxcam.runtime.overlay import colorize, overlay
    >>> image = np.full((32, 32, 3), 128, np.uint8)
    >>> heatmap = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    >>> overlay(image, heatmap, alpha=0.4).shape
    (32, 32, 3)
    >>> colorize(heatmap).dtype
    dtype('uint8')
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["colorize", "heatmap_to_uint8", "overlay"]

# Heatmaps come out of a float32 min-max normalisation; allow its rounding slop.
_RANGE_TOLERANCE = 1e-4


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    if not isinstance(heatmap, np.ndarray):
        raise ValueError(f"heatmap must be a numpy array, got {type(heatmap).__name__}")
    if heatmap.ndim == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.ndim != 2:
        raise ValueError(
            f"heatmap must have shape [H, W] (one image; index a batch first, and the rank of a top-k "
            f"explanation, e.g. expl.heatmaps[i, r]), got {tuple(heatmap.shape)}"
        )
    if heatmap.size == 0:
        raise ValueError(f"heatmap is empty, shape {tuple(heatmap.shape)}")
    if not np.issubdtype(heatmap.dtype, np.floating):
        raise ValueError(f"heatmap must be floating point with values in [0, 1], got dtype {heatmap.dtype}")
    if not np.all(np.isfinite(heatmap)):
        raise ValueError("heatmap contains NaN or Inf values")
    lo, hi = float(heatmap.min()), float(heatmap.max())
    if lo < -_RANGE_TOLERANCE or hi > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(
            f"heatmap values must be in [0, 1], got [{lo:.6g}, {hi:.6g}]; normalise it first, e.g. "
            "(h - h.min()) / (h.max() - h.min())"
        )
    return np.clip(heatmap.astype(np.float32, copy=False), 0.0, 1.0)


def heatmap_to_uint8(heatmap: np.ndarray) -> np.ndarray:
    """``uint8(255 * heatmap)`` (truncating, as ``np.uint8(255 * h)``) for a ``[H, W]`` heatmap in [0, 1].

    Values within 1e-4 outside [0, 1] (float rounding) are clipped; anything further out is an error.
    """
    h = _check_heatmap(heatmap)
    return (255.0 * h).astype(np.uint8)


def colorize(heatmap: np.ndarray, colormap: int = cv2.COLORMAP_JET, rgb: bool = True) -> np.ndarray:
    """Colourise a ``[H, W]`` heatmap in [0, 1]: ``cv2.applyColorMap(uint8(255 * heatmap), colormap)``.

    Returns ``uint8 [H, W, 3]``, RGB when ``rgb`` is true, else BGR (OpenCV's order, ready for
    ``cv2.imwrite``).
    """
    colour = cv2.applyColorMap(heatmap_to_uint8(heatmap), colormap)
    return cv2.cvtColor(colour, cv2.COLOR_BGR2RGB) if rgb else colour


def overlay(
    image: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    colormap: int = cv2.COLORMAP_JET,
    rgb: bool = True,
) -> np.ndarray:
    """Blend a colourised heatmap over an image: ``(1 - alpha) * image + alpha * colorize(heatmap)``.

    Args:
        image: ``uint8 [H, W, 3]`` (RGB when ``rgb`` is true, else BGR) or ``uint8 [H, W]`` grey.
        heatmap: float ``[H', W']`` in [0, 1]; resized to ``(H, W)`` with ``cv2.resize`` (bilinear)
            when the sizes differ, then clipped back to [0, 1].
        alpha: weight of the heatmap colour, in [0, 1].
        colormap: an OpenCV colormap id (``cv2.COLORMAP_*``).
        rgb: whether ``image`` (and the result) are RGB; False for OpenCV's BGR.

    Returns:
        ``uint8 [H, W, 3]``, rounded to nearest and clipped to 0..255, in the same channel order as
        ``image``.

    Example::

        >>> import numpy as np
        >>> out = overlay(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2), np.float32), alpha=1.0)
        >>> out[0, 0].tolist()  # JET at 1.0 is dark red, in RGB
        [128, 0, 0]
    """
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image must have shape [H, W, 3] or [H, W], got {tuple(image.shape)}")
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    h = _check_heatmap(heatmap)
    height, width = image.shape[:2]
    if h.shape != (height, width):
        h = np.clip(cv2.resize(h, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    colour = colorize(h, colormap, rgb=rgb)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
