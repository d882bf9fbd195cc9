"""Linear rules: the exported multiplier equals the exact gradient of the original op (unit-vector probing)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from tests.exporters.rules.probe import exported_multipliers, linear_multipliers, probe_model

RNG = np.random.default_rng(7)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def check(model, a_shape, classes=(0, 2)):
    a = RNG.standard_normal((len(classes), *a_shape[1:])).astype(np.float32)
    m, _ = exported_multipliers(model, a, np.array(classes))
    for i, cls in enumerate(classes):
        expected = linear_multipliers(model, a_shape, cls)
        scale = np.abs(expected).max()
        assert scale > 0
        np.testing.assert_allclose(m[i], expected, rtol=0, atol=2e-5 * scale)


def conv_case(**attrs):
    groups = attrs.get("group", 1)
    w = RNG.standard_normal((4, 4 // groups, *attrs.pop("kernel", (3, 3)))).astype(np.float32)
    return [helper.make_node("Conv", ["A", "w"], ["out"], **attrs)], [init("w", w)]


@pytest.mark.parametrize("attrs", [
    {},
    {"strides": [2, 2], "pads": [1, 0, 0, 1]},
    {"dilations": [2, 1], "pads": [2, 1, 2, 1]},
    {"group": 2, "strides": [2, 1], "pads": [1, 1, 1, 1]},
    {"group": 4, "pads": [1, 1, 1, 1]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"auto_pad": "VALID", "strides": [3, 2], "kernel": (2, 3)},
], ids=["plain", "stride_asym_pads", "dilation", "groups2", "depthwise", "same_upper", "same_lower", "valid"])
def test_conv(attrs):
    nodes, inits = conv_case(**dict(attrs))
    check(probe_model(nodes, (1, 4, 7, 8), "out", inits), (1, 4, 7, 8))


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2]},
    {"strides": [2, 2], "pads": [1, 1, 0, 0], "output_padding": [1, 1]},
    {"group": 2, "dilations": [2, 2]},
])
def test_conv_transpose(attrs):
    groups = attrs.get("group", 1)
    w = RNG.standard_normal((4, 6 // groups, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["A", "w"], ["out"], **attrs)]
    check(probe_model(nodes, (1, 4, 4, 5), "out", [init("w", w)]), (1, 4, 4, 5))


def test_batch_normalization():
    c = 4
    params = [init("scale", RNG.uniform(0.5, 2, c).astype(np.float32)), init("bias", RNG.standard_normal(c).astype(np.float32)),
              init("mean", RNG.standard_normal(c).astype(np.float32)), init("var", RNG.uniform(0.5, 2, c).astype(np.float32))]
    nodes = [helper.make_node("BatchNormalization", ["A", "scale", "bias", "mean", "var"], ["out"], epsilon=1e-3)]
    check(probe_model(nodes, (1, c, 5, 5), "out", params), (1, c, 5, 5))


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 0},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [3, 2], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": 0},
], ids=["2x2", "pad_exclude", "pad_include", "ceil", "ceil_pad_exclude"])
def test_average_pool(attrs):
    nodes = [helper.make_node("AveragePool", ["A"], ["out"], **attrs)]
    check(probe_model(nodes, (1, 3, 7, 8), "out"), (1, 3, 7, 8))


@pytest.mark.parametrize("op,axes_attr,keepdims", [
    ("ReduceMean", [2, 3], 1), ("ReduceMean", [-1], 0), ("ReduceSum", [1, 3], 1), ("ReduceSum", [2], 0),
])
def test_reduce(op, axes_attr, keepdims):
    nodes = [helper.make_node(op, ["A", "axes"], ["out"], keepdims=keepdims)]
    out_rank = 4 if keepdims else 4 - len(axes_attr)
    # Axes as an input: ReduceSum from opset 13, ReduceMean from opset 18 (also exercises opset-18 emission).
    model = probe_model(nodes, (1, 3, 4, 5), "out", [init("axes", np.array(axes_attr, np.int64))], pool=False,
                        last_rank=out_rank, opset=18 if op == "ReduceMean" else 17)
    check(model, (1, 3, 4, 5))


def test_reduce_mean_axes_attribute_opset17():
    nodes = [helper.make_node("ReduceMean", ["A"], ["out"], axes=[2, 3], keepdims=1)]
    check(probe_model(nodes, (1, 3, 4, 5), "out"), (1, 3, 4, 5))


def test_global_average_pool_gemm_variants():
    # Flatten at axis 2 then Gemm with transA=0/transB=0, alpha, beta — through a MatMul as well.
    w = RNG.standard_normal((20, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Reshape", ["A", "shape"], ["r"]),
        helper.make_node("Gemm", ["r", "w", "c"], ["g"], alpha=0.5, beta=2.0),
        helper.make_node("MatMul", ["g", "w2"], ["mm"]),
        helper.make_node("Add", ["mm", "bias"], ["out"]),
    ]
    inits = [init("shape", np.array([-1, 20], np.int64)), init("w", w), init("c", RNG.standard_normal(6).astype(np.float32)),
             init("w2", RNG.standard_normal((6, 5)).astype(np.float32)), init("bias", RNG.standard_normal(5).astype(np.float32))]
    check(probe_model(nodes, (1, 5, 2, 2), "out", inits, last_rank=2), (1, 5, 2, 2))


def test_gemm_trans_a():
    nodes = [
        helper.make_node("Flatten", ["A"], ["f"]),
        helper.make_node("Transpose", ["f"], ["ft"], perm=[1, 0]),
        helper.make_node("Gemm", ["ft", "w"], ["out"], transA=1, transB=1, alpha=1.5),
    ]
    check(probe_model(nodes, (1, 2, 3, 3), "out", [init("w", RNG.standard_normal((4, 18)).astype(np.float32))], last_rank=2),
          (1, 2, 3, 3))


def test_shape_ops_pad_slice_concat_split_transpose():
    nodes = [
        helper.make_node("Pad", ["A", "pads"], ["p"], mode="constant"),
        helper.make_node("Slice", ["p", "starts", "ends", "axes", "steps"], ["s"]),
        helper.make_node("Split", ["s", "split"], ["s1", "s2"], axis=1),
        helper.make_node("Mul", ["s2", "three"], ["s2x"]),
        helper.make_node("Concat", ["s2x", "s1", "s1"], ["c"], axis=1),
        helper.make_node("Transpose", ["c"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Unsqueeze", ["t", "ax0"], ["u"]),
        helper.make_node("Squeeze", ["u", "ax0"], ["out"]),
    ]
    inits = [
        init("pads", np.array([0, 0, 1, 2, 0, 0, 2, -1], np.int64)),
        init("starts", np.array([1, 0], np.int64)), init("ends", np.array([100, 8], np.int64)),
        init("axes", np.array([2, 3], np.int64)), init("steps", np.array([2, 3], np.int64)),
        init("split", np.array([1, 3], np.int64)), init("three", np.array(3.0, np.float32)),
        init("ax0", np.array([4], np.int64)),
    ]
    check(probe_model(nodes, (1, 4, 6, 7), "out", inits), (1, 4, 6, 7))


def test_gather_expand_div_sub_cast():
    nodes = [
        helper.make_node("Gather", ["A", "idx"], ["g"], axis=1),
        helper.make_node("Gather", ["g", "one"], ["g2"], axis=3),
        helper.make_node("Unsqueeze", ["g2", "ax3"], ["u"]),
        helper.make_node("Expand", ["u", "shape"], ["e"]),
        helper.make_node("Div", ["e", "d"], ["dv"]),
        helper.make_node("Sub", ["bias", "dv"], ["sb"]),
        helper.make_node("Cast", ["sb"], ["out"], to=1),
    ]
    inits = [init("idx", np.array([2, 0, 2], np.int64)), init("one", np.array(1, np.int64)), init("ax3", np.array([3], np.int64)),
             init("shape", np.array([1, 3, 5, 2], np.int64)), init("d", RNG.uniform(1, 2, (1, 3, 1, 1)).astype(np.float32)),
             init("bias", RNG.standard_normal((1, 1, 5, 1)).astype(np.float32))]
    check(probe_model(nodes, (1, 4, 5, 3), "out", inits), (1, 4, 5, 3))


def test_add_of_two_branches_sums_fanout():
    w = RNG.standard_normal((4, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["A", "w"], ["c"]), helper.make_node("Add", ["A", "c"], ["out"])]
    check(probe_model(nodes, (1, 4, 3, 3), "out", [init("w", w)]), (1, 4, 3, 3))


@pytest.mark.parametrize("final", ["gemm_transB0_alpha", "gemm_transB1", "matmul_add"])
def test_one_hot_seed_fast_path(final):
    """The explained logits come straight from Gemm/MatMul: the rule gathers the class's row of the
    weights instead of multiplying by the one-hot seed; it must equal the exact gradient."""
    from onnx import TensorProto

    w = RNG.standard_normal((12, 5)).astype(np.float32)
    nodes = [helper.make_node("Identity", ["x"], ["A"]), helper.make_node("Flatten", ["A"], ["f"])]
    inits = [init("bias", RNG.standard_normal(5).astype(np.float32))]
    if final == "gemm_transB0_alpha":
        nodes.append(helper.make_node("Gemm", ["f", "w", "bias"], ["logits"], alpha=0.5))
        inits.append(init("w", w))
    elif final == "gemm_transB1":
        nodes.append(helper.make_node("Gemm", ["f", "w", "bias"], ["logits"], transB=1, alpha=2.0))
        inits.append(init("w", np.ascontiguousarray(w.T)))
    else:
        nodes += [helper.make_node("MatMul", ["f", "w"], ["mm"]), helper.make_node("Add", ["mm", "bias"], ["logits"])]
        inits.append(init("w", w))
    graph = helper.make_graph(nodes, "final", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    check(model, (1, 3, 2, 2), classes=(4, 0, 2))
    import onnxcam

    ops = {n.op_type for n in onnxcam.export(model, "A").graph.node if n.name.startswith("onnxcam/")}
    assert "Gather" in ops and "Gemm" not in ops and "MatMul" in ops  # MatMul only in the CAM tail


def test_reshapes_that_move_the_batch_axis():
    # The batch is moved off axis 0 and folded into another axis: the backward reshapes cannot use a
    # constant [-1, ...] target and must read the runtime shape (checked at batch 2, where the
    # difference shows; the reference pass sees batches 1 and 2).
    nodes = [
        helper.make_node("Transpose", ["A"], ["t"], perm=[1, 0, 2, 3]),  # [K, N, h, w]
        helper.make_node("Reshape", ["t", "fold"], ["folded"]),  # [K, N·h·w]
        helper.make_node("Reshape", ["folded", "unfold"], ["u"]),  # [K, N, h, w]
        helper.make_node("Transpose", ["u"], ["out"], perm=[1, 0, 2, 3]),
    ]
    inits = [init("fold", np.array([3, -1], np.int64)), init("unfold", np.array([3, -1, 2, 5], np.int64))]
    check(probe_model(nodes, (1, 3, 2, 5), "out", inits), (1, 3, 2, 5))


def test_flatten_backward_uses_a_constant_shape():
    # Only axis 0 grows with the batch, so Flatten's backward is one Reshape to [-1, K, h, w]: no Shape node.
    import onnxcam

    model = probe_model([helper.make_node("Mul", ["A", "two"], ["out"])], (1, 3, 2, 5), "out",
                        [init("two", np.array(2.0, np.float32))], pool=False)
    cam = onnxcam.export(model, "A", raw=True)
    added = [n for n in cam.graph.node if n.name.startswith("onnxcam/")]
    assert "Shape" not in {n.op_type for n in added}
    check(model, (1, 3, 2, 5))
