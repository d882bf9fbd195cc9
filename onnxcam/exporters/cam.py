"""The CAM tail: class selection, the seed of the sweep, coefficients, map and heatmap.

Given the activations ``A`` [N,K,h,w], the multipliers ``m`` [N,K,h,w] and the logits ``y`` [N,C]:

- ``c = argmax(y)`` where ``onnxcam_target < 0``, else ``onnxcam_target``;
- seed ``g = one_hot(c)`` [N,C];
- ``φ = Σ_ij A ⊙ m`` [N,K] (contributions ``C = (A − 0) ⊙ m``);
- ``L = ReLU(Σ_k φ_k A_k)`` [N,h,w], one batched MatMul;
- heatmap: ``L`` resized to [H,W] (bilinear, half-pixel centres), min-max normalised per image,
  0 where the map is constant.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam import contract
from onnxcam.exporters.builder import GraphBuilder


def class_and_seed(b: GraphBuilder, logits: str, num_classes: int) -> tuple[str, str]:
    """Emit the explained class ``c`` [N] and the one-hot seed [N,C]; returns their names."""
    predicted = b.op("ArgMax", [logits], "predicted", axis=1, keepdims=0)
    wants_prediction = b.op("Less", [contract.INPUT_TARGET, b.ints([0], "zero_i64")], "wants_prediction")
    classes = b.op_named("Where", [wants_prediction, predicted, contract.INPUT_TARGET], contract.OUTPUT_CLASS)
    arange = b.const(np.arange(num_classes, dtype=np.int64)[None, :], "class_range")
    hot = b.op("Equal", [arange, b.unsqueeze(classes, [1])], "one_hot")
    seed = b.op("Cast", [hot], "seed", to=TensorProto.FLOAT)
    return classes, seed


def cam_outputs(b: GraphBuilder, activations: str, multipliers: str, target_shape, input_hw) -> None:
    """Emit coefficients, map and heatmap under their contract names."""
    k, h, w = target_shape
    contributions = b.op("Mul", [activations, multipliers], "contributions")
    coefficients = b.reduce("ReduceSum", contributions, [2, 3], keepdims=False, hint="coefficients_sum")
    b.op_named("Identity", [coefficients], contract.OUTPUT_COEFFICIENTS)

    flat = b.op("Reshape", [activations, b.ints([0, k, h * w], "flat_shape")], "activations_flat")
    weighted = b.op("MatMul", [b.unsqueeze(coefficients, [1]), flat], "weighted_sum")
    raw_map = b.op("Reshape", [weighted, b.ints([0, h, w], "map_shape")], "map_linear")
    cam_map = b.op_named("Relu", [raw_map], contract.OUTPUT_MAP)

    batch = b.slice(b.shape(cam_map), [0], [1], [0], hint="batch")
    sizes = b.op("Concat", [batch, b.ints([1, *input_hw], "heatmap_size")], "resize_sizes", axis=0)
    resized = b.op(
        "Resize", [b.unsqueeze(cam_map, [1]), "", "", sizes], "resized",
        mode="linear", coordinate_transformation_mode="half_pixel",
    )
    resized = b.squeeze(resized, [1], "resized_3d")
    # Constancy is decided on the low-resolution map: resizing a constant map is not exactly constant
    # in float32, and normalising that rounding noise would invent structure.
    map_low = b.reduce("ReduceMin", cam_map, [1, 2], keepdims=True, hint="lowres_min")
    map_high = b.reduce("ReduceMax", cam_map, [1, 2], keepdims=True, hint="lowres_max")
    zero = b.const(np.float32(0.0), "zero_f32")
    varies = b.op("Greater", [b.op("Sub", [map_high, map_low]), zero], "map_varies")
    low = b.reduce("ReduceMin", resized, [1, 2], keepdims=True, hint="map_min")
    high = b.reduce("ReduceMax", resized, [1, 2], keepdims=True, hint="map_max")
    span = b.op("Sub", [high, low], "map_span")
    usable = b.op("And", [varies, b.op("Greater", [span, zero])], "span_usable")
    safe_span = b.op("Where", [usable, span, b.const(np.float32(1.0), "one_f32")], "safe_span")
    normalised = b.op("Div", [b.op("Sub", [resized, low]), safe_span], "normalised")
    b.op_named("Where", [usable, normalised, zero], contract.OUTPUT_HEATMAP)


def output_infos(num_classes: int, target_shape, input_hw, raw: bool) -> list[onnx.ValueInfoProto]:
    """Value infos of the contract outputs (batch dimension ``N`` first)."""
    k, h, w = target_shape
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    infos = [
        helper.make_tensor_value_info(contract.OUTPUT_LOGITS, f32, ["N", num_classes]),
        helper.make_tensor_value_info(contract.OUTPUT_CLASS, i64, ["N"]),
        helper.make_tensor_value_info(contract.OUTPUT_COEFFICIENTS, f32, ["N", k]),
        helper.make_tensor_value_info(contract.OUTPUT_MAP, f32, ["N", h, w]),
        helper.make_tensor_value_info(contract.OUTPUT_HEATMAP, f32, ["N", *input_hw]),
    ]
    if raw:
        infos += [
            helper.make_tensor_value_info(contract.OUTPUT_ACTIVATIONS, f32, ["N", k, h, w]),
            helper.make_tensor_value_info(contract.OUTPUT_MULTIPLIERS, f32, ["N", k, h, w]),
        ]
    return infos
