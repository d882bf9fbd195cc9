"""Float16 conversion of a float32 model, keeping float32 inputs and outputs.

Every float32 initializer and Constant becomes float16, float32 Casts and ConstantOfShape values
become float16, and Cast nodes at the graph's edges keep the model's interface float32. Inputs that
ONNX requires in float32 (Resize's roi and scales) are left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam.exporters.errors import ExportError

#: (op type, input index) pairs that must stay float32.
_KEEP_FLOAT32 = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a float16 copy of ``model`` whose inputs and outputs stay float32.

    Example:
        >>> fp16 = to_float16(onnx.load("model.onnx"))  # doctest: +SKIP
    """
    new = onnx.ModelProto()
    new.CopyFrom(model)
    graph = new.graph
    keep = {node.input[i] for node in graph.node for (op, i) in _KEEP_FLOAT32
            if node.op_type == op and i < len(node.input) and node.input[i]}
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT and node.output[0] not in keep:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
        if node.domain not in ("", "ai.onnx"):
            raise ExportError(f"cannot convert node {node.name!r} of domain {node.domain!r} to float16")
    edges = []
    init_names = {i.name for i in graph.initializer}
    for inp in graph.input:
        if inp.name in init_names or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = inp.name + "__float16"
        for node in graph.node:
            for k, name in enumerate(node.input):
                if name == inp.name:
                    node.input[k] = half
        edges.append(helper.make_node("Cast", [inp.name], [half], name=half + "/cast", to=TensorProto.FLOAT16))
    tail = []
    for out in graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = out.name + "__float16"
        for node in graph.node:
            for k, name in enumerate(node.output):
                if name == out.name:
                    node.output[k] = half
            for k, name in enumerate(node.input):
                if name == out.name:
                    node.input[k] = half
        tail.append(helper.make_node("Cast", [half], [out.name], name=out.name + "/cast", to=TensorProto.FLOAT))
    nodes = edges + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return new
