"""Rescale rule for elementwise nonlinearities ``y = f(z)`` with one varying input.

    m_z = g ⊙ (f(z) − f(z')) / (z − z')

where ``z'`` is the node's reference input (a constant folded at export). Where the secant is
ill-conditioned we use a derivative instead:

- piecewise ``f`` (Relu, Clip, LeakyRelu, PRelu, HardSigmoid: linear pieces; HardSwish: quadratic
  pieces): where ``z`` and ``z'`` lie in the same piece the secant is that piece's derivative at the
  midpoint, exactly and without division; across pieces the division ``Δy/Δz`` is used where
  ``|z − z'| ≥ eps`` (captum's ``1e-10``), else ``f'(z)`` — captum's behaviour;
- smooth ``f``: in float32, ``f(z) − f(z')`` cancels when ``|z − z'|`` is small, so below
  ``τ·max(1, |z'|)`` (τ = 0.1) we use the secant's own definition, the mean of ``f'`` over
  ``[z', z]``, by 2-point Gauss–Legendre quadrature:
  ``½·(f'(m − h/√3) + f'(m + h/√3))`` with ``m = (z + z')/2``, ``h = (z − z')/2``; its error is
  ``h⁴·f⁽⁵⁾/135``, and outside the band the division's cancellation error is ~1e-6 relative.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from onnxcam.exporters.rules import Multipliers, register
from onnxcam.exporters.rules.context import RuleContext

#: Relative width of the band where smooth functions use the midpoint derivative.
SMOOTH_BAND = {np.dtype(np.float32): 0.1, np.dtype(np.float64): 1e-3, np.dtype(np.float16): 0.5}

Derivative = Callable[[RuleContext, str], str]
#: Emits a tensor that labels which piece of a piecewise function each element lies in.
Piece = Callable[[RuleContext, str], str]
#: Emits an exact closed-form secant ``(f(z) − f(z'))/(z − z')`` from ``z`` and ``z'``.
Secant = Callable[[RuleContext, str, str], str]


def rescale(ctx: RuleContext, g: str, derivative: Derivative, smooth: bool, piece: Piece | None = None,
            secant: Secant | None = None) -> str:
    """Emit ``g ⊙ slope`` where ``slope`` is the Rescale secant with its derivative fallback.

    In gradient mode (Grad-CAM family) the slope is the plain derivative ``f'(z)``.
    """
    z_name, y_name = ctx.input(0), ctx.node.output[0]
    z, y = ctx.value(z_name), ctx.value(y_name)
    b = ctx.b
    if ctx.gradient_mode:
        return b.op("Mul", [g, derivative(ctx, z)], "gradient")
    z_ref = ctx.ref(z_name)
    if secant is not None:  # an exact closed form, valid for every Δz
        return b.op("Mul", [g, secant(ctx, z, z_ref)], "rescale")
    dz = b.op("Sub", [z, z_ref], "dz")
    dy = b.op("Sub", [y, ctx.ref(y_name)], "dy")
    if smooth:
        band = SMOOTH_BAND.get(ctx.source_dtype(z_name), 0.1) * np.maximum(1.0, np.abs(ctx.ref_value(z_name)))
        threshold = b.const(band.astype(ctx.dtype(z_name)), "rescale_band")
        midpoint = b.op("Mul", [b.op("Add", [z, z_ref]), ctx.const(0.5, "half")], "midpoint")
        offset = b.op("Mul", [dz, ctx.const(0.5 / np.sqrt(3.0), "gauss_offset")], "gauss_offset")
        left, right = b.op("Sub", [midpoint, offset], "gauss_left"), b.op("Add", [midpoint, offset], "gauss_right")
        near = b.op("Mul", [b.op("Add", [derivative(ctx, left), derivative(ctx, right)]), ctx.const(0.5, "half")],
                    "gauss_mean")
    else:
        threshold = ctx.const(ctx.eps(z_name), "rescale_eps")
        near = derivative(ctx, z)
    small = b.op("Less", [b.op("Abs", [dz]), threshold], "small_dz")
    safe_dz = b.op("Where", [small, ctx.const(1.0, "one"), dz], "safe_dz")
    secant = b.op("Div", [dy, safe_dz], "secant")
    slope = b.op("Where", [small, near, secant], "slope")
    if piece is not None:
        midpoint = b.op("Mul", [b.op("Add", [z, z_ref]), ctx.const(0.5, "half")], "midpoint")
        same = b.op("Equal", [piece(ctx, z), piece(ctx, z_ref)], "same_piece")
        slope = b.op("Where", [same, derivative(ctx, midpoint), slope], "piece_slope")
    return b.op("Mul", [g, slope], "rescale")


def _as_float(ctx: RuleContext, mask: str) -> str:
    from onnx import helper

    return ctx.b.op("Cast", [mask], "mask", to=helper.np_dtype_to_tensor_dtype(ctx.dtype(ctx.input(0))))


def _single(ctx: RuleContext, g: Multipliers, derivative: Derivative, smooth: bool, piece: Piece | None = None,
            secant: Secant | None = None) -> Multipliers:
    extra = [ctx.input(i) for i in range(1, len(ctx.node.input)) if ctx.is_varying(i)]
    if extra:
        raise ctx.error(f"parameters {extra} depend on the target tensor; only the first input may")
    return [rescale(ctx, g[0], derivative, smooth, piece, secant)] + [None] * (len(ctx.node.input) - 1)


def _pieces(*breaks: float) -> Piece:
    """Piece label of ``p`` for a function with kinks at ``breaks``: the number of breaks below ``p``."""

    def label(c: RuleContext, p: str) -> str:
        from onnx import TensorProto

        count = None
        for value in breaks:
            above = c.b.op("Cast", [c.b.op("Greater", [p, c.const(value, "kink")])], "above", to=TensorProto.INT32)
            count = above if count is None else c.b.op("Add", [count, above], "piece")
        return count

    return label


@register("Relu")
def relu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Relu: Rescale, fallback ``f'(z) = [z > 0]``."""
    return _single(ctx, g, lambda c, p: _as_float(c, c.b.op("Greater", [p, c.const(0.0, "zero")])), smooth=False,
                   piece=_pieces(0.0))


