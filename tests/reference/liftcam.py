"""Float64 LIFT-CAM reference (``../shared/docs/ALGORITHM.md`` §1, rules of §3, corrections of §4).

Two independent ways to get the DeepLIFT multipliers ``m = ∂ᴰᴸ y_c / ∂A`` of a head ``F``
(reference ``A' = 0``, Rescale rule, captum's max-pool rule):

* ``deeplift_multipliers_captum`` -- captum ``DeepLift`` (the authors' recipe), corrected:
    - extra activation types registered with captum's ``nonlinear`` (Rescale) rule
      (``EXTRA_RESCALE_TYPES``: ReLU6, Hardtanh, Hardswish, Hardsigmoid, SiLU, GELU, Mish, ...);
    - captum bugs 1 and 2 (a rule module fed by another rule module loses its rule; a rule module
      whose input feeds other branches drops their gradient) fixed by a forward pre-hook, registered
      before captum's own hooks, that clones every rule module's input tensors;
    - captum bug 3 (overlapping max-pool windows overwritten by ``max_unpool``) and a fourth one
      (captum's max-pool fallback uses ``grad_input[0]``, i.e. sample 0's gradient for every sample
      where ``|x − x'| < eps``) fixed by replacing captum's ``maxpool{1,2,3}d`` rules with
      ``maxpool_rule``, which scatter-adds and uses each sample's own gradient.
* ``deeplift_multipliers_autograd`` -- captum-free: every rule module's output is replaced (forward
  hook) by a custom ``torch.autograd.Function`` whose backward applies the Rescale / max-pool rule
  with reference values recorded from ``F(0)``; linear operations get their ordinary gradients.

``liftcam_reference`` turns either into the LIFT-CAM outputs. ``gap_linear_head_reference`` is the
closed form for ``global-average-pool → flatten → Linear`` heads (ResNet-50 ``layer4``).
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-10  # captum's default eps: below it the rules fall back to the ordinary gradient

#: Elementwise activation modules given captum's Rescale rule in addition to captum's own
#: (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus).
EXTRA_RESCALE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Mish,
    nn.CELU, nn.SELU, nn.Softsign, nn.PReLU,
)

#: Every elementwise activation type the captum-free path applies the Rescale rule to.
RESCALE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus,
) + EXTRA_RESCALE_TYPES

MAXPOOL_TYPES: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _captum_deep_lift():
    from captum.attr._core import deep_lift

    return deep_lift


# ---------------------------------------------------------------------------------------------
# Corrected max-pool rule (shared by the captum patch and the captum-free path)
# ---------------------------------------------------------------------------------------------


def _pool_fn(module: nn.Module) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    return {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}[type(module)]


def _pool_with_indices(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _pool_fn(module)(x, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.ceil_mode, True)


def _scatter_add(values: torch.Tensor, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Route ``values`` (pool-output shaped) to flat spatial ``indices`` of a ``like``-shaped tensor, summing."""
    n, c = like.shape[:2]
    out = torch.zeros(n, c, math.prod(like.shape[2:]), dtype=values.dtype, device=values.device)
    out.scatter_add_(2, indices.reshape(n, c, -1), values.reshape(n, c, -1))
    return out.view(like.shape)


def maxpool_multiplier(module: nn.Module, x: torch.Tensor, x_ref: torch.Tensor, g: torch.Tensor,
                       eps: float = EPS) -> torch.Tensor:
    """DeepLIFT max-pool rule (captum's, with scatter-add): multiplier w.r.t. the pool input.

    With ``y = pool(x)``, ``y' = pool(x')``, ``ŷ = max(y, y')`` and incoming multiplier ``g``:
    ``m = (unpool⁺(g ⊙ (ŷ − y'), argmax x) + unpool⁺(g ⊙ (y − ŷ), argmax x')) / (x − x')``,
    and ``m = unpool⁺(g, argmax x)`` (ordinary max-pool gradient) where ``|x − x'| < eps``.
    ``unpool⁺`` sums values routed to the same input position (overlapping windows), ties go to
    the first maximum (PyTorch). ``x_ref`` may have batch 1 (broadcast).
    """
    x_ref = x_ref.expand_as(x)
    y, idx = _pool_with_indices(module, x)
    y_ref, idx_ref = _pool_with_indices(module, x_ref)
    y_hat = torch.maximum(y, y_ref)
    routed = _scatter_add(g * (y_hat - y_ref), idx, x) + _scatter_add(g * (y - y_hat), idx_ref, x)
    plain = _scatter_add(g, idx, x)
    dx = x - x_ref
    safe = torch.where(dx.abs() < eps, torch.ones_like(dx), dx)
    return torch.where(dx.abs() < eps, plain, routed / safe)


