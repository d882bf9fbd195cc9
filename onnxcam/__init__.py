"""onnxcam: LIFT-CAM explanations exported into one ONNX graph, explained with plain onnxruntime.

Public API (imported lazily, so ``import onnxcam.runtime`` never imports onnx or torch):

- :func:`onnxcam.export` / :func:`onnxcam.save` / :func:`onnxcam.list_layers` (needs ``onnx``,
  and ``onnxruntime`` to fold the reference pass);
- :func:`onnxcam.export_head`: the network after the target layer as a standalone model (activations in,
  logits out), for perturbation metrics at the target layer (needs ``onnx`` and ``onnxruntime``);
- :func:`onnxcam.export_torch` (needs ``torch``);
- :class:`onnxcam.Explainer`, :class:`onnxcam.Explanation`, :func:`onnxcam.overlay`,
  :func:`onnxcam.load_image` (need only ``onnxruntime``, ``numpy`` and ``opencv``).
"""

from __future__ import annotations

import importlib
from typing import Any

from onnxcam._version import __version__

_LAZY = {
    "export": "onnxcam.exporters",
    "save": "onnxcam.exporters",
    "list_layers": "onnxcam.exporters",
    "auto_target": "onnxcam.exporters",
    "ExportError": "onnxcam.exporters",
    "export_head": "onnxcam.exporters",
    "export_torch": "onnxcam.exporters.torch_export",
    "Explainer": "onnxcam.runtime",
    "Explanation": "onnxcam.runtime",
    "LayerExplanation": "onnxcam.runtime",
    "overlay": "onnxcam.runtime",
    "load_image": "onnxcam.runtime",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxcam' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
