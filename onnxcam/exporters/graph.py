"""Loading, normalising and analysing the source ONNX graph.

Everything here is structural: which node produces which tensor, which tensors are constants,
which depend on the image input, and where a target tensor splits the network ``f = head ∘ body``.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam.exporters.errors import ExportError

#: Opset the exporter emits its own nodes for; older models are converted up to it first.
MIN_OPSET = 17

#: Operators whose output is a shape, not a value: no multiplier flows through them.
SHAPE_OPS = frozenset({"Shape", "Size"})

#: Final operators that turn logits into probabilities; LIFT-CAM explains their input.
PROBABILITY_OPS = frozenset({"Softmax", "LogSoftmax"})


def load_model(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Load ``model`` (a path or a ``ModelProto``, which is copied, never modified)."""
    if isinstance(model, onnx.ModelProto):
        _check_no_external_data(model, "the given ModelProto")
        return copy.deepcopy(model)
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise ExportError(f"model file not found: {path}")
    try:
        loaded = onnx.load(path)  # also reads external data files (torch's dynamo exporter writes them)
    except Exception as exc:  # onnx raises DecodeError and friends, OSError for a missing data file
        raise ExportError(f"cannot read ONNX model {path} (or its external data files): {exc}") from exc
    _check_no_external_data(loaded, path)
    return loaded


def _check_no_external_data(model: onnx.ModelProto, source: str) -> None:
    """Weights still in external files (a model loaded with ``load_external_data=False``) cannot be used."""
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL and not init.raw_data:
            location = next((e.value for e in init.external_data if e.key == "location"), "?")
            raise ExportError(
                f"{source}: initializer {init.name!r} is stored in the external data file {location!r} and was "
                "not loaded; pass the model's path, or load it with onnx.load(path, load_external_data=True)"
            )


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise ExportError("the model imports no default-domain (ai.onnx) opset")


def upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert a model below :data:`MIN_OPSET` with onnx's version converter (exact for standard ops)."""
    if default_opset(model) >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ExportError(
            f"the model uses opset {default_opset(model)}; onnxcam needs >= {MIN_OPSET} and onnx's "
            f"version converter failed: {exc}. Re-export the model with opset >= {MIN_OPSET}."
        ) from exc
    # IR < 4 demands every initializer be a graph input; opset 17 goes with IR 8.
    converted.ir_version = max(converted.ir_version, 8)
    return converted


def drop_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove initializers listed as graph inputs (old IR habit) so they are constants to onnxruntime."""
    init = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in init]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return model


def dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Static dims as ints, symbolic ones as their names, unknown as None."""
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def image_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The single non-initializer graph input (the image batch)."""
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise ExportError(f"onnxcam explains models with exactly one input (the image batch); this one has: {names}")
    inp = inputs[0]
    if len(inp.type.tensor_type.shape.dim) != 4:
        raise ExportError(
            f"input {inp.name!r} has shape {dims(inp)}; onnxcam expects an image batch [N, C, H, W]"
        )
    return inp


@dataclass
class GraphIndex:
    """Producer/consumer maps and constant values of one graph."""

    model: onnx.ModelProto
    producer: dict[str, onnx.NodeProto] = field(default_factory=dict)
    consumers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, model: onnx.ModelProto) -> "GraphIndex":
        index = cls(model)
        for init in model.graph.initializer:
            index.constants[init.name] = numpy_helper.to_array(init)
        for node in model.graph.node:
            for out in node.output:
                if out:
                    index.producer[out] = node
            for inp in node.input:
                if inp:
                    index.consumers.setdefault(inp, []).append(node)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                index.constants[node.output[0]] = _constant_node_value(node)
        return index

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.model.graph.node)

    def depends_on(self, sources: Iterable[str]) -> set[str]:
        """Tensors whose *value* depends on any of ``sources`` (Shape/Size outputs do not)."""
        dependent = set(sources)
        for node in self.model.graph.node:
            if node.op_type in SHAPE_OPS:
                continue
            if any(i in dependent for i in node.input if i):
                dependent.update(o for o in node.output if o)
        return dependent

    def ancestors(self, tensor: str) -> set[str]:
        """All tensors ``tensor`` is computed from (including itself)."""
        seen = {tensor}
        stack = [tensor]
        while stack:
            node = self.producer.get(stack.pop())
            if node is None:
                continue
            for inp in node.input:
                if inp and inp not in seen:
                    seen.add(inp)
                    stack.append(inp)
        return seen


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    attr = node.attribute[0]
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    simple = {
        "value_float": lambda a: np.array(a.f, dtype=np.float32),
        "value_floats": lambda a: np.array(list(a.floats), dtype=np.float32),
        "value_int": lambda a: np.array(a.i, dtype=np.int64),
        "value_ints": lambda a: np.array(list(a.ints), dtype=np.int64),
    }
    if attr.name in simple:
        return simple[attr.name](attr)
    raise ExportError(f"Constant node {node.name!r}: unsupported attribute {attr.name!r}")


def explained_tensor(index: GraphIndex, output: str | None) -> tuple[str, str]:
    """Resolve the graph output to explain and the tensor holding its logits.

    Returns ``(output_name, logits_tensor)``; the two differ when the output is produced by a final
    Softmax/LogSoftmax, whose input (the logits) is explained instead, as the LIFT-CAM authors do.
    """
    outputs = [o.name for o in index.model.graph.output]
    if output is None:
        output = outputs[0]
    elif output not in outputs:
        raise ExportError(f"output {output!r} is not a graph output; the model's outputs are: {', '.join(outputs)}")
    tensor = output
    node = index.producer.get(tensor)
    while node is not None and (node.op_type in PROBABILITY_OPS | {"Identity"} or _float_cast(index, node)):
        tensor = node.input[0]
        node = index.producer.get(tensor)
    return output, tensor


def _float_cast(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A Cast to a float type (e.g. the float16 → float32 Cast at a converted model's output)."""
    if node.op_type != "Cast":
        return False
    to = next((a.i for a in node.attribute if a.name == "to"), None)
    return to in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


