"""Single-rule test harness.

``probe_model`` builds ``x → Identity → A → <nodes under test> → GlobalAveragePool? → Flatten → Gemm``,
so the exported multipliers at ``A`` exercise exactly the rules of the nodes under test. References:

- ``linear_multipliers``: for an affine head ``F`` the DeepLIFT multiplier is the gradient, which is
  exactly ``F_c(e_i) − F_c(0)``; we get it by running the *original* model (onnxruntime, no onnxcam)
  on a batch of unit vectors — independent of every rule;
- the nonlinear rules are checked against float64 torch formulas in their own tests.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxcam

NUM_CLASSES = 3


def probe_model(nodes, a_shape, last: str, initializers=(), opset: int = 17, pool: bool = True, last_rank: int = 4) -> onnx.ModelProto:
    """The head's nodes read ``A`` and produce ``last``; a random classifier turns ``last`` into logits."""
    rng = np.random.default_rng(123)
    tail = []
    feature = last
    if pool and last_rank == 4:
        tail.append(helper.make_node("GlobalAveragePool", [last], ["probe_pooled"]))
        feature = "probe_pooled"
    tail.append(helper.make_node("Flatten", [feature], ["probe_flat"], axis=1))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["A"]), *nodes, *tail],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *a_shape[1:]])],
        [helper.make_tensor_value_info("probe_flat", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    graph = probe.graph  # make_model copies
    width = _session(probe).run(None, {"x": np.zeros((1, *a_shape[1:]), np.float32)})[0].shape[1]
    w = rng.standard_normal((NUM_CLASSES, width)).astype(np.float32)
    graph.initializer.append(numpy_helper.from_array(w, "probe_w"))
    graph.initializer.append(numpy_helper.from_array(rng.standard_normal(NUM_CLASSES).astype(np.float32), "probe_b"))
    graph.node.append(helper.make_node("Gemm", ["probe_flat", "probe_w", "probe_b"], ["logits"], transB=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES]))
    return probe


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def exported_multipliers(model: onnx.ModelProto, a: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(multipliers, coefficients)`` of the exported graph at activations ``a`` for ``classes``."""
    cam = onnxcam.export(model, "A", raw=True)
    outputs = _session(cam).run(["onnxcam_multipliers", "onnxcam_coefficients"],
                                {"x": a.astype(np.float32), "onnxcam_target": classes.astype(np.int64)})
    return outputs[0].astype(np.float64), outputs[1].astype(np.float64)


def linear_multipliers(model: onnx.ModelProto, a_shape, cls: int) -> np.ndarray:
    """Gradient of logit ``cls`` w.r.t. ``A`` for an affine head, by unit-vector probing (exact)."""
    size = int(np.prod(a_shape[1:]))
    basis = np.concatenate([np.zeros((1, size)), np.eye(size)]).astype(np.float32).reshape(size + 1, *a_shape[1:])
    logits = _session(model).run(["logits"], {"x": basis})[0].astype(np.float64)
    return (logits[1:, cls] - logits[0, cls]).reshape(a_shape[1:])


def classifier_gradient(model: onnx.ModelProto, head_out_shape, cls: int) -> np.ndarray:
    """``∂ logit_cls / ∂ last`` (the incoming multiplier of the nodes under test), same probing trick."""
    return linear_multipliers(_tail_only(model), head_out_shape, cls)


def _tail_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The probe's classifier alone: GlobalAveragePool? → Flatten → Gemm, reading ``x``."""
    graph = model.graph
    tail_start = next(i for i, n in enumerate(graph.node) if n.output[0] in ("probe_pooled", "probe_flat"))
    nodes = [onnx.NodeProto() for _ in graph.node[tail_start:]]
    for new, old in zip(nodes, graph.node[tail_start:]):
        new.CopyFrom(old)
    nodes[0].input[0] = "x"
    tail = helper.make_graph(nodes, "tail", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                             [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                             initializer=list(graph.initializer))
    return helper.make_model(tail, opset_imports=list(model.opset_import))