@register("LeakyRelu")
def leaky_relu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """LeakyRelu: Rescale, fallback ``f'(z) = 1 if z > 0 else α``."""
    alpha = float(ctx.attr("alpha", 0.01))

    def derivative(c: RuleContext, p: str) -> str:
        positive = c.b.op("Greater", [p, c.const(0.0, "zero")])
        return c.b.op("Where", [positive, c.const(1.0, "one"), c.const(alpha, "alpha")], "leaky_slope")

    return _single(ctx, g, derivative, smooth=False, piece=_pieces(0.0))


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

    breaks = [float(np.asarray(v)) for v in (lo, hi) if v is not None]
    return _single(ctx, g, derivative, smooth=False, piece=_pieces(*breaks) if breaks else None)


def _sinhc(c: RuleContext, u: str) -> str:
    """``sinh(u)/u`` (1 + u²/6 near 0, where the quotient is 0/0)."""
    b = c.b
    u2 = b.op("Mul", [u, u])
    series = b.op("Add", [c.const(1.0, "one"), b.op("Mul", [u2, c.const(1.0 / 6.0, "sixth")])], "sinhc_series")
    tiny = b.op("Less", [b.op("Abs", [u]), c.const(1e-3, "sinhc_small")])
    safe_u = b.op("Where", [tiny, c.const(1.0, "one"), u])
    return b.op("Where", [tiny, series, b.op("Div", [b.op("Sinh", [safe_u]), safe_u])], "sinhc")


def _tanh_secant(c: RuleContext, a: str, a_ref: str, scale: float) -> str:
    """Exact secant of ``tanh(scale·z)`` between ``a`` and ``a_ref``, free of cancellation:

    ``(tanh(sa) − tanh(sb))/(a − b) = s · sinhc(s(a − b)) / (cosh(sa) · cosh(sb))``.
    Saturated ends make the cosh product overflow to inf and the secant correctly 0; where ``a`` and
    ``a_ref`` are very far apart (|s·Δ| > 40), the plain quotient is exact enough and is used.
    """
    b = c.b
    sa, sb = (a, a_ref) if scale == 1.0 else (b.op("Mul", [a, c.const(scale, "scale")]), b.op("Mul", [a_ref, c.const(scale, "scale")]))
    delta = b.op("Sub", [sa, sb], "scaled_delta")
    closed = b.op("Div", [b.op("Mul", [_sinhc(c, delta), c.const(scale, "scale")]),
                          b.op("Mul", [b.op("Cosh", [sa]), b.op("Cosh", [sb])])], "tanh_secant")
    far = b.op("Greater", [b.op("Abs", [delta]), c.const(40.0, "far")])
    quotient = b.op("Div", [b.op("Sub", [b.op("Tanh", [sa]), b.op("Tanh", [sb])]),
                            b.op("Where", [far, b.op("Sub", [a, a_ref]), c.const(1.0, "one")])], "tanh_quotient")
    return b.op("Where", [far, quotient, closed], "tanh_secant_safe")


