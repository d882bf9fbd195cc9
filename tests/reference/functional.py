"""A generic, captum-free float64 LIFT-CAM reference for any torchvision classifier.

``deeplift_reference(model, layer_name, A, target, input_hw)`` needs no hand-built head: the head
``F`` is the model itself, run in float64 on a dummy input while a forward hook on the module
``layer_name`` **replaces** that module's output by ``A``. This is the head as long as the network
separates at ``layer_name`` (everything after it depends on the input only through ``A``), which holds
at the block boundaries the tests use and is checked on every call (``check_separation``).

The DeepLIFT rules (``../shared/docs/ALGORITHM.md`` §3; reference ``A' = 0``) are applied by a
:class:`torch.overrides.TorchFunctionMode` that intercepts the nonlinear functions as they are called,
whichever way they are spelled (``nn`` module, ``F.*``, ``torch.*``, ``Tensor`` method):

* **Rescale** (elementwise, one input that depends on ``A``): relu, relu6, hardtanh, clamp/clip,
  threshold, leaky_relu, prelu, rrelu (eval), elu, selu, celu, gelu, silu, mish, sigmoid, logsigmoid,
  tanh, hardsigmoid, hardswish, softplus, softsign, erf. Multiplier ``(f(z) − f(z'))/(z − z')``,
  ``f′(z)`` where ``|z − z'| < eps``;
* **max-pool** (captum's rule, scatter-add for overlapping windows, per-sample plain-gradient
  fallback where ``|x − x'| < eps``; ties, including values equal up to rounding noise, go to the
  first maximum, see :class:`PoolWindows`): max_pool1d/2d/3d, adaptive_max_pool1d/2d/3d;
* **two-factor Shapley product** for ``mul`` when *both* factors depend on ``A`` (squeeze-and-
  excitation gates, ``x * sigmoid(x)``): ``m_a = g·(b + b')/2``, ``m_b = g·(a + a')/2``
  (summed over broadcast axes);
* **Softmax** (``softmax``, along its ``dim``) as one vector function, see ``softmax_rule`` below.

Every call is recorded during a reference run on ``A' = 0`` (the call order is deterministic), then
in the real run each rule call is replaced by a custom :class:`torch.autograd.Function` whose forward
is the original operation and whose backward applies the rule with that call's recorded reference
input. Linear operations (convolutions, BatchNorm in eval, adds, concatenation, views, average
pools, means, products/divisions by a tensor that does not depend on ``A`` ...) keep their ordinary
gradient (the transposed linear map). Any other operation on a tensor that depends on ``A``
(``LINEAR_NAMES`` lists the accepted ones) raises :class:`NoRuleError` with ``strict=True`` (the
default), so a nonlinearity never silently gets its plain gradient.

Softmax interpretation (``softmax_rule``): the Rescale rule applied to the whole Softmax ``s = σ(z)``
as a vector function along its axis is taken to be its exact **secant linear map along the straight
path**, ``M = ∫₀¹ J_σ(z' + t(z − z')) dt`` (the average Jacobian), i.e. the backward multiplier is
``g ← Mᵀ g = ∫₀¹ s_t ⊙ (g − ⟨g, s_t⟩) dt``, integrated by composite Gauss–Legendre quadrature until
``M Δz`` reproduces ``Δs`` to 1e-13 (``"path"``, the default). For a scalar function this *is* the
Rescale secant; it keeps completeness exactly. ``"diagonal"`` is the alternative reading
``m_j = g_j · Δs_j / Δz_j`` (per-coordinate secant, ``∂s_j/∂z_j`` where ``|Δz_j| < eps``): also
complete except where some ``Δz_j`` vanishes while ``Δs_j`` does not. No torchvision classifier has a
Softmax inside the head; the choice matters only for custom heads.

In-place variants (``F.relu(x, inplace=True)``, ``relu_``, ``x *= y``) are computed out of place and
the new tensor is returned (torchvision always uses the returned value).

Each call also counts (``ambiguous`` in the result) the elements whose rule decision would flip under
a perturbation of 1e-6 relative: a ReLU input on its kink, a max-pool argmax decided by less than
that. There a float32 graph may legitimately take the other side (the float64 ground truth is not
defined at fp32 resolution); ``benchmarks/coverage.py`` redraws the images when such a case fails.

``make_classifier`` builds any torchvision classifier with random, non-degenerate, fp32-well-conditioned
weights (``make_model``'s recipe generalised: BatchNorm statistics calibrated then perturbed, zero
biases randomised).
"""
from __future__ import annotations

import copy
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .liftcam import EPS, _resolve_classes, liftcam_result
from .torchvision_shim import import_torchvision

__all__ = [
    "deeplift_reference",
    "prepare_float64",
    "make_classifier",
    "final_affine_layer",
    "NoRuleError",
    "LINEAR_NAMES",
    "RESCALE_NAMES",
]


class NoRuleError(NotImplementedError):
    """An operation on a tensor that depends on ``A`` has no DeepLIFT rule in this reference."""


# ---------------------------------------------------------------------------------------------
# Operation tables (by the function's ``__name__``; in-place ``name_``/``__iname__`` included)
# ---------------------------------------------------------------------------------------------

#: Elementwise nonlinearities with one varying input: Rescale rule.
RESCALE_NAMES = frozenset({
    "relu", "relu6", "hardtanh", "clamp", "clip", "clamp_min", "clamp_max", "threshold",
    "leaky_relu", "prelu", "rrelu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid",
    "logsigmoid", "tanh", "hardsigmoid", "hardswish", "softplus", "softsign", "erf",
})
MAXPOOL_NAMES = frozenset({
    "max_pool1d", "max_pool2d", "max_pool3d",
    "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
})
MUL_NAMES = frozenset({"mul", "multiply", "__mul__", "__rmul__", "__imul__"})
DIV_NAMES = frozenset({"div", "divide", "true_divide", "__truediv__", "__itruediv__"})  # numerator first
#: Products of two operands: linear only when exactly one operand depends on ``A``.
BILINEAR_NAMES = frozenset({"matmul", "mm", "bmm", "addmm", "einsum", "__matmul__", "__rmatmul__"})
SOFTMAX_NAMES = frozenset({"softmax"})

