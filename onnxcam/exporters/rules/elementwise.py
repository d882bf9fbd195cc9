"""Rescale rule for elementwise nonlinearities ``y = f(z)`` with one varying input.

    m_z = g ⊙ (f(z) − f(z')) / (z − z')

where ``z'`` is the node's reference input (a constant folded at export). Where the secant is
ill-conditioned we use a derivative instead:

- piecewise-linear ``f`` (Relu, Clip, LeakyRelu): the secant is exact inside a linear piece, so it
  is used wherever ``|z − z'| ≥ eps`` (captum's ``1e-10``), else ``f'(z)`` — captum's behaviour;
- smooth ``f``: in float32, ``f(z) − f(z')`` cancels when ``|z − z'|`` is small, so below
  ``τ·max(1, |z'|)`` (τ = 0.03) we use the midpoint derivative ``f'((z + z')/2)``, whose error is
  ``O(f'''·Δz²)``. Both errors are ~1e-6 relative at the crossover.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxcam.exporters.rules import Multipliers, register
from onnxcam.exporters.rules.context import RuleContext

#: Relative width of the band where smooth functions use the midpoint derivative.
SMOOTH_BAND = {np.dtype(np.float32): 0.03, np.dtype(np.float64): 1e-4, np.dtype(np.float16): 0.25}

Derivative = Callable[[RuleContext, str], str]


def rescale(ctx: RuleContext, g: str, derivative: Derivative, smooth: bool) -> str:
    """Emit ``g ⊙ slope`` where ``slope`` is the Rescale secant with its derivative fallback.

    In gradient mode (Grad-CAM family) the slope is the plain derivative ``f'(z)``.
    """
    z_name, y_name = ctx.input(0), ctx.node.output[0]
    z, y = ctx.value(z_name), ctx.value(y_name)
    b = ctx.b
    if ctx.gradient_mode:
        return b.op("Mul", [g, derivative(ctx, z)], "gradient")
    z_ref = ctx.ref(z_name)
    dz = b.op("Sub", [z, z_ref], "dz")
    dy = b.op("Sub", [y, ctx.ref(y_name)], "dy")
    if smooth:
        band = SMOOTH_BAND.get(ctx.dtype(z_name), 0.03) * np.maximum(1.0, np.abs(ctx.ref_value(z_name)))
        threshold = b.const(band.astype(ctx.dtype(z_name)), "rescale_band")
        point = b.op("Mul", [b.op("Add", [z, z_ref]), ctx.const(0.5, "half")], "midpoint")
    else:
        threshold = ctx.const(ctx.eps(z_name), "rescale_eps")
        point = z
    small = b.op("Less", [b.op("Abs", [dz]), threshold], "small_dz")
    safe_dz = b.op("Where", [small, ctx.const(1.0, "one"), dz], "safe_dz")
    secant = b.op("Div", [dy, safe_dz], "secant")
    slope = b.op("Where", [small, derivative(ctx, point), secant], "slope")
    return b.op("Mul", [g, slope], "rescale")


def _as_float(ctx: RuleContext, mask: str) -> str:
    from onnx import helper

    return ctx.b.op("Cast", [mask], "mask", to=helper.np_dtype_to_tensor_dtype(ctx.dtype(ctx.input(0))))


def _single(ctx: RuleContext, g: Multipliers, derivative: Derivative, smooth: bool) -> Multipliers:
    extra = [ctx.input(i) for i in range(1, len(ctx.node.input)) if ctx.is_varying(i)]
    if extra:
        raise ctx.error(f"parameters {extra} depend on the target tensor; only the first input may")
    return [rescale(ctx, g[0], derivative, smooth)] + [None] * (len(ctx.node.input) - 1)


@register("Relu")
def relu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Relu: Rescale, fallback ``f'(z) = [z > 0]``."""
    return _single(ctx, g, lambda c, p: _as_float(c, c.b.op("Greater", [p, c.const(0.0, "zero")])), smooth=False)


@register("LeakyRelu")
def leaky_relu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """LeakyRelu: Rescale, fallback ``f'(z) = 1 if z > 0 else α``."""
    alpha = float(ctx.attr("alpha", 0.01))

    def derivative(c: RuleContext, p: str) -> str:
        positive = c.b.op("Greater", [p, c.const(0.0, "zero")])
        return c.b.op("Where", [positive, c.const(1.0, "one"), c.const(alpha, "alpha")], "leaky_slope")

    return _single(ctx, g, derivative, smooth=False)


@register("Clip")
def clip(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Clip (ReLU6 and friends): Rescale, fallback ``f'(z) = [lo < z < hi]``."""
    lo = ctx.static(1, "min") if len(ctx.node.input) > 1 and ctx.input(1) else ctx.attr("min")
    hi = ctx.static(2, "max") if len(ctx.node.input) > 2 and ctx.input(2) else ctx.attr("max")

    def derivative(c: RuleContext, p: str) -> str:
        inside = None
        if lo is not None:
            inside = c.b.op("Greater", [p, c.const(float(np.asarray(lo)), "clip_lo")])
        if hi is not None:
            below = c.b.op("Less", [p, c.const(float(np.asarray(hi)), "clip_hi")])
            inside = below if inside is None else c.b.op("And", [inside, below])
        return _as_float(c, inside) if inside is not None else c.const(1.0, "one")

    return _single(ctx, g, derivative, smooth=False)


@register("Sigmoid")
def sigmoid(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Sigmoid: Rescale, midpoint derivative ``σ(p)(1 − σ(p))``."""

    def derivative(c: RuleContext, p: str) -> str:
        s = c.b.op("Sigmoid", [p])
        return c.b.op("Mul", [s, c.b.op("Sub", [c.const(1.0, "one"), s])], "dsigmoid")

    return _single(ctx, g, derivative, smooth=True)


@register("Tanh")
def tanh(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Tanh: Rescale, midpoint derivative ``1 − tanh²(p)``."""

    def derivative(c: RuleContext, p: str) -> str:
        t = c.b.op("Tanh", [p])
        return c.b.op("Sub", [c.const(1.0, "one"), c.b.op("Mul", [t, t])], "dtanh")

    return _single(ctx, g, derivative, smooth=True)
