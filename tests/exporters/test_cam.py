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


def gap_head_model() -> onnx.ModelProto:
    """x → Conv → Relu (target ``A``) → GlobalAveragePool → Flatten → Gemm."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["A"]),
        helper.make_node("GlobalAveragePool", ["A"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "bias"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((5, 6)).astype(np.float32), "fc"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "bias")]
    graph = helper.make_graph(nodes, "gap_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_global_average_pool_tail_reuses_the_pooled_output():
    """φ = g ⊙ mean(A) from the forward's own pool: no reduction over A, no Shape, no renaming copies."""
    model = gap_head_model()
    cam = onnxcam.export(model, "A")
    added = [n for n in cam.graph.node if n.name.startswith("onnxcam/")]
    kinds = [n.op_type for n in added]
    assert "ReduceSum" not in kinds and "Shape" not in kinds and "Expand" not in kinds
    producers = {o: n.op_type for n in added for o in n.output}
    for name in (contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_MAP, contract.OUTPUT_HEATMAP):
        assert name in producers
    assert producers[contract.OUTPUT_MAP] == "Relu" and producers[contract.OUTPUT_HEATMAP] == "Mul"

    # ...and the values are the recipe's: φ_k = W[c,k] · mean_ij A_k (exact for this head).
    x = np.random.default_rng(4).standard_normal((3, 3, 8, 8)).astype(np.float32)
    out = dict(zip([o.name for o in cam.graph.output],
                   session(cam).run(None, {"x": x, contract.INPUT_TARGET: np.array([-1, 2, 4])})))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("A", TensorProto.FLOAT, None))
    logits, a = session(probe).run(None, {"x": x})
    classes = np.array([logits[0].argmax(), 2, 4])
    np.testing.assert_array_equal(out[contract.OUTPUT_CLASS], classes)
    fc = numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    expected = fc[classes] * a.astype(np.float64).mean(axis=(2, 3))
    np.testing.assert_allclose(out[contract.OUTPUT_COEFFICIENTS], expected, rtol=1e-5, atol=1e-6)
    cam_map = np.maximum(np.einsum("nk,nkhw->nhw", expected, a.astype(np.float64)), 0)
    np.testing.assert_allclose(out[contract.OUTPUT_MAP], cam_map, rtol=1e-5, atol=1e-5)


def test_top_k_outputs_keep_their_extra_axis():
    cam = onnxcam.export(gap_head_model(), "A", top_k=2)
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype(np.float32)
    names = [o.name for o in cam.graph.output]
    out = dict(zip(names, session(cam).run(None, {"x": x, contract.INPUT_TARGET: np.full((3, 2), -1)})))
    assert out[contract.OUTPUT_COEFFICIENTS].shape == (3, 2, 6)
    assert out[contract.OUTPUT_MAP].shape == (3, 2, 8, 8)
    assert out[contract.OUTPUT_HEATMAP].shape == (3, 2, 8, 8)