def maxpool_rule(module, inputs, outputs, grad_input, grad_output, eps: float = EPS):
    """Drop-in replacement for captum's ``maxpool{1,2,3}d`` rule (same signature).

    captum stacks ``[input; reference]`` on the batch axis (``2N``); both halves get the same
    multiplier ``maxpool_multiplier(x, x', g)``, except that where ``|x − x'| < eps`` each row falls
    back to its own ordinary gradient ``grad_input`` (captum uses ``grad_input[0]`` -- sample 0's).
    """
    if grad_input.shape != inputs.shape:
        raise AssertionError("maxpool_rule: gradient w.r.t. a subset of the pool's inputs")
    with torch.no_grad():
        x, x_ref = inputs.chunk(2)
        g, _ = grad_output.chunk(2)
        m = torch.cat(2 * [maxpool_multiplier(module, x, x_ref, g, eps=eps)])
        delta_in = torch.cat(2 * [x - x_ref])
        return torch.where(delta_in.abs() < eps, grad_input, m)


# ---------------------------------------------------------------------------------------------
# captum path
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def captum_rules(extra_types: bool = True, patch_maxpool: bool = True) -> Iterator[dict]:
    """Temporarily extend/patch ``captum.attr._core.deep_lift.SUPPORTED_NON_LINEAR``.

    ``extra_types``: map each of ``EXTRA_RESCALE_TYPES`` to captum's ``nonlinear`` (Rescale) rule.
    ``patch_maxpool``: map ``nn.MaxPool{1,2,3}d`` to ``maxpool_rule`` (scatter-add, per-sample fallback).
    The table is restored on exit. Yields the (patched) table.
    """
    dl = _captum_deep_lift()
    table = dl.SUPPORTED_NON_LINEAR
    saved = dict(table)
    try:
        if extra_types:
            for t in EXTRA_RESCALE_TYPES:
                table.setdefault(t, dl.nonlinear)
        if patch_maxpool:
            for t in MAXPOOL_TYPES:
                table[t] = maxpool_rule
        yield table
    finally:
        table.clear()
        table.update(saved)


def _clone_inputs_pre_hook(module: nn.Module, args: tuple) -> tuple:
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@contextlib.contextmanager
def clone_rule_inputs(model: nn.Module) -> Iterator[int]:
    """Register on every rule module (type in captum's table) a forward pre-hook cloning its inputs.

    Must be entered *before* captum registers its hooks, so the clone runs first and captum's
    tensor hook lands on a tensor that only this module consumes. This fixes captum bugs 1
    (rule module fed by a rule module: captum's ``output_tensor_hook`` of the upstream module
    records the gradient before the downstream rule rewrites it) and 2 (rule module whose input
    feeds other branches: the rewritten gradient replaces the *total* gradient of that tensor).
    Note: with the zero reference, bug 1 on ReLU → MaxPool keeps completeness whenever the
    reference is constant inside each pool window (then the plain max-pool gradient also sums to
    ``y − y'``) while still giving wrong φ_k and multipliers; completeness exposes it only where the
    reference varies inside a window (e.g. after a zero-padded conv). Yields the number of hooked modules.
    """
    table = _captum_deep_lift().SUPPORTED_NON_LINEAR
    handles = [m.register_forward_pre_hook(_clone_inputs_pre_hook)
               for m in model.modules() if type(m) in table]
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def _prepare_head(head: nn.Module) -> nn.Module:
    """Deep copy in float64, eval mode, every ``inplace`` flag off.

    Floating parameters/buffers are converted straight into the copy (deepcopy memo), so a
    float32 duplicate of a large head (VGG16's classifier: 120M weights) is never made.
    """
    memo: dict[int, object] = {}
    for p in head.parameters():
        if p.is_floating_point():
            memo[id(p)] = nn.Parameter(p.detach().to(torch.float64), requires_grad=p.requires_grad)
    for b in head.buffers():
        if b.is_floating_point():
            memo[id(b)] = b.detach().to(torch.float64)
    h = copy.deepcopy(head, memo).double().eval()
    for m in h.modules():
        if hasattr(m, "inplace") and isinstance(getattr(m, "inplace"), bool):
            m.inplace = False
    return h


