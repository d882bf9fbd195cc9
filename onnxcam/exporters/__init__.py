"""The exporter: rewrite a CNN into one ONNX graph that also returns its LIFT-CAM explanation.

See :func:`export` (ONNX in), :func:`onnxcam.exporters.torch_export.export_torch` (``torch.nn.Module``
in), :func:`save`, :func:`list_layers` and :func:`choose_target`.
"""

from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.head import export_head
from onnxcam.exporters.layers import LayerInfo
from onnxcam.exporters.onnx_export import choose_target, export, list_layers, save
from onnxcam.exporters.rules import RULES, supported_ops

auto_target = choose_target

__all__ = ["ExportError", "LayerInfo", "RULES", "auto_target", "choose_target", "export", "export_head", "list_layers", "save", "supported_ops"]