#: Operations that are linear in their inputs that depend on ``A`` (ordinary gradient = DeepLIFT).
#: ``mul``/``div``/``BILINEAR_NAMES`` are linear when only one factor (for ``div``: the numerator)
#: depends on ``A``; checked per call.
LINEAR_NAMES = frozenset({
    # affine layers / normalisation in inference form
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "linear", "batch_norm",
    # sums, differences, scalings
    "add", "__add__", "__radd__", "__iadd__", "sub", "subtract", "__sub__", "__rsub__", "__isub__",
    "neg", "__neg__", "negative", "sum", "mean",
    # pooling / resampling that is linear
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    # inference-time identities
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "clone", "contiguous", "to", "type", "double", "float", "detach_copy",
    # shape / layout
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "transpose", "permute", "t",
    "expand", "expand_as", "repeat", "cat", "concat", "concatenate", "stack", "chunk", "split",
    "split_with_sizes", "narrow", "select", "index_select", "__getitem__", "pad", "channel_shuffle",
    "pixel_shuffle", "pixel_unshuffle", "movedim", "swapaxes", "unbind", "roll", "flip",
})


def _base_name(func: Callable) -> str:
    """``relu_`` → ``relu``, ``__imul__`` → ``__imul__`` (dunder kept), ``boolean_dispatch`` → target name."""
    if func is F.max_pool1d:
        return "max_pool1d"
    if func is F.max_pool2d:
        return "max_pool2d"
    if func is F.max_pool3d:
        return "max_pool3d"
    if func is F.adaptive_max_pool1d:
        return "adaptive_max_pool1d"
    if func is F.adaptive_max_pool2d:
        return "adaptive_max_pool2d"
    if func is F.adaptive_max_pool3d:
        return "adaptive_max_pool3d"
    name = getattr(func, "__name__", None) or repr(func)
    if name.endswith("_") and not name.startswith("__"):
        name = name[:-1]
    return name


def _depends(x: Any) -> bool:
    """Whether ``x`` (tensor, or list/tuple of tensors) depends on ``A`` (= requires grad here)."""
    if isinstance(x, torch.Tensor):
        return x.requires_grad
    if isinstance(x, (list, tuple)):
        return any(_depends(v) for v in x)
    return False


def _count_varying(x: Any) -> int:
    """Number of tensors (lists/tuples flattened) that depend on ``A``."""
    if isinstance(x, torch.Tensor):
        return int(x.requires_grad)
    if isinstance(x, (list, tuple)):
        return sum(_count_varying(v) for v in x)
    return 0


def _label(func: Callable) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


# ---------------------------------------------------------------------------------------------
# Rules as autograd Functions
# ---------------------------------------------------------------------------------------------


class _Multiply(torch.autograd.Function):
    """Forward: ``fn(z)``; backward: ``g ⊙ multiplier`` (precomputed)."""

    @staticmethod
    def forward(ctx, z, multiplier, fn):
        ctx.save_for_backward(multiplier)
        return fn(z)

    @staticmethod
    def backward(ctx, g):
        (multiplier,) = ctx.saved_tensors
        return g * multiplier, None, None


def rescale_multiplier(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, z_ref: torch.Tensor,
                       eps: float = EPS) -> torch.Tensor:
    """``(f(z) − f(z'))/(z − z')``, or ``f′(z)`` where ``|z − z'| < eps`` (captum's ``nonlinear`` rule)."""
    z = z.detach()
    z_ref = z_ref.detach().expand_as(z)
    dz = z - z_ref
    small = dz.abs() < eps
    with torch.no_grad():
        secant = (fn(z) - fn(z_ref)) / torch.where(small, torch.ones_like(dz), dz)
    if not bool(small.any()):
        return secant
    with torch.enable_grad():
        zz = z.clone().requires_grad_(True)
        (fprime,) = torch.autograd.grad(fn(zz).sum(), zz)
    return torch.where(small, fprime, secant)