def deeplift_multipliers_captum(
    head: nn.Module,
    A: torch.Tensor,
    classes: torch.Tensor,
    *,
    clone_fix: bool = True,
    patch_maxpool: bool = True,
    extra_types: bool = True,
    eps: float = EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """captum ``DeepLift`` multipliers of ``y_c`` w.r.t. ``A`` with a zero baseline (no copy made).

    Returns ``(m, delta)``: ``m`` has ``A``'s shape; ``delta`` is captum's convergence delta per
    sample, ``Σ (A ⊙ m) − (y_c(A) − y_c(0))`` (captum evaluates it with its hooks removed).
    One captum pass: ``custom_attribution_func`` captures the multipliers and returns ``A ⊙ m``.
    ``head`` must already be in ``A``'s dtype; ``clone_fix``/``patch_maxpool``/``extra_types``
    switch the corrections (off only to demonstrate captum's bugs).
    """
    from captum.attr import DeepLift

    captured: dict[str, torch.Tensor] = {}

    def attribution(multipliers, inputs, baselines):
        captured["m"] = multipliers[0].detach().clone()
        return tuple((x - b) * mm for mm, x, b in zip(multipliers, inputs, baselines))

    with contextlib.ExitStack() as stack:
        stack.enter_context(captum_rules(extra_types=extra_types, patch_maxpool=patch_maxpool))
        if clone_fix:
            stack.enter_context(clone_rule_inputs(head))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        dl = DeepLift(head, multiply_by_inputs=True, eps=eps)
        _, delta = dl.attribute(
            A.detach().clone(),
            baselines=torch.zeros_like(A),
            target=[int(c) for c in classes],
            return_convergence_delta=True,
            custom_attribution_func=attribution,
        )
    return captured["m"], delta.detach()


# ---------------------------------------------------------------------------------------------
# captum-free path: custom autograd Functions
# ---------------------------------------------------------------------------------------------


class _ReplaceGrad(torch.autograd.Function):
    """Forward: returns ``value``. Backward: ``grad_z = g ⊙ multiplier`` (nothing else gets a gradient)."""

    @staticmethod
    def forward(ctx, z, value, multiplier):
        ctx.save_for_backward(multiplier)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, g):
        (multiplier,) = ctx.saved_tensors
        return g * multiplier, None, None


class _MaxPoolRuleFn(torch.autograd.Function):
    """Forward: ``pool(x)``. Backward: ``maxpool_multiplier(module, x, x_ref, g)``."""

    @staticmethod
    def forward(ctx, x, value, module, x_ref, eps):
        ctx.module, ctx.eps = module, eps
        ctx.save_for_backward(x, x_ref)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, g):
        x, x_ref = ctx.saved_tensors
        return maxpool_multiplier(ctx.module, x, x_ref, g, ctx.eps), None, None, None, None


def _rescale_multiplier(module: nn.Module, z: torch.Tensor, z_ref: torch.Tensor, eps: float) -> torch.Tensor:
    """Rescale rule: ``(f(z) − f(z')) / (z − z')``, or ``f′(z)`` where ``|z − z'| < eps``."""
    with torch.enable_grad():
        zz = z.detach().clone().requires_grad_(True)
        (fprime,) = torch.autograd.grad(module.forward(zz).sum(), zz)  # .forward: no hooks
    with torch.no_grad():
        z_ref = z_ref.expand_as(z)
        dz = z - z_ref
        small = dz.abs() < eps
        secant = (module.forward(z) - module.forward(z_ref)) / torch.where(small, torch.ones_like(dz), dz)
        return torch.where(small, fprime, secant)


