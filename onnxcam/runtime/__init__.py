"""The onnxcam runtime: run an exported model with plain onnxruntime (no onnx, no torch).

Imports only the standard library, numpy, OpenCV, onnxruntime and :mod:`onnxcam.contract`.

Example::

    >>> from onnxcam.runtime import Explainer, overlay
    >>> explainer = Explainer("model.cam.onnx")  # doctest: +SKIP
    >>> expl, display = explainer.explain_images(["cat.jpg", "dog.jpg"], batch_size=2)  # doctest: +SKIP
    >>> pictures = [overlay(d, e.heatmaps[0]) for d, e in zip(display, expl)]  # doctest: +SKIP
"""

from __future__ import annotations

from onnxcam.runtime.explainer import DEFAULT_OUTPUTS, META_CLASS_NAMES, Explainer, Explanation, LayerExplanation
from onnxcam.runtime.images import load_image, preprocess, validate_preprocessing
from onnxcam.runtime.overlay import colorize, heatmap_to_uint8, overlay
from onnxcam.runtime.score_cam import ScoreCamResult, cam_heatmap, score_cam
from onnxcam.runtime.scoring import Scorer, softmax

__all__ = [
    "DEFAULT_OUTPUTS",
    "META_CLASS_NAMES",
    "Explainer",
    "Explanation",
    "LayerExplanation",
    "ScoreCamResult",
    "Scorer",
    "cam_heatmap",
    "colorize",
    "heatmap_to_uint8",
    "load_image",
    "overlay",
    "preprocess",
    "score_cam",
    "softmax",
    "validate_preprocessing",
]
