"""The CAM tail: class selection, the seed of the sweep, coefficients, map and heatmap.

Given the activations ``A`` [B,K,h,w], the sweep's result ``M`` [B,K,h,w] (DeepLIFT multipliers for
LIFT-CAM, the gradient ``G = ∂y_c/∂A`` for the Grad-CAM family) and the logits ``y`` [N,C]:

- ``c = argmax(y)`` where ``onnxcam_target < 0``, else ``onnxcam_target``; with ``top_k = k`` the
  target is [N,k] and a negative entry at rank ``r`` means the r-th highest class;
- seed ``g = one_hot(c)`` [B,C] with ``B = N·k`` (image-major);
- per method (ALGORITHM.md §1 and §5; pytorch-grad-cam's conventions):

  ==========  ==========================================================  =========================
  method      coefficients ``φ_k``                                        map before ReLU
  ==========  ==========================================================  =========================
  liftcam     ``Σ_ij A ⊙ M``  (M = DeepLIFT multipliers)                  ``Σ_k φ_k A_k``
  gradcam     ``mean_ij G``                                               ``Σ_k φ_k A_k``
  gradcam++   ``Σ_ij ReLU(G)·a``, ``a = G²/(2G² + Σ_ij A·G³ + 1e-6)``     ``Σ_k φ_k A_k``
              (``a = 0`` where ``G = 0``)
  xgradcam    ``Σ_ij G ⊙ A / (Σ_ij A + 1e-7)``                            ``Σ_k φ_k A_k``
  hirescam    ``Σ_ij G ⊙ A``  (channel sums of the map)                   ``Σ_k G_k ⊙ A_k``
  layercam    ``Σ_ij ReLU(G) ⊙ A``  (channel sums of the map)             ``Σ_k ReLU(G_k) ⊙ A_k``
  ==========  ==========================================================  =========================

- ``L = ReLU(map)``; heatmap: ``L`` resized to [H,W] (bilinear, half-pixel centres), min-max
  normalised per image, 0 where the low-resolution map is constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxcam import contract
from onnxcam.exporters.builder import GraphBuilder
from onnxcam.exporters.rules.context import ChannelMultiplier
from onnxcam.resize import bilinear_matrix, extreme_rows

#: Methods and whether their sweep uses DeepLIFT rules (True) or plain gradients (False).
METHODS = {
    "liftcam": True,
    "gradcam": False,
    "gradcam++": False,
    "xgradcam": False,
    "hirescam": False,
    "layercam": False,
}


@dataclass(frozen=True)
class Names:
    """Output names of one target layer (suffixed when several layers share a graph)."""

    suffix: str = ""

    def __getattr__(self, item: str) -> str:  # e.g. names.OUTPUT_MAP
        return getattr(contract, item) + self.suffix


def class_and_seed(b: GraphBuilder, logits: str, num_classes: int, top_k: int | None) -> tuple[str, str, str]:
    """Emit the explained classes (``[N]`` or ``[N,k]``), their flat form ``[N·k]`` and the one-hot seed ``[N·k, C]``."""
    if top_k is None:
        predicted = b.op("ArgMax", [logits], "predicted", axis=1, keepdims=0)
    else:
        _, predicted = b.op("TopK", [logits, b.ints([top_k], "k")], "top_k", outputs=2, axis=1, largest=1, sorted=1)
    wants_prediction = b.op("Less", [contract.INPUT_TARGET, b.ints([0], "zero_i64")], "wants_prediction")
    classes = b.op_named("Where", [wants_prediction, predicted, contract.INPUT_TARGET], contract.OUTPUT_CLASS)
    flat = classes if top_k is None else b.op("Reshape", [classes, b.ints([-1], "minus_one")], "classes_flat")
    arange = b.const(np.arange(num_classes, dtype=np.int64)[None, :], "class_range")
    hot = b.op("Equal", [arange, b.unsqueeze(flat, [1])], "one_hot")
    return classes, flat, b.op("Cast", [hot], "seed", to=TensorProto.FLOAT)


def cam_outputs(b: GraphBuilder, activations: str, sweep: str, target_shape, input_hw, method: str,
                names: Names, top_k: int | None, spatially_constant: ChannelMultiplier | None = None) -> str:
    """Emit coefficients, map and heatmap of one layer; returns the heatmap's name.

    ``spatially_constant``: when the sweep's result is a [B,K,1,1] tensor broadcast over space (the
    target feeds a global average pool), :class:`ChannelMultiplier` — then ``φ_k = g_k · mean_ij A_kij``
    reuses the forward's pooled output: no [B,K,h,w] product and no reduction.
    """
    k, h, w = target_shape
    batch_shape = [-1] if top_k is None else [-1, top_k]

    def out(name: str, tensor: str, rest) -> str:
        """Expose ``tensor`` [B, *rest] as ``name`` with shape [N, (k,) *rest]; returns the name under
        which ``tensor`` lives on. Without top-k the shapes agree and the tensor is renamed: no
        Reshape node, hence no copy of the output at every run (for the heatmap, [N,H,W])."""
        if top_k is None and b.rename(tensor, name) is not None:
            return name
        b.op_named("Reshape", [tensor, b.ints([*batch_shape, *rest], "out_shape")], name)
        return tensor

    if spatially_constant is not None and method in ("liftcam", "gradcam"):
        # φ_k = Σ_ij A_kij · g_k/(h·w) = g_k · mean_ij A_kij (LIFT-CAM); mean_ij G_k = g_k/(h·w) (Grad-CAM)
        per_channel = (b.op("Mul", [spatially_constant.incoming, spatially_constant.pooled], "channel_contributions")
                       if method == "liftcam" else spatially_constant.scaled)
        coefficients = b.op("Reshape", [per_channel, b.ints([0, k], "channels")], "coefficients")
        weighted = None
    else:
        coefficients, weighted = _method(b, method, activations, sweep)
    coefficients = out(names.OUTPUT_COEFFICIENTS, coefficients, [k])
    if weighted is None:  # channel weights: one batched MatMul instead of materialising φ ⊙ A
        flat = b.op("Reshape", [activations, b.ints([0, k, h * w], "flat_shape")], "activations_flat")
        weighted = b.op("MatMul", [b.unsqueeze(coefficients, [1]), flat], "weighted_sum")
    cam_map = b.op("Relu", [b.op("Reshape", [weighted, b.ints([-1, h, w], "map_shape")], "map_linear")], "map")
    b.static_shapes[cam_map] = (h, w)
    cam_map = out(names.OUTPUT_MAP, cam_map, [h, w])
    out(names.OUTPUT_HEATMAP, _heatmap(b, cam_map, input_hw), list(input_hw))
    return names.OUTPUT_HEATMAP


def _method(b: GraphBuilder, method: str, a: str, m: str) -> tuple[str, str | None]:
    """``(φ [B,K], map before ReLU [B,…] or None for the Σ_k φ_k A_k form)``."""
    spatial = [2, 3]
    if method == "liftcam":
        return b.reduce("ReduceSum", b.op("Mul", [a, m], "contributions"), spatial, False, "coefficients"), None
    if method == "gradcam":
        return b.reduce("ReduceMean", m, spatial, False, "coefficients"), None
    if method == "gradcam++":
        g2 = b.op("Mul", [m, m], "grad2")
        g3 = b.op("Mul", [g2, m], "grad3")
        sum_a = b.reduce("ReduceSum", a, spatial, True, "sum_activations")
        denom = b.op("Add", [b.op("Add", [b.op("Mul", [g2, b.const(np.float32(2.0), "two")]),
                                          b.op("Mul", [sum_a, g3])]), b.const(np.float32(1e-6), "gradcampp_eps")])
        aij = b.op("Div", [g2, denom], "aij")
        aij = b.op("Where", [b.op("Equal", [m, b.const(np.float32(0.0), "zero_f32")]), b.const(np.float32(0.0), "zero_f32"), aij])
        return b.reduce("ReduceSum", b.op("Mul", [b.op("Relu", [m]), aij]), spatial, False, "coefficients"), None
    if method == "xgradcam":
        sum_a = b.reduce("ReduceSum", a, spatial, True, "sum_activations")
        normalised = b.op("Div", [a, b.op("Add", [sum_a, b.const(np.float32(1e-7), "xgradcam_eps")])])
        return b.reduce("ReduceSum", b.op("Mul", [m, normalised]), spatial, False, "coefficients"), None
    if method in ("hirescam", "layercam"):
        g = m if method == "hirescam" else b.op("Relu", [m], "positive_grad")
        products = b.op("Mul", [g, a], "elementwise")
        return (b.reduce("ReduceSum", products, spatial, False, "coefficients"),
                b.reduce("ReduceSum", products, [1], False, "map_sum"))
    raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")


def _heatmap(b: GraphBuilder, cam_map: str, input_hw) -> str:
    """Bilinear half-pixel resize of the [B,h,w] map to [B,H,W], min-max normalised per image.

    ``heatmap = (R − min R) · inv``, ``inv = v / max(max R − min R, FLT_MIN)`` per image, where ``v``
    is 1 if the low-resolution map varies and 0 if it is constant (such images come out all zero).
    ``FLT_MIN`` (the smallest normal float32) only matters where the span is 0 or subnormal; there
    ``R − min R`` is at most that span, so no inf or NaN can arise.

    The resize is separable, ``R = R_H · L · R_Wᵀ`` (constant interpolation matrices with exactly
    ``Resize(linear, half_pixel)``'s weights; two small MatMuls). When upsampling, ``min R`` and
    ``max R`` lie on the few rows :func:`~onnxcam.resize.extreme_rows` names, so they come from
    ``R_H[rows] · T`` (``T = L · R_Wᵀ``), the normalisation is applied to the small ``T`` (the rows
    of ``R_H`` sum to 1), and the full-size product writes the heatmap directly: one pass over
    [B,H,W] instead of five. A final Clip keeps rounding inside [0, 1].
    """
    h, w = _static_hw(b, cam_map)
    rows_np = bilinear_matrix(input_hw[0], h)
    rows = b.const(rows_np, "resize_rows")
    cols = b.const(bilinear_matrix(input_hw[1], w).T.copy(), "resize_cols")
    half = b.op("MatMul", [cam_map, cols], "resize_w")  # T [B,h,W]
    # Constancy is decided on the low-resolution map: resizing a constant map is not exactly constant
    # in float32, and normalising that rounding noise would invent structure.
    varies = b.op("Greater", [b.reduce("ReduceMax", cam_map, [1, 2], True, "lowres_max"),
                              b.reduce("ReduceMin", cam_map, [1, 2], True, "lowres_min")], "map_varies")
    extremes = extreme_rows(input_hw[0], h)
    if 2 * len(extremes) < input_hw[0]:  # upsampled enough: normalise T, then one full-size product
        values = b.op("MatMul", [b.const(rows_np[extremes], "resize_extreme_rows"), half], "extreme_values")
        low, inv_span = _min_and_inverse_span(b, values, varies)
        normalised_half = b.op("Mul", [b.op("Sub", [half, low], "above_min"), inv_span], "normalised_half")
        return b.op("Clip", [b.op("MatMul", [rows, normalised_half], "resized_normalised"),
                             b.const(np.float32(0.0), "zero_f32"), b.const(np.float32(1.0), "one_f32")], "heatmap")
    resized = b.op("MatMul", [rows, half], "resized")
    low, inv_span = _min_and_inverse_span(b, resized, varies)
    return b.op("Mul", [b.op("Sub", [resized, low], "above_min"), inv_span], "heatmap")


def _min_and_inverse_span(b: GraphBuilder, values: str, varies: str) -> tuple[str, str]:
    """Per image ``min`` of ``values`` [B,·,·] and ``varies / max(max − min, FLT_MIN)`` (both [B,1,1])."""
    low = b.reduce("ReduceMin", values, [1, 2], keepdims=True, hint="map_min")
    span = b.op("Sub", [b.reduce("ReduceMax", values, [1, 2], keepdims=True, hint="map_max"), low], "map_span")
    tiny = b.const(np.float32(np.finfo(np.float32).tiny), "flt_min")
    inv_span = b.op("Div", [b.op("Cast", [varies], "varies_01", to=TensorProto.FLOAT),
                            b.op("Max", [span, tiny], "safe_span")], "inv_span")
    return low, inv_span


def _static_hw(b: GraphBuilder, cam_map: str) -> tuple[int, int]:
    return b.static_shapes[cam_map]


def fused_heatmap(b: GraphBuilder, heatmaps: list[str]) -> str:
    """Mean of the per-layer heatmaps, min-max normalised again (0 where constant)."""
    mean = b.op("Mul", [b.op("Sum", heatmaps, "heatmap_sum"), b.const(np.float32(1.0 / len(heatmaps)), "inv_layers")])
    axes = [-2, -1]
    low = b.reduce("ReduceMin", mean, axes, True, "fused_min")
    span = b.op("Sub", [b.reduce("ReduceMax", mean, axes, True, "fused_max"), low], "fused_span")
    zero = b.const(np.float32(0.0), "zero_f32")
    varies = b.op("Greater", [span, zero])
    safe = b.op("Where", [varies, span, b.const(np.float32(1.0), "one_f32")])
    return b.op_named("Where", [varies, b.op("Div", [b.op("Sub", [mean, low]), safe]), zero], contract.OUTPUT_HEATMAP)


def output_infos(num_classes: int, layers, input_hw, raw: bool, top_k: int | None, fused: bool,
                 batch: str = "N") -> list[onnx.ValueInfoProto]:
    """Value infos of the contract outputs (the model's batch dimension first, then ``k`` with top-k)."""
    lead = [batch] if top_k is None else [batch, top_k]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    infos = [
        helper.make_tensor_value_info(contract.OUTPUT_LOGITS, f32, [batch, num_classes]),
        helper.make_tensor_value_info(contract.OUTPUT_CLASS, i64, lead),
    ]
    for names, (k, h, w) in layers:
        infos += [
            helper.make_tensor_value_info(names.OUTPUT_COEFFICIENTS, f32, [*lead, k]),
            helper.make_tensor_value_info(names.OUTPUT_MAP, f32, [*lead, h, w]),
            helper.make_tensor_value_info(names.OUTPUT_HEATMAP, f32, [*lead, *input_hw]),
        ]
        if raw:
            infos += [
                helper.make_tensor_value_info(names.OUTPUT_ACTIVATIONS, f32, [batch, k, h, w]),
                helper.make_tensor_value_info(names.OUTPUT_MULTIPLIERS, f32, [*lead, k, h, w]),
            ]
    if fused:
        infos.append(helper.make_tensor_value_info(contract.OUTPUT_HEATMAP, f32, [*lead, *input_hw]))
    return infos