def deeplift_multipliers_autograd(head: nn.Module, A: torch.Tensor, classes: torch.Tensor,
                                  *, eps: float = EPS) -> torch.Tensor:
    """captum-free DeepLIFT multipliers ``m = ∂ᴰᴸ y_c / ∂A`` (zero reference), ``A``'s shape.

    1. ``F(0)`` is run once with pre-hooks recording the input ``z'`` of every rule module
       (``RESCALE_TYPES`` elementwise activations, ``MAXPOOL_TYPES``); a module called twice raises.
    2. ``F(A)`` is run with forward hooks replacing each rule module's output by a custom Function
       whose backward is the Rescale multiplier ``(f(z) − f(z'))/(z − z')`` (``f′(z)`` below eps) or
       ``maxpool_multiplier``; every other operation keeps its ordinary (linear) gradient.
    3. ``m = autograd.grad(Σ_n y[n, c_n], A)``.
    Any other nonlinearity in the head would silently get its plain gradient: check completeness.
    ``head`` must already be in ``A``'s dtype with in-place activations disabled.
    """
    rule_modules = [m for m in head.modules() if isinstance(m, RESCALE_TYPES + MAXPOOL_TYPES)]
    refs: dict[int, torch.Tensor] = {}

    def record(module, args):
        if id(module) in refs:
            raise RuntimeError(f"rule module {module} is called more than once in the head")
        refs[id(module)] = args[0].detach().clone()

    handles = [m.register_forward_pre_hook(record) for m in rule_modules]
    try:
        with torch.no_grad():
            head(torch.zeros_like(A[:1]))
    finally:
        for h in handles:
            h.remove()

    def replace(module, args, output):
        z = args[0]
        z_ref = refs[id(module)]
        if isinstance(module, MAXPOOL_TYPES):
            return _MaxPoolRuleFn.apply(z, output, module, z_ref, eps)
        return _ReplaceGrad.apply(z, output, _rescale_multiplier(module, z.detach(), z_ref, eps))

    handles = [m.register_forward_hook(replace) for m in rule_modules]
    try:
        with torch.enable_grad():
            x = A.detach().clone().requires_grad_(True)
            y = head(x)
            sel = y.gather(1, classes.view(-1, 1).to(y.device)).sum()
            (m,) = torch.autograd.grad(sel, x)
    finally:
        for h in handles:
            h.remove()
    return m.detach()


# ---------------------------------------------------------------------------------------------
# LIFT-CAM
# ---------------------------------------------------------------------------------------------


