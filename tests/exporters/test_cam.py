"""The CAM tail (onnxcam/exporters/cam.py): heatmap normalisation edge cases and the shape of the tail."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam import contract
from onnxcam.exporters.builder import GraphBuilder
from onnxcam.exporters.cam import _heatmap
from onnxcam.resize import bilinear_matrix
from tests.exporters.helpers import session

H, W, SIZE = 3, 4, (12, 10)


def heatmap_model(size=SIZE) -> onnx.ModelProto:
    """``map`` [B,H,W] → the tail's heatmap [B,*size]."""
    empty = helper.make_model(helper.make_graph([], "empty", [], []), opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(empty, 17)
    b.static_shapes["map"] = (H, W)
    heat = _heatmap(b, "map", size)
    graph = helper.make_graph(
        b.nodes, "heatmap", [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["B", H, W])],
        [helper.make_tensor_value_info(heat, TensorProto.FLOAT, None)], initializer=b.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reference(cam_map: np.ndarray, size=SIZE) -> np.ndarray:
    """float64: resize with the interpolation matrices, min-max per image, 0 where the map is constant."""
    resized = np.einsum("Hh,bhw,Ww->bHW", bilinear_matrix(size[0], H).astype(np.float64), cam_map.astype(np.float64),
                        bilinear_matrix(size[1], W).astype(np.float64))
    low = resized.min(axis=(1, 2), keepdims=True)
    span = resized.max(axis=(1, 2), keepdims=True) - low
    constant = (cam_map.max(axis=(1, 2)) == cam_map.min(axis=(1, 2)))[:, None, None]
    return np.where(constant, 0.0, (resized - low) / np.where(span > 0, span, 1.0))


@pytest.fixture(scope="module")
def run_heatmap():
    sess = session(heatmap_model())
    return lambda m: sess.run(None, {"map": m.astype(np.float32)})[0]


# (12, 10) from (3, 4): upsampled, min/max from the extreme rows and normalisation folded before the
# last product; (24, 4): rows upsampled 8x (folded), columns unchanged; (3, 2) and (5, 7): rows not
# upsampled enough to fold (normalised after the resize).
@pytest.mark.parametrize("size", [SIZE, (24, 4), (3, 2), (5, 7)])
def test_heatmap_is_the_min_max_normalised_resize(size):
    sess = session(heatmap_model(size))
    rng = np.random.default_rng(0)
    maps = rng.random((4, H, W)).astype(np.float32) * np.float32([[[1]], [[1e3]], [[1e-3]], [[1]]])
    maps[3] = rng.standard_normal((H, W)).astype(np.float32) ** 3  # extremes anywhere, incl. interior knots
    heat = sess.run(None, {"map": maps})[0]
    np.testing.assert_allclose(heat, reference(maps, size), atol=1e-6)
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    np.testing.assert_allclose(heat.min(axis=(1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(heat.max(axis=(1, 2)), 1, atol=1e-6)


def test_constant_maps_give_zero_heatmaps(run_heatmap):
    # all zero (ReLU killed everything) and a constant positive value, whose resize is not exactly
    # constant in float32: both must be all zero, not NaN and not normalised rounding noise.
    maps = np.stack([np.zeros((H, W)), np.full((H, W), 0.7), np.full((H, W), 3e38)]).astype(np.float32)
    heat = run_heatmap(maps)
    assert np.all(heat == 0.0)


def test_subnormal_spans_stay_finite(run_heatmap):
    # A map varying only by subnormal amounts: 1/span would overflow to inf (and inf·0 = NaN).
    tiny = np.finfo(np.float32).tiny
    maps = np.zeros((2, H, W), np.float32)
    maps[0, 0, 0] = tiny / 8  # subnormal
    maps[1, 1, 2] = 1e-30  # small but normal, and so are its interpolated values: normalised as usual
    heat = run_heatmap(maps)
    assert np.all(np.isfinite(heat)) and heat.min() >= 0.0 and heat.max() <= 1.0
    np.testing.assert_allclose(heat[1], reference(maps)[1], atol=1e-6)
    assert heat[1].max() == pytest.approx(1.0, abs=1e-6)


POOLS = {
    # name: (pooling nodes from A to "flat" [N,6], opset, scale of y relative to mean_ij A)
    "global_average_pool": ([helper.make_node("GlobalAveragePool", ["A"], ["pooled"]),
                             helper.make_node("Flatten", ["pooled"], ["flat"])], 17, 1.0),
    "reduce_mean_keepdims0": ([helper.make_node("ReduceMean", ["A"], ["flat"], axes=[2, 3], keepdims=0)], 17, 1.0),
    "reduce_mean_axes_input": ([helper.make_node("ReduceMean", ["A", "spatial"], ["pooled"], keepdims=1),
                                helper.make_node("Flatten", ["pooled"], ["flat"])], 18, 1.0),
    "reduce_sum": ([helper.make_node("ReduceSum", ["A", "spatial"], ["pooled"], keepdims=1),
                    helper.make_node("Flatten", ["pooled"], ["flat"])], 17, 64.0),
}


def pooled_head_model(pool: str = "global_average_pool") -> onnx.ModelProto:
    """x → Conv → Relu (target ``A`` [N,6,8,8]) → spatial pooling → [N,6] → Gemm."""
    rng = np.random.default_rng(3)
    pooling, opset, _ = POOLS[pool]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["A"]),
        *pooling,
        helper.make_node("Gemm", ["flat", "fc", "bias"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 6)).astype(np.float32), "fc"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "spatial")]
    graph = helper.make_graph(nodes, "pooled_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def gap_head_model() -> onnx.ModelProto:
    return pooled_head_model("global_average_pool")


@pytest.mark.parametrize("method", ["liftcam", "gradcam"])
@pytest.mark.parametrize("pool", sorted(POOLS))
def test_pooled_head_tail_reuses_the_pooled_output(pool, method):
    """φ = g ⊙ y from the forward's own pooled output ``y``: no reduction over A, no Shape, no copies."""
    model = pooled_head_model(pool)
    cam = onnxcam.export(model, "A", method=method)
    added = [n for n in cam.graph.node if n.name.startswith("onnxcam/")]
    kinds = [n.op_type for n in added]
    assert not {"ReduceSum", "ReduceMean", "Shape", "Expand"} & set(kinds), kinds
    producers = {o: n.op_type for n in added for o in n.output}
    for name in (contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_MAP, contract.OUTPUT_HEATMAP):
        assert name in producers
    assert producers[contract.OUTPUT_MAP] == "Relu" and producers[contract.OUTPUT_HEATMAP] == "Mul"

    # ...and the values are the recipe's, exact for this linear head (float64 reference):
    # LIFT-CAM φ_k = Σ_ij A_k · ∂y_c/∂A_k = W[c,k] · s · mean_ij A_k; Grad-CAM φ_k = mean_ij ∂y_c/∂A_k = W[c,k] · s / (h·w).
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32)
    out = dict(zip([o.name for o in cam.graph.output],
                   session(cam).run(None, {"x": x, contract.INPUT_TARGET: np.array([-1, 2, 4])})))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("A", TensorProto.FLOAT, None))
    logits, a = session(probe).run(None, {"x": x})
    classes = np.array([logits[0].argmax(), 2, 4])
    np.testing.assert_array_equal(out[contract.OUTPUT_CLASS], classes)
    scale = POOLS[pool][2]
    fc = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    a64 = a.astype(np.float64)
    expected = fc[classes] * scale * (a64.mean(axis=(2, 3)) if method == "liftcam" else 1.0 / 64)
    np.testing.assert_allclose(out[contract.OUTPUT_COEFFICIENTS], expected, rtol=1e-5, atol=1e-6)
    cam_map = np.maximum(np.einsum("nk,nkhw->nhw", expected, a64), 0)
    np.testing.assert_allclose(out[contract.OUTPUT_MAP], cam_map, rtol=1e-5, atol=1e-5)


def test_top_k_outputs_keep_their_extra_axis():
    cam = onnxcam.export(gap_head_model(), "A", top_k=2)
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)
    names = [o.name for o in cam.graph.output]
    out = dict(zip(names, session(cam).run(None, {"x": x, contract.INPUT_TARGET: np.full((3, 2), -1)})))
    assert out[contract.OUTPUT_COEFFICIENTS].shape == (3, 2, 6)
    assert out[contract.OUTPUT_MAP].shape == (3, 2, 8, 8)
    assert out[contract.OUTPUT_HEATMAP].shape == (3, 2, 8, 8)
