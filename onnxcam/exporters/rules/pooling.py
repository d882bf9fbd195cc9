"""DeepLIFT's max-pool rule (captum's ``maxpool``), built from ONNX operators.

With ``y = pool(x)``, ``y' = pool(x')``, ``ŷ = max(y, y')`` and the incoming multiplier ``g``:

    m_x = (unpool(g ⊙ (ŷ − y'), argmax x) + unpool(g ⊙ (y − ŷ), argmax x')) / (x − x')

falling back to the ordinary max-pool gradient ``unpool(g, argmax x)`` where ``|x − x'| < eps``.
``unpool`` routes each window's value to its (first) maximum and **sums** where windows overlap:
a ``ScatterElements(reduction="add")`` over the flattened spatial plane. ``argmax x`` comes from a
``MaxPool`` with the ``Indices`` output (first maximum on ties, like PyTorch); ``argmax x'`` is a
constant computed at export.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from onnxcam.exporters.rules import Multipliers, register
from onnxcam.exporters.rules.context import RuleContext

_POOL_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad")


def _pool_indices(value: np.ndarray, attrs: dict) -> np.ndarray:
    """Argmax indices (flattened per plane) of a max pool of ``value``, computed with onnxruntime."""
    from onnxcam.exporters.reference import _session

    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)
    graph = helper.make_graph(
        [node], "pool_indices",
        [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))],
        [onnx.ValueInfoProto(name="i")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (indices,) = _session(model).run(["i"], {"x": value})
    return indices % int(np.prod(value.shape[2:]))


def max_pool_rule(ctx: RuleContext, g: str, attrs: dict) -> str:
    """The rule for a max pool with the given MaxPool attributes (used by MaxPool and GlobalMaxPool)."""
    b = ctx.b
    x_name, y_name = ctx.input(0), ctx.node.output[0]
    x, y = ctx.value(x_name), ctx.value(y_name)
    x_shape = ctx.shape(x_name)
    channels, plane = x_shape[1], int(np.prod(x_shape[2:]))

    _, indices = b.op("MaxPool", [x], "argmax", outputs=2, **attrs)
    flat_shape = b.ints([0, channels, -1], "flat_shape")
    local = b.op("Reshape", [b.op("Mod", [indices, b.ints([plane], "plane")]), flat_shape], "argmax_local")

    plane_shape = b.op("Concat", [b.slice(b.shape(x), [0], [2], [0]), b.ints([plane], "plane")], "plane_shape", axis=0)
    zeros = b.op("ConstantOfShape", [plane_shape], "unpool_zeros",
                 value=onnx.numpy_helper.from_array(np.zeros(1, dtype=ctx.dtype(x))))

    def unpool(values: str, where: str) -> str:
        flat = b.op("Reshape", [values, flat_shape], "unpool_values")
        return b.op("ScatterElements", [zeros, where, flat], "unpool", axis=2, reduction="add")

    plain = unpool(g, local)
    if ctx.gradient_mode:
        return ctx.reshape_as(plain, x_name, "maxpool_back")

    x_ref, y_ref = ctx.ref(x_name), ctx.ref(y_name)
    ref_local = b.const(_pool_indices(ctx.ref_value(x_name), attrs).reshape(1, channels, -1), "argmax_ref")
    ref_local = b.op("Expand", [ref_local, b.shape(local)], "argmax_ref_batch")
    y_hat = b.op("Max", [y, y_ref], "y_hat")
    from_x = b.op("Mul", [g, b.op("Sub", [y_hat, y_ref])], "delta_x_part")
    from_ref = b.op("Mul", [g, b.op("Sub", [y, y_hat])], "delta_ref_part")
    routed = b.op("Add", [unpool(from_x, local), unpool(from_ref, ref_local)], "routed")

    dx = b.op("Reshape", [b.op("Sub", [x, x_ref]), flat_shape], "dx")
    small = b.op("Less", [b.op("Abs", [dx]), ctx.const(ctx.eps(x_name), "maxpool_eps")], "small_dx")
    safe = b.op("Where", [small, ctx.const(1.0, "one"), dx], "safe_dx")
    multiplier = b.op("Where", [small, plain, b.op("Div", [routed, safe])], "maxpool_multiplier")
    return ctx.reshape_as(multiplier, x_name, "maxpool_back")


@register("MaxPool")
def max_pool(ctx: RuleContext, g: Multipliers) -> Multipliers:
    if len(g) > 1 and g[1] is not None:
        raise ctx.error("the head uses MaxPool's Indices output, which has no DeepLIFT rule")
    if int(ctx.attr("storage_order", 0)):
        raise ctx.error("MaxPool with storage_order=1 is not supported")
    attrs = {a: ctx.attr(a) for a in _POOL_ATTRS if ctx.attr(a) is not None}
    return [max_pool_rule(ctx, g[0], attrs)]


@register("GlobalMaxPool")
def global_max_pool(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """GlobalMaxPool is a MaxPool whose window is the whole plane."""
    return [max_pool_rule(ctx, g[0], {"kernel_shape": list(ctx.shape(ctx.input(0))[2:])})]