def cam_from_coefficients(A: torch.Tensor, phi: torch.Tensor,
                          input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Steps 4-5: ``L = ReLU(Σ_k φ_k A_k)`` ``[N,h,w]`` and the heatmap ``[N,H,W]``.

    heatmap = ``bilinear(L, input_hw, align_corners=False)`` (half-pixel centres), then per image
    ``(H − min) / (max − min)``; an image whose resized map is exactly constant gives all zeros.
    """
    L = torch.relu(torch.einsum("nk,nk...->n...", phi, A))
    up = F.interpolate(L[:, None], size=tuple(int(s) for s in input_hw), mode="bilinear",
                       align_corners=False)[:, 0]
    flat = up.reshape(up.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1)
    rng = hi - lo
    heat = torch.where(rng > 0, (up - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)),
                       torch.zeros_like(up))
    return L, heat


def _resolve_classes(logits: torch.Tensor, target) -> torch.Tensor:
    n = logits.shape[0]
    argmax = logits.argmax(dim=1)
    if target is None:
        return argmax
    t = torch.as_tensor(np.asarray(target), dtype=torch.long).reshape(-1)
    if t.numel() == 1 and n != 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries for {n} images")
    if (t >= logits.shape[1]).any():
        raise ValueError(f"target {t.tolist()} out of range for {logits.shape[1]} classes")
    return torch.where(t < 0, argmax, t)


def liftcam_reference(
    head: nn.Module,
    activations: np.ndarray,
    target: np.ndarray | int | None,
    input_hw: tuple[int, int],
    *,
    method: str = "captum",
    clone_fix: bool = True,
    patch_maxpool: bool = True,
    eps: float = EPS,
) -> dict:
    """Float64 LIFT-CAM of ``head`` at the activations ``A`` (``[N,K,h,w]``, any float dtype).

    On a float64 deep copy of ``head`` (in-place flags off):

    * ``logits``        ``y = F(A)``, ``[N, classes]``;
    * ``classes``       ``c_n = argmax y_n`` unless ``target`` (per image, or one int) gives it;
                        ``target < 0`` means argmax; int64 ``[N]``;
    * ``multipliers``   ``m = ∂ᴰᴸ y_c / ∂A`` (DeepLIFT, reference ``A' = 0``, Rescale + max-pool
                        rules; ``method="captum"``: corrected captum ``DeepLift``,
                        ``"autograd"``: ``deeplift_multipliers_autograd``), ``[N,K,h,w]``;
    * ``contributions`` ``C = A ⊙ m``;
    * ``coefficients``  ``φ_k = Σ_ij C_kij``, ``[N, K]``;
    * ``map``           ``L = ReLU(Σ_k φ_k A_k)``, ``[N, h, w]``;
    * ``heatmap``       ``L`` bilinearly resized (half-pixel) to ``input_hw``, min-max normalised
                        per image (constant → 0), ``[N, H, W]``;
    * ``logit_at_zero`` ``y_c(0) = F(0)[c]``, ``[N]``;
    * ``completeness_error`` ``Σ_k φ_k − (y_c(A) − y_c(0))``, ``[N]`` (~1e-12 relative when right);
    * ``convergence_delta`` captum's own delta (same quantity), ``[N]``; ``None`` for autograd.

    All arrays are numpy float64 (``classes`` int64).
    """
    h = _prepare_head(head)
    A = torch.as_tensor(np.asarray(activations)).to(torch.float64)
    if A.dim() < 3:
        raise ValueError(f"activations must be [N, K, ...], got shape {tuple(A.shape)}")
    with torch.no_grad():
        logits = h(A)
        zero_logits = h(torch.zeros_like(A[:1]))[0]
    if logits.dim() != 2:
        raise ValueError(f"head must return [N, classes] logits, got {tuple(logits.shape)}")
    classes = _resolve_classes(logits, target)
    if method == "captum":
        m, delta = deeplift_multipliers_captum(h, A, classes, clone_fix=clone_fix,
                                               patch_maxpool=patch_maxpool, eps=eps)
    elif method == "autograd":
        m, delta = deeplift_multipliers_autograd(h, A, classes, eps=eps), None
    else:
        raise ValueError(f"method must be 'captum' or 'autograd', got {method!r}")
    return liftcam_result(A, m, logits, zero_logits, classes, input_hw, delta)


def liftcam_result(A: torch.Tensor, m: torch.Tensor, logits: torch.Tensor, zero_logits: torch.Tensor,
                   classes: torch.Tensor, input_hw: tuple[int, int], delta: torch.Tensor | None = None) -> dict:
    """The result dict of :func:`liftcam_reference` from the multipliers: ``C = A ⊙ m``, ``φ = Σ_ij C``,
    map and heatmap, ``y_c(0)`` and the completeness error ``Σφ − (y_c(A) − y_c(0))``."""
    C = A * m
    phi = C.flatten(2).sum(dim=2)
    L, heat = cam_from_coefficients(A, phi, input_hw)
    y_c = logits.gather(1, classes.view(-1, 1))[:, 0]
    y0_c = zero_logits[classes]
    return {
        "logits": logits.numpy(),
        "classes": classes.numpy().astype(np.int64),
        "multipliers": m.numpy(),
        "contributions": C.numpy(),
        "coefficients": phi.numpy(),
        "map": L.numpy(),
        "heatmap": heat.numpy(),
        "logit_at_zero": y0_c.numpy(),
        "completeness_error": (phi.sum(dim=1) - (y_c - y0_c)).numpy(),
        "convergence_delta": None if delta is None else delta.numpy(),
    }


def gap_linear_head_reference(weight: np.ndarray, activations: np.ndarray,
                              classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed form for a ``global-average-pool → flatten → Linear(W, b)`` head (ResNet-50 ``layer4``).

    The head is linear, so DeepLIFT multipliers are the gradient: ``m_kij = W[c,k] / (h·w)`` and
    ``φ_k = W[c,k] · mean_ij A_kij``. Returns ``(m, φ)`` in float64, without torch or captum.
    """
    W = np.asarray(weight, dtype=np.float64)
    A = np.asarray(activations, dtype=np.float64)
    classes = np.asarray(classes, dtype=np.int64)
    n, k = A.shape[:2]
    spatial = A.shape[2:]
    w_c = W[classes]  # [N, K]
    m = np.broadcast_to((w_c / math.prod(spatial)).reshape(n, k, *([1] * len(spatial))), A.shape).copy()
    phi = w_c * A.reshape(n, k, -1).mean(axis=2)
    return m, phi
