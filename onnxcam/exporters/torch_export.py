"""The torch front door: ``torch.nn.Module`` → ONNX (TorchScript exporter) → :func:`onnxcam.export`.

The target module is located reliably, not guessed from names: during ``torch.onnx.export`` a forward
hook captures the module's output and the wrapper returns it as an extra graph output, whose tensor
is then the target. The extra output is removed before the ONNX exporter runs.
"""

from __future__ import annotations

import io
import warnings
from typing import Mapping

import onnx

from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.onnx_export import export

_CAPTURE = "onnxcam_torch_target"


def export_torch(
    module,
    example_input,
    target_layer=None,
    *,
    method: str = "liftcam",
    top_k: int | None = None,
    raw: bool = False,
    preprocessing: str | Mapping | None = None,
    opset: int = 17,
    input_name: str = "input",
    output_name: str = "logits",
    source: str | None = None,
    switchable: bool = False,
) -> onnx.ModelProto:
    """Export a PyTorch classifier with LIFT-CAM outputs.

    Args:
        module: the classifier (put in eval mode for the export, restored afterwards).
        example_input: a float32 tensor ``[N, C, H, W]``; H and W are fixed in the export, N is dynamic.
        target_layer: the submodule whose output is the target activation ``A`` (e.g. ``model.layer4``),
            or ``None`` for the automatic choice of :func:`onnxcam.export`.
        method, top_k, raw, preprocessing, source, switchable: as for :func:`onnxcam.export`.
        opset: ONNX opset for ``torch.onnx.export`` (>= 17).

    Example:
        >>> import torchvision, torch, onnxcam  # doctest: +SKIP
        >>> net = torchvision.models.resnet18().eval()  # doctest: +SKIP
        >>> cam = onnxcam.export_torch(net, torch.randn(1, 3, 224, 224), net.layer4)  # doctest: +SKIP
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ExportError(f"export_torch expects a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        shape = list(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ExportError(f"example_input must be a 4-D tensor [N, C, H, W], got {shape}")
    layer_name = None
    if target_layer is not None:
        layer_name = next((name for name, m in module.named_modules() if m is target_layer), None)
        if layer_name is None:
            raise ExportError("target_layer is not a submodule of the given module")

    wrapper = _Capture(module, target_layer)
    was_training = module.training
    module.eval()
    buffer = io.BytesIO()
    outputs = [output_name] + ([_CAPTURE] if target_layer is not None else [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, (example_input,), buffer, dynamo=False, opset_version=opset,
                input_names=[input_name], output_names=outputs,
                dynamic_axes={name: {0: "N"} for name in [input_name, *outputs]},
            )
    finally:
        module.train(was_training)
        if wrapper.handle is not None:
            wrapper.handle.remove()
    proto = onnx.load_from_string(buffer.getvalue())

    target = None
    if target_layer is not None:
        if wrapper.calls != 1:
            raise ExportError(f"target_layer ran {wrapper.calls} times in one forward pass; pick a module used once")
        target = _detach_capture(proto, layer_name)
    return export(proto, target, method=method, top_k=top_k, raw=raw, preprocessing=preprocessing, switchable=switchable,
                  source=source or type(module).__name__)


class _Capture:
    """Wraps the module so its forward also returns the target layer's output."""

    def __new__(cls, module, target_layer):
        import torch

        class Capture(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.module = module
                self.captured = None
                self.calls = 0
                self.handle = target_layer.register_forward_hook(self._hook) if target_layer is not None else None

            def _hook(self, _module, _inputs, output):
                # The rest of the network gets a copy: an in-place op after the target (DenseNet's
                # F.relu(..., inplace=True) after norm5) would otherwise change the captured tensor,
                # and the exported target would silently be the *next* op's output.
                self.calls += 1
                self.captured = output
                return output.clone()

            def forward(self, x):
                self.calls = 0
                y = self.module(x)
                if isinstance(y, (tuple, list)):
                    y = y[0]
                return (y, self.captured) if target_layer is not None else y

        return Capture()


def _detach_capture(proto: onnx.ModelProto, layer_name: str) -> str:
    """Drop the capture output; rename its tensor after the module (``layer4`` → ``layer4.output``)."""
    graph = proto.graph
    keep = [o for o in graph.output if o.name != _CAPTURE]
    del graph.output[:]
    graph.output.extend(keep)
    producer = next((n for n in graph.node if _CAPTURE in n.output), None)
    if producer is None:
        raise ExportError(f"the target module {layer_name!r} produced no tensor in the exported graph")
    if producer.op_type == "Identity" and producer.input[0] not in {i.name for i in graph.input}:
        # The exporter added an Identity for the extra output; the target is its input.
        source = producer.input[0]
        graph.node.remove(producer)
        return source
    new_name = f"{layer_name}.output"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == _CAPTURE:
                node.input[i] = new_name
        for i, name in enumerate(node.output):
            if name == _CAPTURE:
                node.output[i] = new_name
    return new_name
