"""Softmax and LogSoftmax inside the head: the Rescale rule on the whole vector function.

A Softmax ``s = σ(z)`` (along one axis) is not elementwise: every ``s_i`` depends on every ``z_j``.
The Rescale rule of a scalar function, the secant ``Δf/Δz``, is the derivative averaged along the
straight path from ``z'`` to ``z``; its vector form is the **average Jacobian on the straight path**

    M = ∫₀¹ J_σ(z' + t·Δz) dt,    Δz = z − z',

which satisfies completeness exactly (``M Δz = σ(z) − σ(z')``, the fundamental theorem of calculus
along the path) and reduces to the scalar secant in one dimension. The backward multiplier is

    m = Mᵀ g = ∫₀¹ s_t ⊙ (g − ⟨g, s_t⟩) dt,        s_t = σ(z' + t·Δz)          (Softmax)
    m = Mᵀ g = g − (Σ g) · ∫₀¹ s_t dt                                            (LogSoftmax)

with the sums along the Softmax axis. The integral is evaluated in the graph by composite
Gauss–Legendre quadrature, :data:`PANELS` panels of :data:`POINTS` nodes (all nodes in one batched
Softmax). The integrand is analytic; its nearest complex singularity is at distance ``π/D`` from the
path, where ``D = max_ij |Δz_i − Δz_j|`` along the axis, so the error falls geometrically with the
number of nodes: measured in float64 against 6144 nodes, relative error ≤ 4e-14 for ``D ≤ 40`` and
≤ 5e-8 for ``D = 80`` (beyond that it grows: saturated softmaxes with logit spreads ≫ 80 are not
expected inside a CNN head). This is *not* captum's reading (captum multiplies ``g`` elementwise by
``Δs_i/Δz_i``, which ignores the cross terms and is not complete where ``Δz_i = 0`` but ``Δs_i ≠ 0``).

In gradient mode (Grad-CAM family) the rule is the plain Jacobian product ``s ⊙ (g − ⟨g, s⟩)``
(LogSoftmax: ``g − s·Σg``).

A Softmax at the very end of the network is not swept at all: its input, the logits, is explained
(:func:`onnxcam.exporters.graph.explained_tensor`).
"""

from __future__ import annotations

import numpy as np

from onnxcam.exporters.rules import Multipliers, register
from onnxcam.exporters.rules.context import RuleContext

#: Composite Gauss–Legendre quadrature of the path integral: panels × points per panel.
PANELS = 4
POINTS = 16


def quadrature(panels: int = PANELS, points: int = POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``t`` in (0, 1) and weights ``w`` (summing to 1) of the composite Gauss–Legendre rule.

    Example::

        >>> t, w = quadrature(2, 3)
        >>> t.shape, round(float(w.sum()), 12), round(float((w * t**5).sum()), 12)  # ∫ t⁵ dt = 1/6
        ((6,), 1.0, 0.166666666667)
    """
    x, w = np.polynomial.legendre.leggauss(points)
    t = np.concatenate([(p + (x + 1) / 2) / panels for p in range(panels)])
    return t, np.tile(w / 2 / panels, panels)


def _axis(ctx: RuleContext, rank: int) -> int:
    axis = int(ctx.attr("axis", -1 if ctx.b.opset >= 13 else 1))
    axis = axis + rank if axis < 0 else axis
    if ctx.b.opset < 13 and axis != rank - 1:
        raise ctx.error(f"opset {ctx.b.opset} {ctx.node.op_type} with axis {axis} < the last axis flattens the "
                        "trailing axes (the opset-13 semantics are supported)")
    return axis


def _path_softmaxes(ctx: RuleContext, axis: int, rank: int) -> tuple[str, str]:
    """``(S, W)``: the softmaxes ``s_t`` at every quadrature node stacked on a new leading axis
    ``[Q, B, ...]``, and the weights ``w`` shaped ``[Q, 1, ..., 1]``."""
    b = ctx.b
    name = ctx.input(0)
    z, z_ref = ctx.value(name), ctx.ref(name)
    t, w = quadrature()
    column = (len(t),) + (1,) * rank
    dz = b.unsqueeze(b.op("Sub", [z, z_ref], "dz"), [0], "dz_stacked")
    path = b.op("Add", [b.unsqueeze(z_ref, [0], "ref_stacked"), b.op("Mul", [ctx.const(t.reshape(column), "path_t"), dz])],
                "path_points")
    return b.op("Softmax", [path], "path_softmax", axis=axis + 1), ctx.const(w.reshape(column), "path_w")


@register("Softmax")
def softmax(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Softmax: ``Mᵀg = ∫ s_t ⊙ (g − ⟨g, s_t⟩) dt`` (path-averaged Jacobian); gradient ``s ⊙ (g − ⟨g, s⟩)``."""
    b = ctx.b
    rank = len(ctx.shape(ctx.input(0)))
    axis = _axis(ctx, rank)
    if ctx.gradient_mode:
        s = ctx.value(ctx.node.output[0])
        dot = b.reduce("ReduceSum", b.op("Mul", [g[0], s]), [axis], keepdims=True, hint="g_dot_s")
        return [b.op("Mul", [s, b.op("Sub", [g[0], dot])], "softmax_gradient")]
    s, w = _path_softmaxes(ctx, axis, rank)
    g0 = b.unsqueeze(g[0], [0], "g_stacked")
    dot = b.reduce("ReduceSum", b.op("Mul", [g0, s]), [axis + 1], keepdims=True, hint="g_dot_s")
    terms = b.op("Mul", [b.op("Mul", [s, w]), b.op("Sub", [g0, dot])], "path_terms")
    return [b.reduce("ReduceSum", terms, [0], keepdims=False, hint="softmax_rescale")]


@register("LogSoftmax")
def log_softmax(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """LogSoftmax: ``Mᵀg = g − (Σg)·∫ s_t dt`` (path-averaged Jacobian); gradient ``g − s·Σg``."""
    b = ctx.b
    rank = len(ctx.shape(ctx.input(0)))
    axis = _axis(ctx, rank)
    total = b.reduce("ReduceSum", g[0], [axis], keepdims=True, hint="g_sum")
    if ctx.gradient_mode:
        s = b.op("Exp", [ctx.value(ctx.node.output[0])], "softmax")
    else:
        stacked, w = _path_softmaxes(ctx, axis, rank)
        s = b.reduce("ReduceSum", b.op("Mul", [stacked, w]), [0], keepdims=False, hint="path_mean_softmax")
    return [b.op("Sub", [g[0], b.op("Mul", [s, total])], "log_softmax_multiplier")]
