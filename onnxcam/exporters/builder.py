"""Emitting new ONNX nodes and initializers, with unique names and opset-aware forms."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphBuilder:
    """Collects the nodes and initializers the exporter adds to a graph.

    Every helper returns the name of the tensor it produced. Names are prefixed ``onnxcam/`` and
    never collide with the source graph's names.
    """

    def __init__(self, model: onnx.ModelProto, opset: int, prefix: str = "onnxcam/") -> None:
        self.opset = opset
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._taken: set[str] = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
        for node in model.graph.node:
            self._taken.update(node.output)
            self._taken.add(node.name)
        self._const_cache: dict[tuple, str] = {}
        #: static trailing dims of tensors the tail creates (e.g. the map's (h, w))
        self.static_shapes: dict[str, tuple[int, ...]] = {}

    # -- names ---------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        base = self.prefix + hint.replace(":", "_")
        name, k = base, 1
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    # -- nodes ---------------------------------------------------------------------------------
    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, outputs: int = 1, **attrs):
        """Add one node; returns its output name (or a list of names when ``outputs > 1``)."""
        base = hint or op_type
        names = [self.fresh(f"{base}_out{i}" if outputs > 1 else base) for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.fresh(f"node/{base}"), **attrs))
        return names if outputs > 1 else names[0]

    def op_named(self, op_type: str, inputs: Sequence[str], output: str, **attrs) -> str:
        """Add one node whose output has the exact name ``output`` (used for contract outputs)."""
        self._taken.add(output)
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=self.fresh(f"node/{output}"), **attrs))
        return output

    def rename(self, tensor: str, name: str) -> str | None:
        """Give the output ``tensor`` of an added node the exact name ``name`` (a contract output),
        rewriting the added nodes that read it; ``None`` (nothing changed) when no added node produces
        ``tensor``. Saves the Identity/Reshape node a plain alias would cost at every run."""
        if not any(tensor in n.output for n in self.nodes):
            return None
        self._taken.add(name)
        replace_names(self.nodes, {tensor: name})
        if tensor in self.static_shapes:
            self.static_shapes[name] = self.static_shapes.pop(tensor)
        return name

    def const(self, value: np.ndarray | float | int | Sequence, hint: str = "const", dtype=None) -> str:
        """An initializer holding ``value``; small identical constants are shared."""
        array = np.asarray(value, dtype=dtype)
        key = None
        if array.size <= 64:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint)

    def prune(self, wanted: set[str]) -> None:
        """Drop added nodes (and then initializers) that no tensor in ``wanted`` depends on.

        onnxruntime runs dead nodes too, so e.g. a multiplier the tail ended up not needing must go.
        """
        keep = needed_nodes(self.nodes, wanted)
        self.nodes = [n for i, n in enumerate(self.nodes) if i in keep]
        live = {x for n in self.nodes for x in n.input} | set(wanted)
        self.initializers = [i for i in self.initializers if i.name in live]

    # -- opset-aware helpers ------------------------------------------------------------------
    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool, hint: str | None = None) -> str:
        """ReduceSum/ReduceMean/ReduceMax/ReduceMin over ``axes`` (axes as input from opset 13/18)."""
        axes_input_since = 13 if op_type == "ReduceSum" else 18
        if self.opset >= axes_input_since:
            return self.op(op_type, [x, self.ints(axes, "axes")], hint, keepdims=int(keepdims))
        return self.op(op_type, [x], hint, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int], hint: str | None = None) -> str:
        return self.op("Unsqueeze", [x, self.ints(axes, "axes")], hint)

    def squeeze(self, x: str, axes: Sequence[int], hint: str | None = None) -> str:
        return self.op("Squeeze", [x, self.ints(axes, "axes")], hint)

    def shape(self, x: str) -> str:
        return self.op("Shape", [x], "shape")

    def reshape_like(self, x: str, like: str, hint: str | None = None) -> str:
        """``x`` reshaped to the runtime shape of ``like``."""
        return self.op("Reshape", [x, self.shape(like)], hint)

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int], steps: Sequence[int] | None = None, hint: str | None = None) -> str:
        inputs = [x, self.ints(starts, "starts"), self.ints(ends, "ends"), self.ints(axes, "axes")]
        if steps is not None:
            inputs.append(self.ints(steps, "steps"))
        return self.op("Slice", inputs, hint)

    def pad(self, x: str, pads: Sequence[int], hint: str | None = None) -> str:
        """Zero padding; ``pads`` = all begins then all ends, one per axis of ``x``."""
        return self.op("Pad", [x, self.ints(pads, "pads")], hint, mode="constant")

    def add_all(self, names: Sequence[str], hint: str = "sum") -> str:
        if len(names) == 1:
            return names[0]
        return self.op("Sum", list(names), hint)


def replace_names(nodes: Sequence[onnx.NodeProto], mapping: dict[str, str]) -> None:
    """Rename tensors in place: every input and output of ``nodes`` found in ``mapping``."""
    for node in nodes:
        for names in (node.input, node.output):
            for i, x in enumerate(names):
                if x in mapping:
                    names[i] = mapping[x]


def needed_nodes(nodes: Sequence[onnx.NodeProto], wanted: set[str]) -> set[int]:
    """Indices of the ``nodes`` (in topological order) that tensors in ``wanted`` depend on."""
    live, keep = set(wanted), set()
    for i in range(len(nodes) - 1, -1, -1):
        if any(o in live for o in nodes[i].output):
            keep.add(i)
            live.update(x for x in nodes[i].input if x)
    return keep
