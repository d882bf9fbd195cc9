"""Quality metrics of saliency maps, for onnxcam explanations or any others (runtime side).

Only numpy, OpenCV (and, through :class:`onnxcam.runtime.Scorer` if you pass one, onnxruntime) are
used: never torch or onnx, so the metrics run where the runtime runs (a test imports every module of
this package in a subprocess where both imports fail).

- :mod:`onnxcam.metrics.faithfulness`: :func:`average_drop_increase` (Average Drop / Increase in
  Confidence, Grad-CAM++), :func:`deletion_insertion`, :func:`deletion_auc`, :func:`insertion_auc`
  (RISE);
- :mod:`onnxcam.metrics.pointing`: :func:`pointing_game`, :func:`energy_pointing_game`;
- :mod:`onnxcam.metrics.statistics`: :func:`bootstrap_ci`, :func:`agreement`;
- :mod:`onnxcam.metrics.shapley`: :func:`shapley_permutation` (Shapley values of the target-layer
  channels by permutation sampling through a head model from :func:`onnxcam.export_head`),
  :class:`HeadScorer`.

All metrics take preprocessed inputs ``x`` ``[N, C, H, W]``, maps ``[N, H, W]``, classes ``[N]`` and a
``score_fn`` returning probabilities ``[M, num_classes]`` (an :class:`onnxcam.runtime.Scorer` is one).

Example::

    >>> import numpy as np
    >>> from onnxcam.metrics import deletion_auc
    >>> def score_fn(batch):                      # p0 = mean of channel 0
    ...     p0 = batch[:, 0].mean(axis=(1, 2))
    ...     return np.stack([p0, 1 - p0], axis=1)
    >>> x = np.array([[[[1, 1], [0, 0]]]], np.float32)
    >>> deletion_auc(score_fn, x, x[:, 0], [0], steps=2).aucs.tolist()
    [0.125]
"""

from __future__ import annotations

import importlib
from typing import Any

from onnxcam.metrics.faithfulness import (
    AverageDropResult,
    CurveResult,
    DeletionInsertionResult,
    ScoreFunction,
    average_drop_increase,
    deletion_auc,
    deletion_insertion,
    gaussian_blur,
    insertion_auc,
    normalize_maps,
    pixel_ranks,
)
from onnxcam.metrics.pointing import boxes_mask, energy_pointing_game, pointing_game
from onnxcam.metrics.statistics import agreement, average_ranks, bootstrap_ci

# Names re-exported lazily (imported on first access, so importing this package stays light):
# name -> module.
_LAZY: dict[str, str] = {
    "HeadScorer": "onnxcam.metrics.shapley",
    "ShapleyEstimate": "onnxcam.metrics.shapley",
    "shapley_permutation": "onnxcam.metrics.shapley",
}

__all__ = [
    "AverageDropResult",
    "CurveResult",
    "DeletionInsertionResult",
    "ScoreFunction",
    "agreement",
    "average_drop_increase",
    "average_ranks",
    "bootstrap_ci",
    "boxes_mask",
    "deletion_auc",
    "deletion_insertion",
    "energy_pointing_game",
    "gaussian_blur",
    "insertion_auc",
    "normalize_maps",
    "pixel_ranks",
    "pointing_game",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxcam.metrics' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