@dataclass
class Head:
    """The part of the network between the target tensor ``A`` and the explained logits ``y``.

    ``nodes`` are in topological order; ``varying`` holds every tensor whose value depends on ``A``;
    ``inputs`` are the non-varying tensors the head reads that are not constants (shape arithmetic).
    """

    target: str
    logits: str
    nodes: list[onnx.NodeProto]
    varying: set[str]
    computed_inputs: set[str]


def split_head(index: GraphIndex, target: str, logits: str, image: str) -> Head:
    """Cut the graph at ``target``; raise :class:`ExportError` where it does not separate the network."""
    if target not in index.producer:
        if target in index.constants or target == image:
            raise ExportError(f"target {target!r} is a constant or the model input, not an activation")
        import difflib

        close = difflib.get_close_matches(target, list(index.producer), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "; `onnxcam layers MODEL` lists the candidates"
        raise ExportError(f"target tensor {target!r} is not produced by any node of the model{hint}")
    varying = _depends_on_cut(index, target)
    if logits not in varying:
        raise ExportError(f"the explained output {logits!r} does not depend on the target tensor {target!r}")
    needed = index.ancestors(logits)
    body_values = index.depends_on([image]) - varying
    head_nodes: list[onnx.NodeProto] = []
    computed: set[str] = set()
    for node in index.model.graph.node:
        if not any(o in needed for o in node.output if o):
            continue
        if not any(i in varying for i in node.input if i):
            continue
        if node.op_type in SHAPE_OPS:
            continue
        for inp in node.input:
            if not inp or inp in varying or inp in index.constants:
                continue
            if inp in body_values:
                raise ExportError(
                    f"target {target!r} does not separate the network: node {node.name or node.op_type!r} "
                    f"({node.op_type}) after it also reads {inp!r}, which depends on the input without "
                    f"passing through the target (a skip connection around it). Pick a tensor at a block "
                    f"boundary; `onnxcam layers` lists the valid ones."
                )
            computed.add(inp)
        head_nodes.append(node)
    return Head(target, logits, head_nodes, varying, computed)


def _depends_on_cut(index: GraphIndex, target: str) -> set[str]:
    """Tensors whose value depends on ``target``, with the graph cut at ``target``."""
    dependent = {target}
    for node in index.model.graph.node:
        if target in node.output or node.op_type in SHAPE_OPS:
            continue
        if any(i in dependent for i in node.input if i):
            dependent.update(o for o in node.output if o)
    return dependent
