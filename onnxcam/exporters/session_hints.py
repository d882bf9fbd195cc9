"""Session settings the exporter recommends for its graph (``onnxcam.session_config`` metadata).

onnxruntime's CPU provider *prepacks* the constant weight of every Gemm/MatMul into the layout its
kernel wants, once per consumer and orientation. The reverse sweep reads the classifier's weights in
the other orientation (``g·W`` against the forward's ``x·Wᵀ``), so a weight read by a forward and a
sweep matrix product is kept twice. For heads whose weights are most of the model (VGG16: fc6 411 MB
and fc7 67 MB of 553 MB) that costs ~1.4× the plain session's memory; with
``session.disable_prepacking`` it is back at the floor's (measured: ``benchmarks/README.md``), at a
latency cost that matters only for small heads (so the hint is per model, not global).

Rule: recommend ``session.disable_prepacking = 1`` when the weights read by two or more Gemm/MatMul
nodes make up at least :data:`SHARED_WEIGHT_FRACTION` of all initializer bytes (a duplicate of them
alone would exceed the 1.25× memory budget) and at least :data:`MIN_SHARED_BYTES`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

MATRIX_OPS = frozenset({"Gemm", "MatMul"})
#: Fraction of all weight bytes that, duplicated, would break the memory budget.
SHARED_WEIGHT_FRACTION = 0.25
#: Below this, a second packed copy is not worth a session setting.
MIN_SHARED_BYTES = 16 * 2**20


def _nbytes(init: onnx.TensorProto) -> int:
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return int(np.prod(init.dims, dtype=np.int64)) * itemsize


def shared_matrix_weights(graph: onnx.GraphProto) -> dict[str, int]:
    """Initializers read by two or more Gemm/MatMul nodes → their size in bytes."""
    uses: Counter[str] = Counter()
    for node in _all_nodes(graph):
        if node.op_type in MATRIX_OPS:
            uses.update(set(node.input))
    return {i.name: _nbytes(i) for i in graph.initializer if uses[i.name] >= 2}


def _all_nodes(graph: onnx.GraphProto):
    """Every node, including those of subgraphs (a switchable export's sweep lives in an If branch)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def recommended_session_config(graph: onnx.GraphProto) -> dict[str, str]:
    """The session config entries to record for ``graph`` (empty when none is needed).

    Example::

        >>> from onnx import helper, numpy_helper
        >>> w = numpy_helper.from_array(np.zeros((2048, 4096), np.float32), "w")  # 32 MiB
        >>> fwd = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)
        >>> back = helper.make_node("Gemm", ["w", "g"], ["m"], transA=1, transB=1)
        >>> g = helper.make_graph([fwd, back], "g", [], [], initializer=[w])
        >>> recommended_session_config(g)
        {'session.disable_prepacking': '1'}
    """
    shared = sum(shared_matrix_weights(graph).values())
    total = sum(_nbytes(i) for i in graph.initializer)
    if shared >= MIN_SHARED_BYTES and shared >= SHARED_WEIGHT_FRACTION * total:
        return {"session.disable_prepacking": "1"}
    return {}
