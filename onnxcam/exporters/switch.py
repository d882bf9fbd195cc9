"""One graph for both kinds of request: the explanation behind an ``If`` on ``onnxcam_explain``.

onnxruntime executes every node of a graph whatever outputs are fetched, so a caller that wants only
the logits from an exported graph still pays for the reverse sweep and the CAM tail. With
``switchable=True`` the exporter moves every node it added that the logits and the class do not need
into the ``then`` branch of an ``If`` node whose condition is a new, required bool scalar input
``onnxcam_explain`` (required rather than defaulted by an initializer: onnxruntime warns about
overridable initializers and hides them from ``get_inputs()``, and servers such as Triton want every
input declared). Fed ``True`` the outputs are those of the plain export, bit for bit; fed ``False``,
the ``else`` branch returns empty tensors (batch axis 0) for every explanation output and only the
forward pass runs (plus the argmax for ``onnxcam_class``).

Names inside the branches get a ``/then`` or ``/else`` suffix: a subgraph may not redefine a name
of the enclosing graph; the ``If`` node's outputs carry the contract names.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract
from onnxcam.exporters.builder import GraphBuilder, needed_nodes, replace_names

#: Outputs computed whatever ``onnxcam_explain`` says.
ALWAYS = (contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS)


def _empty(info: onnx.ValueInfoProto, name: str) -> onnx.NodeProto:
    """A Constant with an empty tensor shaped like ``info`` with the leading (batch) axis 0."""
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in info.type.tensor_type.shape.dim]
    dims[0] = 0
    dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.zeros(dims, dtype), name))


def gate_explanations(builder: GraphBuilder, infos: list[onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    """Move the added nodes only the explanation outputs need into an ``If``; rewrite ``builder``.

    Returns the value info of the ``onnxcam_explain`` input to add; ``builder.nodes`` and
    ``builder.initializers`` keep what stays outside (the logits and class path) plus the ``If``.
    """
    nodes = builder.nodes
    outside = needed_nodes(nodes, set(ALWAYS))
    gated_nodes = [n for i, n in enumerate(nodes) if i not in outside]
    kept_nodes = [n for i, n in enumerate(nodes) if i in outside]
    outside_inputs = {x for n in kept_nodes for x in n.input}
    gated_inputs = {x for n in gated_nodes for x in n.input}
    gated_inits = [t for t in builder.initializers if t.name in gated_inputs and t.name not in outside_inputs]
    kept_inits = [t for t in builder.initializers if t not in gated_inits]

    explained = [info for info in infos if info.name not in ALWAYS]
    rename = {info.name: f"{info.name}/then" for info in explained}
    replace_names(gated_nodes, rename)
    then_graph = helper.make_graph(
        gated_nodes, "onnxcam_explain_then", [],
        [helper.make_tensor_value_info(rename[i.name], i.type.tensor_type.elem_type, None) for i in explained],
        initializer=gated_inits,
    )
    else_graph = helper.make_graph(
        [_empty(i, f"{i.name}/else") for i in explained], "onnxcam_explain_else", [],
        [helper.make_tensor_value_info(f"{i.name}/else", i.type.tensor_type.elem_type, None) for i in explained],
    )
    if_node = helper.make_node("If", [contract.INPUT_EXPLAIN], [i.name for i in explained],
                               name="onnxcam/explain_switch", then_branch=then_graph, else_branch=else_graph)
    builder.nodes = kept_nodes + [if_node]
    builder.initializers = kept_inits
    return helper.make_tensor_value_info(contract.INPUT_EXPLAIN, TensorProto.BOOL, [])