@register("Sigmoid")
def sigmoid(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Sigmoid ``σ(z) = ½(1 + tanh(z/2))``: exact, cancellation-free secant ``½ · tanh-secant at scale ½``.

    (In float32, ``σ(z) − σ(z')`` between two saturated values cancels whatever ``|z − z'|`` is —
    e.g. squeeze-and-excitation gates — so the secant is computed in closed form.)
    """

    def derivative(c: RuleContext, p: str) -> str:
        s = c.b.op("Sigmoid", [p])
        return c.b.op("Mul", [s, c.b.op("Sub", [c.const(1.0, "one"), s])], "dsigmoid")

    def secant(c: RuleContext, z: str, z_ref: str) -> str:
        return c.b.op("Mul", [_tanh_secant(c, z, z_ref, 0.5), c.const(0.5, "half")], "sigmoid_secant")

    return _single(ctx, g, derivative, smooth=True, secant=secant)


@register("Tanh")
def tanh(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Tanh: exact, cancellation-free secant ``sinhc(Δ) / (cosh z · cosh z')``."""

    def derivative(c: RuleContext, p: str) -> str:
        t = c.b.op("Tanh", [p])
        return c.b.op("Sub", [c.const(1.0, "one"), c.b.op("Mul", [t, t])], "dtanh")

    return _single(ctx, g, derivative, smooth=True, secant=lambda c, z, z_ref: _tanh_secant(c, z, z_ref, 1.0))


def _smooth(ctx: RuleContext, g: Multipliers, derivative: Derivative) -> Multipliers:
    return _single(ctx, g, derivative, smooth=True)


def _exp_branch(c: RuleContext, p: str, positive_slope: float, negative_scale: float, exp_scale: float) -> str:
    """``positive_slope`` where p > 0, else ``negative_scale · exp(exp_scale · p)``."""
    b = c.b
    negative = b.op("Mul", [c.const(negative_scale, "neg_scale"),
                            b.op("Exp", [b.op("Mul", [p, c.const(exp_scale, "exp_scale")])])], "exp_branch")
    return b.op("Where", [b.op("Greater", [p, c.const(0.0, "zero")]), c.const(positive_slope, "pos_slope"), negative], "piecewise")


@register("PRelu")
def prelu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """PRelu ``y = z if z > 0 else a·z`` (slope ``a`` constant, broadcast): Rescale, fallback ``1`` or ``a``."""

    def derivative(c: RuleContext, p: str) -> str:
        positive = c.b.op("Greater", [p, c.const(0.0, "zero")])
        return c.b.op("Where", [positive, c.const(1.0, "one"), c.value(c.input(1))], "prelu_slope")

    return _single(ctx, g, derivative, smooth=False, piece=_pieces(0.0))


@register("HardSigmoid")
def hard_sigmoid(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """HardSigmoid ``max(0, min(1, αz + β))`` (piecewise linear): Rescale, fallback ``α·[0 < αz + β < 1]``."""
    alpha, beta = float(ctx.attr("alpha", 0.2)), float(ctx.attr("beta", 0.5))

    def derivative(c: RuleContext, p: str) -> str:
        b = c.b
        inner = b.op("Add", [b.op("Mul", [p, c.const(alpha, "alpha")]), c.const(beta, "beta")])
        inside = b.op("And", [b.op("Greater", [inner, c.const(0.0, "zero")]), b.op("Less", [inner, c.const(1.0, "one")])])
        return b.op("Mul", [_as_float(c, inside), c.const(alpha, "alpha")], "dhardsigmoid")

    kinks = sorted(((0.0 - beta) / alpha, (1.0 - beta) / alpha)) if alpha else []
    return _single(ctx, g, derivative, smooth=False, piece=_pieces(*kinks) if kinks else None)


@register("HardSwish")
def hard_swish(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """HardSwish ``z·max(0, min(1, z/6 + 1/2))``: pieces 0 (z < −3), ``z²/6 + z/2`` and ``z`` (z > 3).

    The derivative is ``0``, ``p/3 + 1/2`` and ``1``; the pieces are at most quadratic, so within one
    piece the midpoint derivative is the exact secant.
    """

    def derivative(c: RuleContext, p: str) -> str:
        b = c.b
        middle = b.op("Add", [b.op("Mul", [p, c.const(1.0 / 3.0, "third")]), c.const(0.5, "half")])
        low = b.op("Less", [p, c.const(-3.0, "minus3")])
        high = b.op("Greater", [p, c.const(3.0, "plus3")])
        return b.op("Where", [low, c.const(0.0, "zero"), b.op("Where", [high, c.const(1.0, "one"), middle])], "dhardswish")

    return _single(ctx, g, derivative, smooth=False, piece=_pieces(-3.0, 3.0))


@register("Elu")
def elu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Elu: midpoint derivative ``1`` (p > 0) or ``α·exp(p)``."""
    alpha = float(ctx.attr("alpha", 1.0))
    return _smooth(ctx, g, lambda c, p: _exp_branch(c, p, 1.0, alpha, 1.0))


@register("Selu")
def selu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Selu: midpoint derivative ``γ`` (p > 0) or ``γ·α·exp(p)``."""
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    return _smooth(ctx, g, lambda c, p: _exp_branch(c, p, gamma, gamma * alpha, 1.0))


@register("Celu")
def celu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Celu: midpoint derivative ``1`` (p > 0) or ``exp(p/α)``."""
    alpha = float(ctx.attr("alpha", 1.0))
    return _smooth(ctx, g, lambda c, p: _exp_branch(c, p, 1.0, 1.0, 1.0 / alpha))


@register("Softplus")
def softplus(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Softplus ``log(1 + eᶻ)``: midpoint derivative ``σ(p)``."""
    return _smooth(ctx, g, lambda c, p: c.b.op("Sigmoid", [p], "dsoftplus"))


@register("Softsign")
def softsign(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Softsign ``z/(1 + |z|)``: midpoint derivative ``1/(1 + |p|)²``."""

    def derivative(c: RuleContext, p: str) -> str:
        b = c.b
        denom = b.op("Add", [c.const(1.0, "one"), b.op("Abs", [p])])
        return b.op("Reciprocal", [b.op("Mul", [denom, denom])], "dsoftsign")

    return _smooth(ctx, g, derivative)


def _normal_pdf(c: RuleContext, p: str) -> str:
    b = c.b
    return b.op("Mul", [c.const(1.0 / np.sqrt(2.0 * np.pi), "inv_sqrt_2pi"),
                        b.op("Exp", [b.op("Mul", [b.op("Mul", [p, p]), c.const(-0.5, "minus_half")])])], "normal_pdf")


@register("Erf")
def erf(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Erf: midpoint derivative ``2/√π · exp(−p²)``."""

    def derivative(c: RuleContext, p: str) -> str:
        b = c.b
        return b.op("Mul", [c.const(2.0 / np.sqrt(np.pi), "two_over_sqrt_pi"),
                            b.op("Exp", [b.op("Neg", [b.op("Mul", [p, p])])])], "derf")

    return _smooth(ctx, g, derivative)


@register("Gelu")
def gelu(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Gelu (opset 20): midpoint derivative ``Φ(p) + p·φ(p)``; tanh approximation differentiated exactly."""
    approximate = ctx.attr("approximate", "none")

    def derivative(c: RuleContext, p: str) -> str:
        b = c.b
        if approximate == "tanh":
            k = np.sqrt(2.0 / np.pi)
            p2 = b.op("Mul", [p, p])
            inner = b.op("Mul", [c.const(k, "k"), b.op("Add", [p, b.op("Mul", [c.const(0.044715, "c"), b.op("Mul", [p2, p])])])])
            t = b.op("Tanh", [inner])
            dinner = b.op("Mul", [c.const(k, "k"), b.op("Add", [c.const(1.0, "one"), b.op("Mul", [c.const(3 * 0.044715, "c3"), p2])])])
            first = b.op("Mul", [c.const(0.5, "half"), b.op("Add", [c.const(1.0, "one"), t])])
            second = b.op("Mul", [b.op("Mul", [c.const(0.5, "half"), p]),
                                  b.op("Mul", [b.op("Sub", [c.const(1.0, "one"), b.op("Mul", [t, t])]), dinner])])
            return b.op("Add", [first, second], "dgelu_tanh")
        cdf = b.op("Mul", [c.const(0.5, "half"), b.op("Add", [c.const(1.0, "one"),
                                                              b.op("Erf", [b.op("Mul", [p, c.const(1.0 / np.sqrt(2.0), "inv_sqrt2")])])])])
        return b.op("Add", [cdf, b.op("Mul", [p, _normal_pdf(c, p)])], "dgelu")

    return _smooth(ctx, g, derivative)


@register("Mish")
def mish(ctx: RuleContext, g: Multipliers) -> Multipliers:
    """Mish ``z·tanh(softplus(z))``: midpoint derivative ``tanh(sp) + p·σ(p)·(1 − tanh²(sp))``."""

    def derivative(c: RuleContext, p: str) -> str:
        b = c.b
        t = b.op("Tanh", [b.op("Softplus", [p])])
        one_minus = b.op("Sub", [c.const(1.0, "one"), b.op("Mul", [t, t])])
        return b.op("Add", [t, b.op("Mul", [b.op("Mul", [p, b.op("Sigmoid", [p])]), one_minus])], "dmish")

    return _smooth(ctx, g, derivative)