def _scatter_add(values: torch.Tensor, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Route pool-output-shaped ``values`` to the flat spatial ``indices`` of ``like``, summing."""
    n, c = like.shape[:2]
    out = torch.zeros(n, c, math.prod(like.shape[2:]), dtype=values.dtype, device=values.device)
    out.scatter_add_(2, indices.reshape(n, c, -1), values.reshape(n, c, -1))
    return out.view(like.shape)


TIE_RTOL = 1e-12


def _ntuple(v, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(u) for u in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


class PoolWindows:
    """The windows of a max-pool call, for argmax decisions with explicit tie handling.

    ``name`` is ``max_pool{1,2,3}d`` or ``adaptive_max_pool{1,2,3}d``; ``args`` its bound arguments
    (without ``input``/``return_indices``). ``values(x)`` is the pooled tensor; ``argmax(x, rtol)`` the
    flat spatial index (per plane) of the **first** element, in PyTorch's row-major scan of the window,
    whose value is within ``rtol × max|plane|`` of the window's maximum.

    Why: values that are equal in exact arithmetic but computed along different paths (a convolution's
    border and interior tiles; the reference pass on ``A' = 0`` makes whole planes constant) differ by
    rounding noise (~1e-16 relative in float64, ~1e-7 in float32). An exact argmax would follow that
    noise instead of the "first maximum" of the exact values, and the max-pool rule's multipliers with it.
    """

    def __init__(self, name: str, args: dict, fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        self.name, self.args, self.fn = name, args, fn
        self.dims = int(name[-2])
        self._cache: dict[tuple, torch.Tensor] = {}

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)[0]

    def _axis(self, length: int, out: int, axis: int) -> torch.Tensor:
        """``[out, K]`` input positions of each window along one axis (−1: padding / outside)."""
        if self.name.startswith("adaptive"):
            starts = [(o * length) // out for o in range(out)]
            ends = [-((-(o + 1) * length) // out) for o in range(out)]
            k = max(e - st for st, e in zip(starts, ends))
            rows = [[st + j if st + j < e else -1 for j in range(k)] for st, e in zip(starts, ends)]
            return torch.tensor(rows, dtype=torch.long)
        kernel = _ntuple(self.args["kernel_size"], self.dims)[axis]
        stride_arg = self.args.get("stride")
        stride = _ntuple(stride_arg, self.dims)[axis] if stride_arg not in (None, (), []) else kernel
        pad = _ntuple(self.args.get("padding", 0), self.dims)[axis]
        dil = _ntuple(self.args.get("dilation", 1), self.dims)[axis]
        rows = []
        for o in range(out):
            pos = [o * stride - pad + j * dil for j in range(kernel)]
            rows.append([q if 0 <= q < length else -1 for q in pos])
        return torch.tensor(rows, dtype=torch.long)

    def windows(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> torch.Tensor:
        """``[O, K]`` flat spatial input indices of every window (−1 where outside the input)."""
        key = (in_shape, out_shape)
        if key not in self._cache:
            flat, valid, stride = None, None, 1
            for axis in reversed(range(self.dims)):
                pos = self._axis(in_shape[axis], out_shape[axis], axis)  # [o_a, k_a]
                ok = pos >= 0
                term = pos.clamp(min=0) * stride
                if flat is None:
                    flat, valid = term, ok
                else:  # combine: [o_a, k_a] (outer) x [O_rest, K_rest] (inner), row-major
                    oa, ka = term.shape
                    orest, krest = flat.shape
                    flat = (term.view(oa, 1, ka, 1) + flat.view(1, orest, 1, krest)).reshape(oa * orest, ka * krest)
                    valid = (ok.view(oa, 1, ka, 1) & valid.view(1, orest, 1, krest)).reshape(oa * orest, ka * krest)
                stride *= in_shape[axis]
            self._cache[key] = torch.where(valid, flat, torch.full_like(flat, -1))
        return self._cache[key]

    def _gather(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        out_shape = tuple(self.values(x[:1, :1]).shape[2:])
        w = self.windows(tuple(x.shape[2:]), out_shape)
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        vals = flat[:, :, w.clamp(min=0)]  # [N, C, O, K]
        vals = vals.masked_fill((w < 0).view(1, 1, *w.shape), float("-inf"))
        return vals, w, out_shape

    def argmax(self, x: torch.Tensor, rtol: float = TIE_RTOL) -> torch.Tensor:
        if rtol <= 0:
            return self.fn(x)[1]
        vals, w, out_shape = self._gather(x)
        tol = (rtol * x.abs().flatten(2).amax(2)).view(*x.shape[:2], 1, 1)
        top = vals.amax(-1, keepdim=True)
        first = (vals >= top - tol).to(torch.int8).argmax(-1)  # the first candidate of each window
        idx = w[torch.arange(w.shape[0]).view(1, 1, -1), first]
        return idx.view(*x.shape[:2], *out_shape)

    def ambiguous(self, x: torch.Tensor, tie_rtol: float, rtol: float) -> int:
        """Windows whose maximum beats a non-tied element by less than ``rtol × max|plane|``."""
        vals, _, _ = self._gather(x)
        scale = x.abs().flatten(2).amax(2).view(*x.shape[:2], 1, 1)
        top = vals.amax(-1, keepdim=True)
        below = vals < top - tie_rtol * scale
        close = below & (vals >= top - rtol * scale)
        return int(close.any(-1).sum())


def maxpool_multiplier(pool: PoolWindows, x: torch.Tensor, x_ref: torch.Tensor, g: torch.Tensor,
                       eps: float = EPS, tie_rtol: float = TIE_RTOL) -> torch.Tensor:
    """captum's max-pool rule with scatter-add (``ALGORITHM.md`` §3) for any max-pool (``PoolWindows``).

    ``y = pool(x)``, ``y' = pool(x')``, ``ŷ = max(y, y')``:
    ``m = (unpool⁺(g ⊙ (ŷ − y'), argmax x) + unpool⁺(g ⊙ (y − ŷ), argmax x')) / (x − x')``, and the
    ordinary max-pool gradient ``unpool⁺(g, argmax x)`` where ``|x − x'| < eps``. Argmaxes: the first
    element within ``tie_rtol`` (relative to the plane's largest |value|) of the window maximum
    (:meth:`PoolWindows.argmax`); ``tie_rtol=0``: exact comparisons (captum; ties decided by rounding noise).
    """
    x_ref = x_ref.expand_as(x)
    y, y_ref = pool.values(x), pool.values(x_ref)
    idx, idx_ref = pool.argmax(x, tie_rtol), pool.argmax(x_ref, tie_rtol)
    y_hat = torch.maximum(y, y_ref)
    routed = _scatter_add(g * (y_hat - y_ref), idx, x) + _scatter_add(g * (y - y_hat), idx_ref, x)
    plain = _scatter_add(g, idx, x)
    dx = x - x_ref
    small = dx.abs() < eps
    return torch.where(small, plain, routed / torch.where(small, torch.ones_like(dx), dx))


def rescale_ambiguity(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, z_ref: torch.Tensor,
                      multiplier: torch.Tensor, eps: float, rtol: float) -> int:
    """Elements whose Rescale multiplier jumps when ``z`` moves by ``rtol × max|z|`` (fp32-level noise).

    Only kinks do that: a piecewise-linear unit whose input is within rounding of the kink while its
    reference sits on the kink (``ReLU`` with ``z' = 0``, ``|z| ≈ 1e-8``). The float32 graph and the float64
    reference may then take different sides: the multiplier (and every multiplier upstream of it)
    differs by the full slope although the unit's contribution is ~0. Returns the number of such elements.
    """
    z = z.detach()
    delta = rtol * float(z.abs().max()) if z.numel() else 0.0
    if delta == 0.0:
        return 0
    scale = max(float(multiplier.abs().max()), 1e-300)
    jump = torch.zeros_like(z, dtype=torch.bool)
    for shifted in (z + delta, z - delta):
        jump |= (rescale_multiplier(fn, shifted, z_ref, eps) - multiplier).abs() > 1e-3 * scale
    return int(jump.sum())


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, x_ref, fn, pool, eps, tie_rtol):
        ctx.pool, ctx.eps, ctx.tie_rtol = pool, eps, tie_rtol
        ctx.save_for_backward(x, x_ref)
        return fn(x)

    @staticmethod
    def backward(ctx, g):
        x, x_ref = ctx.saved_tensors
        with torch.no_grad():
            return maxpool_multiplier(ctx.pool, x, x_ref, g, ctx.eps, ctx.tie_rtol), None, None, None, None, None


class _ShapleyProduct(torch.autograd.Function):
    """``a * b`` with the two-factor Shapley multipliers ``m_a = g(b + b')/2``, ``m_b = g(a + a')/2``."""

    @staticmethod
    def forward(ctx, a, b, a_ref, b_ref):
        ctx.save_for_backward(a, b, a_ref, b_ref)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b, a_ref, b_ref = ctx.saved_tensors
        ga = (g * (b + b_ref) / 2).sum_to_size(a.shape)
        gb = (g * (a + a_ref) / 2).sum_to_size(b.shape)
        return ga, gb, None, None


def _gauss_legendre(n: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    t, w = np.polynomial.legendre.leggauss(n)
    return (torch.as_tensor((t + 1) / 2, dtype=dtype, device=device),
            torch.as_tensor(w / 2, dtype=dtype, device=device))


def _softmax_path_nodes(z: torch.Tensor, z_ref: torch.Tensor, dim: int, tol: float = 1e-13,
                        max_panels: int = 4096) -> tuple[list[torch.Tensor], list[float]]:
    """Quadrature nodes ``s_t`` and weights on ``[0, 1]`` for ``M = ∫ J_σ(z' + tΔz) dt``.

    Composite 24-point Gauss–Legendre; the number of panels doubles until ``M Δz`` equals
    ``σ(z) − σ(z')`` to ``tol`` (absolute; σ is in [0, 1]).
    """
    dz = z - z_ref
    target = torch.softmax(z, dim) - torch.softmax(z_ref, dim)
    t, w = _gauss_legendre(24, z.dtype, z.device)
    panels = 1
    while True:
        nodes, weights = [], []
        for p in range(panels):
            for tq, wq in zip(t.tolist(), w.tolist()):
                nodes.append(torch.softmax(z_ref + ((p + tq) / panels) * dz, dim))
                weights.append(wq / panels)
        approx = sum(wq * s * (dz - (s * dz).sum(dim, keepdim=True)) for s, wq in zip(nodes, weights))
        err = float((approx - target).abs().max()) if target.numel() else 0.0
        if err <= tol or panels >= max_panels:
            if err > tol:
                raise RuntimeError(f"softmax path quadrature did not converge (error {err:.2e})")
            return nodes, weights
        panels *= 2


class _SoftmaxRescale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, z_ref, dim, mode, eps):
        ctx.dim, ctx.mode, ctx.eps = dim, mode, eps
        ctx.save_for_backward(z, z_ref)
        return torch.softmax(z, dim)

    @staticmethod
    def backward(ctx, g):
        z, z_ref = ctx.saved_tensors
        dim = ctx.dim
        z_ref = z_ref.expand_as(z)
        with torch.no_grad():
            if ctx.mode == "path":
                nodes, weights = _softmax_path_nodes(z, z_ref, dim)
                out = sum(wq * s * (g - (g * s).sum(dim, keepdim=True)) for s, wq in zip(nodes, weights))
            else:  # diagonal: per-coordinate secant Δs_j/Δz_j, ∂s_j/∂z_j = s_j(1 − s_j) below eps
                s, s_ref = torch.softmax(z, dim), torch.softmax(z_ref, dim)
                dz = z - z_ref
                small = dz.abs() < ctx.eps
                out = g * torch.where(small, s * (1 - s), (s - s_ref) / torch.where(small, torch.ones_like(dz), dz))
        return out, None, None, None, None


# ---------------------------------------------------------------------------------------------
# The mode
# ---------------------------------------------------------------------------------------------


@dataclass
class _Call:
    name: str
    refs: tuple  # reference values of the varying inputs (detached)
    shapes: tuple


@dataclass
class _Trace:
    calls: list[_Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # rule name -> number of applications
    linear: dict[str, int] = field(default_factory=dict)  # linear op name -> calls
    unclassified: dict[str, int] = field(default_factory=dict)
    ambiguous: dict[str, int] = field(default_factory=dict)  # rule name -> fp32-ambiguous elements


_POOL_SIGNATURES = {
    "max_pool1d": F.max_pool1d_with_indices, "max_pool2d": F.max_pool2d_with_indices,
    "max_pool3d": F.max_pool3d_with_indices,
    "adaptive_max_pool1d": F.adaptive_max_pool1d_with_indices,
    "adaptive_max_pool2d": F.adaptive_max_pool2d_with_indices,
    "adaptive_max_pool3d": F.adaptive_max_pool3d_with_indices,
}


def _bind(func: Callable, args: tuple, kwargs: dict) -> inspect.BoundArguments | None:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    return bound


def _out_of_place(func: Callable, name: str) -> Callable:
    """The out-of-place spelling of an in-place call (``relu_`` → ``torch.relu``) or ``func`` itself."""
    raw = getattr(func, "__name__", "")
    if raw.endswith("_") and not raw.startswith("__"):
        for ns in (F, torch, torch.special):
            alt = getattr(ns, name, None)
            if callable(alt):
                return alt
        return getattr(torch.Tensor, name)
    if raw == "__imul__":
        return torch.mul
    return func


class _DeepLiftMode(TorchFunctionMode):
    """Records (``record=True``) or applies the rules to every call whose inputs depend on ``A``."""

    def __init__(self, trace: _Trace, record: bool, *, eps: float, strict: bool, softmax_rule: str,
                 tie_rtol: float = TIE_RTOL, ambiguity_rtol: float = 0.0):
        super().__init__()
        self.trace, self.record, self.eps, self.strict, self.softmax_rule = trace, record, eps, strict, softmax_rule
        self.tie_rtol, self.ambiguity_rtol = tie_rtol, ambiguity_rtol
        self.index = 0

    # -- bookkeeping -------------------------------------------------------------------------------
    def _reference(self, name: str, refs: tuple, shapes: tuple) -> tuple:
        if self.record:
            self.trace.calls.append(_Call(name, tuple(r.detach().clone() for r in refs), shapes))
            self.index += 1
            return refs
        if self.index >= len(self.trace.calls):
            raise RuntimeError(f"call #{self.index} ({name}) was not seen in the reference run on A' = 0")
        call = self.trace.calls[self.index]
        if call.name != name or call.shapes != shapes:
            raise RuntimeError(f"call #{self.index}: {name}{shapes} in the real run but {call.name}{call.shapes} "
                               f"in the reference run (control flow depends on A?)")
        self.index += 1
        self.trace.counts[name] = self.trace.counts.get(name, 0) + 1
        return call.refs

    def _note(self, name: str, count: int) -> None:
        if count:
            self.trace.ambiguous[name] = self.trace.ambiguous.get(name, 0) + int(count)

    def _no_rule(self, func, why: str):
        label = _label(func)
        if self.strict:
            raise NoRuleError(f"{label}: {why}; the reference has no DeepLIFT rule for it")
        self.trace.unclassified[label] = self.trace.unclassified.get(label, 0) + 1

    # -- dispatch -----------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        tensors_in = [a for a in list(args) + list(kwargs.values()) if _depends(a)]
        if not tensors_in:
            return func(*args, **kwargs)
        name = _base_name(func)
        if name in RESCALE_NAMES:
            return self._rescale(func, name, args, kwargs)
        if name in MAXPOOL_NAMES:
            return self._maxpool(func, name, args, kwargs)
        if name in MUL_NAMES and len(args) >= 2 and _depends(args[0]) and _depends(args[1]):
            return self._product(func, name, args, kwargs)
        if name in SOFTMAX_NAMES:
            return self._softmax(func, name, args, kwargs)
        out = func(*args, **kwargs)
        if not _depends(out):
            return out  # size(), dim(), shape, comparisons ...
        if name in LINEAR_NAMES or (name in MUL_NAMES and not (_depends(args[0]) and _depends(args[1]))):
            self.trace.linear[name] = self.trace.linear.get(name, 0) + 1
            return out
        if name in DIV_NAMES and len(args) >= 2 and not _depends(args[1]):
            self.trace.linear[name] = self.trace.linear.get(name, 0) + 1
            return out
        if name in BILINEAR_NAMES and _count_varying(list(args) + list(kwargs.values())) == 1:
            self.trace.linear[name] = self.trace.linear.get(name, 0) + 1
            return out
        self._no_rule(func, "called on a tensor that depends on A and not known to be linear")
        return out

    def _rescale(self, func, name, args, kwargs):
        f = _out_of_place(func, name)
        raw = getattr(func, "__name__", "")
        if raw.endswith("_") and not raw.startswith("__") and f is func:
            raise NoRuleError(f"{_label(func)}: in-place call without an out-of-place equivalent")
        bound = _bind(f, args, kwargs)
        if bound is not None and "inplace" in bound.arguments:
            bound.arguments["inplace"] = False
            args, kwargs = bound.args, bound.kwargs
        elif "inplace" in kwargs:
            kwargs["inplace"] = False
        z, rest = args[0], args[1:]
        if not isinstance(z, torch.Tensor) or _depends(rest) or _depends(list(kwargs.values())):
            self._no_rule(func, "elementwise nonlinearity whose varying input is not its first argument")
            return f(*args, **kwargs)
        fn = lambda t: f(t, *rest, **kwargs)  # noqa: E731
        (z_ref,) = self._reference(name, (z,), (tuple(z.shape),))
        if self.record:
            return fn(z)
        multiplier = rescale_multiplier(fn, z, z_ref, self.eps)
        if self.ambiguity_rtol > 0:
            self._note(name, rescale_ambiguity(fn, z, z_ref, multiplier, self.eps, self.ambiguity_rtol))
        return _Multiply.apply(z, multiplier, fn)

    def _maxpool(self, func, name, args, kwargs):
        bound = _bind(_POOL_SIGNATURES[name], args, kwargs)
        if bound is None:
            raise NoRuleError(f"{_label(func)}: could not bind the max-pool arguments {args[1:]} {kwargs}")
        a = dict(bound.arguments)
        if a.pop("return_indices", False):
            raise NoRuleError(f"{_label(func)} with return_indices=True (indices used downstream)")
        x = a.pop("input")
        if _depends(list(a.values())):
            self._no_rule(func, "max-pool parameters depend on A")
        base = _POOL_SIGNATURES[name]  # the *_with_indices functions
        pool = PoolWindows(name, a, lambda t: base(t, **a))

        def fn(t):
            return base(t, **a)[0]

        (x_ref,) = self._reference(name, (x,), (tuple(x.shape),))
        if self.record:
            return fn(x)
        if self.ambiguity_rtol > 0:
            self._note(name, pool.ambiguous(x.detach(), self.tie_rtol, self.ambiguity_rtol))
            self._note(name + ":reference", pool.ambiguous(x_ref, self.tie_rtol, self.ambiguity_rtol))
        return _MaxPool.apply(x, x_ref, fn, pool, self.eps, self.tie_rtol)

    def _product(self, func, name, args, kwargs):
        if kwargs or len(args) != 2 or not all(isinstance(v, torch.Tensor) for v in args):
            raise NoRuleError(f"{_label(func)}: product of two varying tensors with extra arguments {kwargs}")
        a, b = args
        a_ref, b_ref = self._reference("mul", (a, b), (tuple(a.shape), tuple(b.shape)))
        if self.record:
            return a * b
        return _ShapleyProduct.apply(a, b, a_ref, b_ref)

    def _softmax(self, func, name, args, kwargs):
        bound = _bind(func, args, kwargs)
        if bound is not None:
            a = dict(bound.arguments)
            z = a.get("input", a.get("self", args[0]))
            dim = a.get("dim")
            dtype = a.get("dtype")
        else:
            z, dim = args[0], (args[1] if len(args) > 1 else kwargs.get("dim"))
            dtype = kwargs.get("dtype")
        if dim is None or dtype not in (None, z.dtype) or not isinstance(z, torch.Tensor):
            raise NoRuleError(f"{_label(func)}: softmax without an explicit dim (or with a dtype cast)")
        dim = dim % z.dim()
        (z_ref,) = self._reference("softmax", (z,), (tuple(z.shape),))
        if self.record:
            return torch.softmax(z, dim)
        return _SoftmaxRescale.apply(z, z_ref, dim, self.softmax_rule, self.eps)


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


def prepare_float64(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` in float64, eval mode, parameters frozen, ``inplace`` flags off, no hooks.

    Floating parameters and buffers are converted straight into the copy (no float32 duplicate).
    The result is marked so that :func:`deeplift_reference` uses it as is (no second copy).
    """
    if getattr(model, "_onnxcam_float64_reference", False):
        return model
    memo: dict[int, object] = {}
    for p in model.parameters():
        if p.is_floating_point():
            memo[id(p)] = nn.Parameter(p.detach().to(torch.float64), requires_grad=False)
    for b in model.buffers():
        if b.is_floating_point():
            memo[id(b)] = b.detach().to(torch.float64)
    # Hooks (e.g. left behind by an exporter) are not copied: they may hold whole other modules.
    saved = {}
    for m in model.modules():
        saved[id(m)] = (m._forward_hooks, m._forward_pre_hooks)
        m._forward_hooks, m._forward_pre_hooks = type(m._forward_hooks)(), type(m._forward_pre_hooks)()
    try:
        copy_ = copy.deepcopy(model, memo)
    finally:
        for m in model.modules():
            m._forward_hooks, m._forward_pre_hooks = saved[id(m)]
    copy_ = copy_.double().eval()
    for p in copy_.parameters():
        p.requires_grad_(False)
    for m in copy_.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    copy_._onnxcam_float64_reference = True
    return copy_


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Conv3d)):
            return m.in_channels
    raise ValueError("cannot infer the input channels (no convolution in the model)")


class _ReplaceOutput:
    def __init__(self):
        self.value: torch.Tensor | None = None
        self.calls = 0
        self.captured: torch.Tensor | None = None

    def __call__(self, module, args, output):
        self.calls += 1
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target module returns {type(output).__name__}, not a tensor")
        if self.value is None:
            self.captured = output.detach().clone()
            return None
        if tuple(output.shape[1:]) != tuple(self.value.shape[1:]):
            raise ValueError(f"A has shape {tuple(self.value.shape)} but the layer outputs "
                             f"{tuple(output.shape)} for this input size")
        return self.value


def _logits(y: Any) -> torch.Tensor:
    if isinstance(y, (tuple, list)):
        y = y[0]
    if hasattr(y, "logits") and not isinstance(y, torch.Tensor):
        y = y.logits
    return y


def deeplift_reference(
    model: nn.Module,
    layer_name: str,
    A: np.ndarray | torch.Tensor,
    target: np.ndarray | int | None,
    input_hw: tuple[int, int],
    *,
    eps: float = EPS,
    strict: bool = True,
    softmax_rule: str = "path",
    check_separation: bool = True,
    input_channels: int | None = None,
    tie_rtol: float = TIE_RTOL,
    ambiguity_rtol: float = 1e-6,
) -> dict:
    """Float64 LIFT-CAM of ``model`` cut at ``layer_name``, at the activations ``A`` ``[N,K,h,w]``.

    Args:
        model: any classifier (not modified; a float64 copy is made unless ``model`` comes from
            :func:`prepare_float64`, which callers should use to reuse one copy over many calls).
        layer_name: dotted name of the module whose output is ``A`` (``model.get_submodule``).
        A: target-layer activations (any float dtype; e.g. the graph's ``onnxcam_activations``).
        target: classes per image (or one int, or ``None``); negative = predicted (argmax).
        input_hw: the input image size (H, W): the dummy input's size and the heatmap's.
        eps: Rescale / max-pool fallback threshold (captum's 1e-10).
        strict: raise :class:`NoRuleError` for a non-linear operation without a rule (else count it
            in ``unclassified`` and give it its plain gradient).
        softmax_rule: ``"path"`` (average Jacobian on the straight path, default) or ``"diagonal"``.
        check_separation: verify, on a random image, that the model's logits equal the head's at
            that image's own ``A`` (the network separates at ``layer_name``); raise if not.
        tie_rtol: max-pool argmaxes treat values equal to ``tie_rtol`` (relative to the plane's largest
            |value|) as ties, resolved to the first maximum (:meth:`PoolWindows.argmax`); 0 = exact.
        ambiguity_rtol: count (in ``ambiguous``) the elements whose rule decision flips under a
            perturbation of ``ambiguity_rtol × max|input|`` (:func:`rescale_ambiguity`,
            :meth:`PoolWindows.ambiguous`; max-pool counts on the reference input are keyed
            ``"<name>:reference"``): where a float32 graph may legitimately differ; 0 = skip.

    Returns a dict of numpy float64 arrays with the keys of ``liftcam_reference``: ``logits``
    ``[N,C]``, ``classes`` (int64) ``[N]``, ``multipliers`` and ``contributions`` ``[N,K,h,w]``,
    ``coefficients`` ``[N,K]``, ``map`` ``[N,h,w]``, ``heatmap`` ``[N,H,W]``, ``logit_at_zero``
    ``y_c(0)`` ``[N]``, ``completeness_error`` ``Σφ − (y_c(A) − y_c(0))`` ``[N]``,
    ``convergence_delta`` (``None``); plus ``rules`` (rule name → applications in the head),
    ``linear_ops`` (linear op name → calls), ``unclassified`` (non-strict only) and ``ambiguous``
    (rule name → elements whose decision is within fp32 noise; see ``ambiguity_rtol``).
    """
    if softmax_rule not in ("path", "diagonal"):
        raise ValueError(f"softmax_rule must be 'path' or 'diagonal', got {softmax_rule!r}")
    net = prepare_float64(model)
    layer = net.get_submodule(layer_name)
    A64 = torch.as_tensor(np.asarray(A) if not isinstance(A, torch.Tensor) else A.detach()).to(torch.float64)
    if A64.dim() < 3:
        raise ValueError(f"activations must be [N, K, ...], got shape {tuple(A64.shape)}")
    n = A64.shape[0]
    channels = input_channels or _input_channels(net)
    # Batch 1: the body's output is replaced, so only the head sees the batch of A.
    dummy = torch.zeros(1, channels, *input_hw, dtype=torch.float64)
    replace = _ReplaceOutput()
    handle = layer.register_forward_hook(replace)
    try:
        if check_separation:
            _check_separation(net, replace, channels, input_hw)

        def head(a: torch.Tensor, mode: _DeepLiftMode | None) -> torch.Tensor:
            replace.value, replace.calls = a, 0
            with torch.enable_grad():
                if mode is None:
                    y = _logits(net(dummy))
                else:
                    with mode:
                        y = _logits(net(dummy))
            if replace.calls != 1:
                raise RuntimeError(f"{layer_name} ran {replace.calls} times in one forward pass")
            return y

        trace = _Trace()
        a_ref = torch.zeros_like(A64).requires_grad_(True)
        y_ref_all = head(a_ref, _DeepLiftMode(trace, True, eps=eps, strict=strict, softmax_rule=softmax_rule,
                                             tie_rtol=tie_rtol))
        zero_logits = y_ref_all.detach()[0]
        x = A64.clone().requires_grad_(True)
        mode = _DeepLiftMode(trace, False, eps=eps, strict=strict, softmax_rule=softmax_rule, tie_rtol=tie_rtol,
                             ambiguity_rtol=ambiguity_rtol)
        y = head(x, mode)
        if mode.index != len(trace.calls):
            raise RuntimeError(f"the real run made {mode.index} rule calls, the reference run {len(trace.calls)}")
        if y.dim() != 2:
            raise ValueError(f"the model must return [N, classes] logits, got {tuple(y.shape)}")
        classes = _resolve_classes(y.detach(), target)
        sel = y.gather(1, classes.view(-1, 1)).sum()
        (m,) = torch.autograd.grad(sel, x)
    finally:
        handle.remove()
        replace.value = None
    logits = y.detach()
    m = m.detach()
    result = liftcam_result(A64, m, logits, zero_logits, classes, input_hw)
    result.update(rules=dict(trace.counts), linear_ops=dict(trace.linear), unclassified=dict(trace.unclassified),
                  ambiguous=dict(trace.ambiguous))
    return result


def _check_separation(net: nn.Module, replace: _ReplaceOutput, channels: int, input_hw) -> None:
    """The logits of a random image equal the head's logits at that image's ``A`` with a zero input."""
    x = torch.randn(1, channels, *input_hw, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    replace.value, replace.calls = None, 0
    with torch.no_grad():
        y_full = _logits(net(x))
        a = replace.captured
        replace.value = a
        y_head = _logits(net(torch.zeros_like(x)))
    replace.value, replace.captured = None, None
    err = float((y_full - y_head).abs().max())
    scale = float(y_full.abs().max()) + 1e-300
    if not err <= 1e-9 * scale:
        raise ValueError(f"the network does not separate at this layer: replacing its output by A "
                         f"leaves the logits depending on the input (difference {err:.3g}, logits ~{scale:.3g})")


# ---------------------------------------------------------------------------------------------
# Random, non-degenerate torchvision classifiers (generalises models.make_model)
# ---------------------------------------------------------------------------------------------

_BATCHNORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

#: Extra constructor arguments per architecture.
BUILD_KWARGS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "init_weights": True, "transform_input": False},
    "inception_v3": {"aux_logits": False, "init_weights": True, "transform_input": False},
}


def final_affine_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Linear`` registered in ``model`` (else the last ``nn.Conv2d``: SqueezeNet)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        return linears[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("no Linear or Conv2d layer in the model")
    return convs[-1]


def make_classifier(name: str, seed: int = 0, *, num_classes: int = 1000,
                    calibration_hw: tuple[int, int] = (64, 64), logit_std: float = 3.0,
                    recipe: str = "calibrated") -> nn.Module:
    """torchvision ``name`` (eval, float32) with random, non-degenerate weights (generalises ``make_model``).

    Common steps: torchvision's own initialisation (``weights=None``, nothing is downloaded) under
    ``torch.manual_seed(seed)`` (``BUILD_KWARGS`` for GoogLeNet: no aux heads, ``init_weights``, no
    ``transform_input``); at the end the final affine layer (:func:`final_affine_layer`) is scaled by
    ``s > 0`` so that ``std(logits) ≈ logit_std`` on 4 standard-normal images of ``calibration_hw``
    (use the export size).

    ``recipe="make_model"``: ``models.make_model``'s BatchNorm randomisation (``running_mean ~ N(0, 0.1²)``,
    ``running_var ~ U(0.5, 1.5)``, ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.1²)``); for the five families of
    ``models.SUPPORTED_MODELS`` this gives exactly ``make_model``'s weights. Deep families lose the input
    signal with it (MobileNet, EfficientNet, MNASNet, ShuffleNet, GoogLeNet: the target activations vary
    across images by ~1e-7 relative, so every image gets the same ``A``).

    ``recipe="calibrated"`` (default), for the coverage matrix:

    1. every BatchNorm: ``weight ~ U(0.5, 1.5)``, ``bias ~ N(0, 0.1²)``; every other bias that torchvision
       initialises to exactly zero (VGG, AlexNet, SqueezeNet convolutions and linears) ``~ N(0, 0.1²)``:
       with all biases zero the reference pass ``F(0)`` is identically zero, every ReLU's reference sits
       on its kink, and a pre-activation within fp32 rounding of 0 (it happens: ~20 per VGG16 head)
       flips its multiplier between the float32 graph and the float64 reference;
    2. BatchNorm running statistics measured in one eval-mode pass over 8 standard-normal images of
       ``calibration_hw``, each BatchNorm on its actual input just before it runs (upstream BatchNorms
       already set), with ``var ≥ (γ/20)²`` (gain at most ~20: nearly constant channels otherwise
       amplify fp32 rounding, EfficientNet-B0's fp32 logits then differ from float64 by 1e-3), then
       perturbed: ``mean += 0.1·σ·N(0, 1)``, ``var ×= U(0.5, 1.5)``. (Calibrating all of them at once in
       training mode lets the perturbations compound over depth: RegNetY activations reach 1e3.)
    """
    if recipe not in ("calibrated", "make_model"):
        raise ValueError(f"recipe must be 'calibrated' or 'make_model', got {recipe!r}")
    tv = import_torchvision()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(tv.models, name)(weights=None, num_classes=num_classes, **BUILD_KWARGS.get(name, {}))
        model = model.float().eval()
        gen = torch.Generator().manual_seed(seed + 1_000_003)
        bns = [mod for mod in model.modules() if isinstance(mod, _BATCHNORM_TYPES)]
        with torch.no_grad():
            if recipe == "make_model":
                for mod in bns:
                    c = mod.num_features
                    mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                    mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                    if mod.weight is not None:
                        mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
                    if mod.bias is not None:
                        mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
            else:
                for mod in model.modules():
                    if isinstance(mod, _BATCHNORM_TYPES):
                        c = mod.num_features
                        if mod.weight is not None:
                            mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
                        if mod.bias is not None:
                            mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
                    elif isinstance(getattr(mod, "bias", None), torch.Tensor) and not mod.bias.any():
                        mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=gen))
                _calibrate_batchnorms(model, bns, calibration_hw, gen)
            x = torch.randn(4, 3, *calibration_hw, generator=gen)
            logits = _logits(model(x))
            std = float(logits.double().std())
            if not (std > 0 and torch.isfinite(logits).all()):
                raise RuntimeError(f"{name}: degenerate logits at calibration (std={std})")
            final = final_affine_layer(model)
            scale = logit_std / std
            final.weight.mul_(scale)
            if final.bias is not None:
                final.bias.mul_(scale)
    return model


def _calibrate_batchnorms(model: nn.Module, bns: list[nn.Module], hw: tuple[int, int],
                          gen: torch.Generator, max_gain: float = 20.0) -> None:
    """One eval-mode pass; each BatchNorm takes the statistics of its actual input just before it runs."""
    if not bns:
        return

    def calibrate(mod, args):
        x = args[0].detach()
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        gamma = mod.weight.abs() if mod.weight is not None else torch.ones_like(var)
        var = torch.maximum(var, (gamma / max_gain) ** 2)
        c = mod.num_features
        mod.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(c, generator=gen))
        mod.running_var.copy_(var * (0.5 + torch.rand(c, generator=gen)))

    handles = [mod.register_forward_pre_hook(calibrate) for mod in bns]
    try:
        with torch.no_grad():
            model(torch.randn(8, 3, *hw, generator=gen))
    finally:
        for h in handles:
            h.remove()
