"""Self-tests of the float64 LIFT-CAM reference (tests/reference).

* body/head splits are exact; every activation of a head is a distinct module called once;
* completeness Σφ = y_c(A) − y_c(0) holds to 1e-9·scale on every official head (float64);
* the captum path and the captum-free autograd path agree; ResNet-50 ``layer4`` (and MobileNetV2
  ``features.18``) match the closed form φ_k = W[c,k]·mean_ij A_kij;
* small hand-built heads match a numpy reverse sweep with the Rescale / max-pool rules written
  out by hand;
* each captum correction is shown to be necessary: without it completeness (or the multipliers)
  break on a head that has the pattern;
* the real MobileNetV2 of ``$ONNXCAM_SHARED`` (default ``<repo>/../shared``) matches its ONNX
  export and gives a complete LIFT-CAM at ``features.14`` / ``features.18``.
"""
from __future__ import annotations

import copy
import csv
import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from .liftcam import (
    EPS,
    cam_from_coefficients,
    captum_rules,
    gap_linear_head_reference,
    liftcam_reference,
)
from .models import (
    OFFICIAL_CUTS,
    REAL_MOBILENET_V2_STATE_DICT,
    load_real_mobilenet_v2,
    make_model,
    shared_dir,
    split_model,
)
from .torchvision_shim import import_torchvision

# (model, cut, input size): 64 px everywhere (VGG16: 4x4 at features.29, 2x2 after the pool);
# MobileNetV2 at 128 px so that features.14 / features.18 are 4x4 rather than 2x2.
CASES = [
    ("vgg16", "features.29", 64),
    ("resnet50", "layer4", 64),
    ("resnet18", "layer3", 64),
    ("mobilenet_v2", "features.14", 128),
    ("mobilenet_v2", "features.18", 128),
    ("squeezenet1_1", "features.12", 64),
]
assert {(m, c) for m, c, _ in CASES} == {(m, c) for m, cuts in OFFICIAL_CUTS.items() for c in cuts}

COMPLETENESS_TOL = 1e-9


@functools.lru_cache(maxsize=None)
def _model(name: str) -> nn.Module:
    return make_model(name, seed=0)


def _images(n: int, hw: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def _scale(ref: dict) -> np.ndarray:
    """Per-image scale for completeness: Σ|φ| + |y_c(A)| + |y_c(0)| (at least 1)."""
    y_c = ref["logits"][np.arange(len(ref["classes"])), ref["classes"]]
    return np.maximum(1.0, np.abs(ref["coefficients"]).sum(1) + np.abs(y_c) + np.abs(ref["logit_at_zero"]))


def _rel_completeness(ref: dict) -> float:
    return float(np.max(np.abs(ref["completeness_error"]) / _scale(ref)))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@functools.lru_cache(maxsize=None)
def _case(name: str, cut: str, hw: int):
    """(model, body, head, x, A float32 numpy, targets) for one official cut."""
    model = _model(name)
    body, head = split_model(name, model, cut)
    x = _images(3, hw)
    with torch.no_grad():
        A = body(x)
        logits = model(x)
    # per-sample targets: argmax, the 2nd-ranked class, a fixed class
    second = int(logits[1].argsort(descending=True)[1])
    targets = np.array([-1, second, 7])
    return model, body, head, x, A.numpy(), targets


# ---------------------------------------------------------------------------------------------
# torchvision shim and model builders
# ---------------------------------------------------------------------------------------------


def test_torchvision_shim_imports():
    tv = import_torchvision()
    assert import_torchvision() is tv
    assert hasattr(tv.models, "mobilenet_v2") and hasattr(tv.models, "resnet50")


def test_make_model_deterministic_and_non_degenerate():
    a, b = make_model("squeezenet1_1", seed=3), make_model("squeezenet1_1", seed=3)
    c = make_model("squeezenet1_1", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    for name in ("resnet18", "mobilenet_v2"):
        m = _model(name)
        bns = [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]
        assert bns and not m.training
        rv = torch.cat([bn.running_var for bn in bns])
        rm = torch.cat([bn.running_mean for bn in bns])
        assert 0.5 <= float(rv.min()) and float(rv.max()) <= 1.5 and float(rm.abs().max()) > 0.1
        with torch.no_grad():
            y = m(_images(4, 64, seed=11))
        assert 1.5 < float(y.std()) < 6.0, f"{name}: logit std {float(y.std())}"


def test_make_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_model("squeezenet1_1", seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name,cut,hw", CASES)
def test_split_is_exact(name, cut, hw):
    model, body, head, x, A, _ = _case(name, cut, hw)
    target_module = dict(model.named_modules())[cut]
    seen = []
    handle = target_module.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    with torch.no_grad():
        a = body(x)
        assert torch.equal(a, seen[0])
        assert torch.equal(head(a), y)
    # every rule module of the head is a distinct module called exactly once
    with captum_rules() as table:
        rule_modules = [m for m in head.modules() if type(m) in table]
    calls = {id(m): 0 for m in rule_modules}
    handles = [m.register_forward_pre_hook(lambda m, a: calls.__setitem__(id(m), calls[id(m)] + 1))
               for m in rule_modules]
    try:
        with torch.no_grad():
            head(torch.from_numpy(A))
    finally:
        for h in handles:
            h.remove()
    assert set(calls.values()) <= {1}, calls
    expected_rule_modules = {  # MaxPool/ReLU/ReLU6 modules the head must contain
        ("vgg16", "features.29"): 3,  # MaxPool + 2 classifier ReLUs
        ("resnet50", "layer4"): 0,  # linear head
        ("resnet18", "layer3"): 4,  # layer4: 2 blocks x 2 distinct ReLUs
        ("mobilenet_v2", "features.14"): 7,  # features 15-17: 2 ReLU6 each, features.18: 1
        ("mobilenet_v2", "features.18"): 0,
        ("squeezenet1_1", "features.12"): 1,  # classifier ReLU
    }
    assert len(rule_modules) == expected_rule_modules[(name, cut)]


# ---------------------------------------------------------------------------------------------
# The reference on the official heads
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _refs(name: str, cut: str, hw: int) -> tuple[dict, dict]:
    _, _, head, _, A, targets = _case(name, cut, hw)
    ref = liftcam_reference(head, A, targets, (hw, hw))
    ref_ag = liftcam_reference(head, A, targets, (hw, hw), method="autograd")
    return ref, ref_ag


@pytest.mark.parametrize("name,cut,hw", CASES)
def test_reference_complete_and_paths_agree(name, cut, hw):
    model, body, head, x, A, targets = _case(name, cut, hw)
    ref, ref_ag = _refs(name, cut, hw)
    n, k = A.shape[:2]
    # shapes and dtypes
    assert ref["multipliers"].shape == A.shape and ref["multipliers"].dtype == np.float64
    assert ref["coefficients"].shape == (n, k)
    assert ref["map"].shape == (n,) + A.shape[2:]
    assert ref["heatmap"].shape == (n, hw, hw)
    assert ref["classes"].dtype == np.int64 and ref["logit_at_zero"].shape == (n,)
    # classes: argmax for target < 0, the given class otherwise
    with torch.no_grad():
        logits32 = model(x).numpy()
    expected = np.where(targets < 0, ref["logits"].argmax(1), targets)
    assert np.array_equal(ref["classes"], expected)
    assert ref["classes"][0] == logits32[0].argmax()
    assert np.allclose(ref["logits"], logits32, rtol=1e-4, atol=1e-4 * np.abs(logits32).max())
    # completeness Σφ = y_c(A) − y_c(0), captum's own delta, and the two paths
    assert _rel_completeness(ref) <= COMPLETENESS_TOL
    assert _rel_completeness(ref_ag) <= COMPLETENESS_TOL
    assert np.allclose(ref["convergence_delta"], ref["completeness_error"], rtol=0,
                       atol=COMPLETENESS_TOL * _scale(ref).max())
    assert _rel(ref_ag["coefficients"], ref["coefficients"]) <= 1e-10
    assert _rel(ref_ag["multipliers"], ref["multipliers"]) <= 1e-10
    assert np.max(np.abs(ref_ag["heatmap"] - ref["heatmap"])) <= 1e-10
    assert np.array_equal(ref["classes"], ref_ag["classes"])
    # internal consistency of the outputs
    assert np.allclose(ref["contributions"], A.astype(np.float64) * ref["multipliers"], rtol=0, atol=0)
    assert np.allclose(ref["coefficients"], ref["contributions"].reshape(n, k, -1).sum(2), rtol=1e-12, atol=0)
    L = np.maximum(np.einsum("nk,nk...->n...", ref["coefficients"], A.astype(np.float64)), 0)
    assert np.allclose(ref["map"], L, rtol=1e-12, atol=1e-12 * np.abs(L).max())
    heat = ref["heatmap"]
    for i in range(n):
        if np.ptp(ref["map"][i]) > 0:
            assert heat[i].min() == 0.0 and abs(heat[i].max() - 1.0) < 1e-12
        else:
            assert not heat[i].any()


def test_logit_at_zero_and_heatmap_resize():
    name, cut, hw = "resnet18", "layer3", 64
    _, _, head, _, A, _ = _case(name, cut, hw)
    ref, _ = _refs(name, cut, hw)
    h64 = copy.deepcopy(head).double()
    with torch.no_grad():
        y0 = h64(torch.zeros((1,) + A.shape[1:], dtype=torch.float64))[0].numpy()
    assert np.array_equal(ref["logit_at_zero"], y0[ref["classes"]])
    # bilinear, half-pixel centres (align_corners=False), then per-image min-max
    up = F.interpolate(torch.from_numpy(ref["map"])[:, None], size=(hw, hw), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    lo, hi = up.min((1, 2), keepdims=True), up.max((1, 2), keepdims=True)
    assert np.allclose(ref["heatmap"], (up - lo) / (hi - lo), rtol=0, atol=1e-14)
    # a constant (all-zero) map gives an all-zero heatmap
    zero_phi = torch.zeros(A.shape[:2], dtype=torch.float64)
    L, heat = cam_from_coefficients(torch.from_numpy(A).double(), zero_phi, (hw, hw))
    assert not L.any() and not heat.any()


@pytest.mark.parametrize("name,cut,hw", [("resnet50", "layer4", 64), ("mobilenet_v2", "features.18", 128)])
def test_gap_linear_heads_match_closed_form(name, cut, hw):
    """φ_k = W[c,k]·mean_ij A_kij and m = W[c,k]/(h·w), computed in numpy without torch/captum."""
    model, _, _, _, A, _ = _case(name, cut, hw)
    ref, _ = _refs(name, cut, hw)
    fc = model.fc if name == "resnet50" else model.classifier[1]
    W = fc.weight.detach().double().numpy()
    m, phi = gap_linear_head_reference(W, A, ref["classes"])
    assert _rel(ref["coefficients"], phi) <= 1e-12
    assert _rel(ref["multipliers"], m) <= 1e-12
    # completeness of the closed form itself (bias cancels in y_c(A) − y_c(0))
    b = fc.bias.detach().double().numpy()
    y = A.astype(np.float64).mean((2, 3)) @ W.T + b
    y_c = y[np.arange(len(phi)), ref["classes"]]
    assert np.allclose(phi.sum(1), y_c - b[ref["classes"]], rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------------------------
# Hand-built heads and a numpy reverse sweep with the rules written out by hand
# ---------------------------------------------------------------------------------------------


def _np_relu_multiplier(z: np.ndarray, z_ref: np.ndarray) -> np.ndarray:
    """Rescale for ReLU: (relu(z) − relu(z'))/(z − z'), or relu'(z) = [z > 0] where |z − z'| < eps."""
    dz = z - z_ref
    small = np.abs(dz) < EPS
    secant = (np.maximum(z, 0) - np.maximum(z_ref, 0)) / np.where(small, 1.0, dz)
    return np.where(small, (z > 0).astype(np.float64), secant)


def _np_maxpool(x: np.ndarray, k: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D max pool (no padding, floor), returning values and flat argmax (first maximum)."""
    n, c, H, W = x.shape
    oh, ow = (H - k) // s + 1, (W - k) // s + 1
    y = np.empty((n, c, oh, ow))
    idx = np.empty((n, c, oh, ow), dtype=np.int64)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, c, -1)
            a = win.argmax(axis=2)  # numpy: first occurrence of the maximum
            y[:, :, i, j] = np.take_along_axis(win, a[..., None], 2)[..., 0]
            idx[:, :, i, j] = (i * s + a // k) * W + (j * s + a % k)
    return y, idx


def _np_unpool_add(v: np.ndarray, idx: np.ndarray, shape) -> np.ndarray:
    n, c = shape[:2]
    out = np.zeros((n, c, shape[2] * shape[3]))
    for a in range(n):
        for b in range(c):
            np.add.at(out[a, b], idx[a, b].ravel(), v[a, b].ravel())
    return out.reshape(shape)


def _np_maxpool_multiplier(x, x_ref, g, k, s):
    """DeepLIFT max-pool rule by hand: routed ŷ − y' at argmax x and y − ŷ at argmax x', summed."""
    x_ref = np.broadcast_to(x_ref, x.shape)
    y, idx = _np_maxpool(x, k, s)
    y_ref, idx_ref = _np_maxpool(np.ascontiguousarray(x_ref), k, s)
    y_hat = np.maximum(y, y_ref)
    routed = _np_unpool_add(g * (y_hat - y_ref), idx, x.shape) + _np_unpool_add(g * (y - y_hat), idx_ref, x.shape)
    plain = _np_unpool_add(g, idx, x.shape)
    dx = x - x_ref
    small = np.abs(dx) < EPS
    return np.where(small, plain, routed / np.where(small, 1.0, dx))


def _np_conv(layer: nn.Conv2d, x: np.ndarray) -> np.ndarray:
    """Stride-1 zero-padded 2-D convolution (cross-correlation) plus bias, by explicit shifts."""
    assert layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1
    W = layer.weight.detach().double().numpy()
    kh, kw = W.shape[2:]
    p = layer.padding[0]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh, ow = xp.shape[2] - kh + 1, xp.shape[3] - kw + 1
    out = np.zeros((x.shape[0], W.shape[0], oh, ow))
    for di in range(kh):
        for dj in range(kw):
            out += np.einsum("oc,ncij->noij", W[:, :, di, dj], xp[:, :, di:di + oh, dj:dj + ow])
    return out + layer.bias.detach().double().numpy()[:, None, None]


def _np_conv_transpose(layer: nn.Conv2d, g: np.ndarray, in_shape) -> np.ndarray:
    """Transpose of ``_np_conv`` (without bias): the linear map's gradient."""
    W = layer.weight.detach().double().numpy()
    kh, kw = W.shape[2:]
    p = layer.padding[0]
    gp = np.zeros((g.shape[0], W.shape[1], in_shape[2] + 2 * p, in_shape[3] + 2 * p))
    oh, ow = g.shape[2:]
    for di in range(kh):
        for dj in range(kw):
            gp[:, :, di:di + oh, dj:dj + ow] += np.einsum("oc,noij->ncij", W[:, :, di, dj], g)
    return gp[:, :, p:p + in_shape[2], p:p + in_shape[3]]


def _np_sequential_deeplift(head: nn.Sequential, A: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Reverse sweep of a Sequential of Conv2d (stride 1)/ReLU/MaxPool2d/Flatten/Linear in numpy (float64)."""
    xs, refs, layers = [A], [np.zeros((1,) + A.shape[1:])], list(head)
    for layer in layers:  # forward on A and on the zero reference, storing every input
        out = []
        for v in (xs[-1], refs[-1]):
            if isinstance(layer, nn.Conv2d):
                v = _np_conv(layer, v)
            elif isinstance(layer, nn.ReLU):
                v = np.maximum(v, 0)
            elif isinstance(layer, nn.MaxPool2d):
                v = _np_maxpool(v, layer.kernel_size, layer.stride)[0]
            elif isinstance(layer, nn.Flatten):
                v = v.reshape(v.shape[0], -1)
            elif isinstance(layer, nn.Linear):
                v = v @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
            else:
                raise TypeError(type(layer))
            out.append(v)
        xs.append(out[0])
        refs.append(out[1])
    g = np.zeros_like(xs[-1])
    g[np.arange(len(classes)), classes] = 1.0
    for layer, x, x_ref in reversed(list(zip(layers, xs[:-1], refs[:-1]))):
        if isinstance(layer, nn.Conv2d):
            g = _np_conv_transpose(layer, g, x.shape)
        elif isinstance(layer, nn.ReLU):
            g = g * _np_relu_multiplier(x, x_ref)
        elif isinstance(layer, nn.MaxPool2d):
            g = _np_maxpool_multiplier(x, x_ref, g, layer.kernel_size, layer.stride)
        elif isinstance(layer, nn.Flatten):
            g = g.reshape(x.shape)
        elif isinstance(layer, nn.Linear):
            g = g @ layer.weight.detach().double().numpy()
    return g


def _small_head(kernel: int, stride: int, *, conv_first: bool = True, padded_conv: bool = False,
                seed: int = 0, k: int = 6, c: int = 5, hw: int = 7, classes: int = 4) -> nn.Sequential:
    """[Conv1x1(bias) → ReLU → [Conv3x3(pad 1, bias) → ReLU →]] MaxPool(kernel, stride) → Flatten
    → Linear → ReLU → Linear. With ``padded_conv`` the reference at the pool input varies at the
    border (zero padding of a non-zero constant); otherwise it is spatially constant."""
    g = torch.Generator().manual_seed(seed)
    ch = c if conv_first else k
    p = (hw - kernel) // stride + 1
    mid = [nn.Conv2d(c, c, 3, padding=1), nn.ReLU()] if padded_conv else []
    layers = ([nn.Conv2d(k, c, 1), nn.ReLU(), *mid] if conv_first else []) + [
        nn.MaxPool2d(kernel, stride), nn.Flatten(1), nn.Linear(ch * p * p, 16), nn.ReLU(), nn.Linear(16, classes)]
    head = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        for prm in head.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g, dtype=torch.float64) * (0.5 if prm.dim() > 1 else 0.3))
    return head


class _SkipHead(nn.Module):
    """h = Conv1x1(A) + b;  u = ReLU(h) + h;  y = Linear(mean_ij u). The ReLU's input feeds a skip."""

    def __init__(self, seed: int = 0, k: int = 6, c: int = 5, classes: int = 4):
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(k, c, 1), nn.ReLU(), nn.Linear(c, classes)
        self.pool, self.flatten = nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        g = torch.Generator().manual_seed(seed)
        self.double().eval()
        with torch.no_grad():
            for prm in self.parameters():
                prm.copy_(torch.randn(prm.shape, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(self.flatten(self.pool(self.relu(h) + h)))

    def numpy_multipliers(self, A: np.ndarray, classes: np.ndarray) -> np.ndarray:
        W1 = self.conv.weight.detach().numpy()[:, :, 0, 0]
        b1 = self.conv.bias.detach().numpy()
        W2 = self.fc.weight.detach().numpy()
        h = np.einsum("ck,nkij->ncij", W1, A) + b1[:, None, None]
        h_ref = np.broadcast_to(b1[:, None, None], h.shape[1:])[None]
        g_u = np.broadcast_to((W2[classes] / (A.shape[2] * A.shape[3]))[:, :, None, None], h.shape)
        g_h = g_u * _np_relu_multiplier(h, h_ref) + g_u  # ReLU branch + skip branch
        return np.einsum("ck,ncij->nkij", W1, g_h)


def _acts(seed: int, n: int = 3, k: int = 6, hw: int = 7, relu: bool = False) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((n, k, hw, hw))
    return np.maximum(a, 0) if relu else a


HAND_TARGETS = np.array([-1, 2, 0])


@pytest.mark.parametrize("kernel,stride,padded", [(2, 2, False), (3, 2, False), (2, 2, True)])
@pytest.mark.parametrize("method", ["captum", "autograd"])
def test_hand_head_conv_relu_maxpool_matches_numpy(kernel, stride, padded, method):
    head = _small_head(kernel, stride, padded_conv=padded)
    A = _acts(5)  # negative values; the conv bias makes every reference after it non-zero
    ref = liftcam_reference(head, A, HAND_TARGETS, (14, 14), method=method)
    m = _np_sequential_deeplift(head, A, ref["classes"])
    assert _rel(ref["multipliers"], m) <= 1e-12
    assert _rel(ref["coefficients"], (A * m).reshape(3, 6, -1).sum(2)) <= 1e-12
    assert _rel_completeness(ref) <= COMPLETENESS_TOL


@pytest.mark.parametrize("method", ["captum", "autograd"])
def test_hand_head_maxpool_first_matches_numpy(method):
    head = _small_head(2, 2, conv_first=False, seed=1)
    A = _acts(6, relu=True)  # ReLU'd activations with exact zeros, as at VGG's features.29
    ref = liftcam_reference(head, A, HAND_TARGETS, (14, 14), method=method)
    m = _np_sequential_deeplift(head, A, ref["classes"])
    assert _rel(ref["multipliers"], m) <= 1e-12
    assert _rel_completeness(ref) <= COMPLETENESS_TOL


@pytest.mark.parametrize("method", ["captum", "autograd"])
def test_skip_head_matches_numpy(method):
    head = _SkipHead()
    A = _acts(7)
    ref = liftcam_reference(head, A, HAND_TARGETS, (14, 14), method=method)
    m = head.numpy_multipliers(A, ref["classes"])
    assert _rel(ref["multipliers"], m) <= 1e-12
    assert _rel_completeness(ref) <= COMPLETENESS_TOL


# ---------------------------------------------------------------------------------------------
# Each captum correction is necessary
# ---------------------------------------------------------------------------------------------


def test_bug1_rule_module_fed_by_rule_module_needs_clone_fix():
    """ReLU → MaxPool with a non-zero reference: stock captum drops the max-pool rule (the ReLU's
    rule is applied to the plain max-pool gradient)."""
    A = _acts(5)
    # (a) reference varying inside pool windows (padded 3x3 conv before the ReLU): completeness breaks
    head = _small_head(2, 2, padded_conv=True)
    good = liftcam_reference(head, A, HAND_TARGETS, (14, 14))
    bad = liftcam_reference(head, A, HAND_TARGETS, (14, 14), clone_fix=False)
    m = _np_sequential_deeplift(head, A, good["classes"])
    assert _rel(good["multipliers"], m) <= 1e-12
    assert _rel_completeness(good) <= COMPLETENESS_TOL
    assert _rel_completeness(bad) > 1e-3  # measured 2e-2
    assert _rel(bad["coefficients"], good["coefficients"]) > 1e-2
    # captum's own convergence delta reports the same failure
    assert np.allclose(bad["convergence_delta"], bad["completeness_error"], rtol=0, atol=1e-12)
    # (b) spatially constant reference at the pool (1x1 conv): completeness *survives* the bug
    # (the plain gradient routed at argmax x also sums to y − y'), but φ and m are still wrong
    head = _small_head(2, 2)
    good = liftcam_reference(head, A, HAND_TARGETS, (14, 14))
    bad = liftcam_reference(head, A, HAND_TARGETS, (14, 14), clone_fix=False)
    m = _np_sequential_deeplift(head, A, good["classes"])
    assert _rel_completeness(bad) <= COMPLETENESS_TOL
    assert _rel(bad["coefficients"], good["coefficients"]) > 1e-2
    assert _rel(bad["multipliers"], m) > 1e-2 and _rel(good["multipliers"], m) <= 1e-12


def test_bug2_rule_module_input_feeding_a_branch_needs_clone_fix():
    """ReLU whose input also feeds a skip connection: stock captum drops the skip's gradient."""
    head = _SkipHead()
    A = _acts(7)
    good = liftcam_reference(head, A, HAND_TARGETS, (14, 14))
    bad = liftcam_reference(head, A, HAND_TARGETS, (14, 14), clone_fix=False)
    assert _rel_completeness(good) <= COMPLETENESS_TOL
    assert _rel_completeness(bad) > 1e-2
    assert _rel(bad["multipliers"], head.numpy_multipliers(A, good["classes"])) > 1e-1


def test_bug3_overlapping_maxpool_needs_scatter_add():
    """MaxPool 3/2: captum's max_unpool overwrites contributions routed to the same input."""
    head = _small_head(3, 2)
    A = _acts(5)
    good = liftcam_reference(head, A, HAND_TARGETS, (14, 14))
    bad = liftcam_reference(head, A, HAND_TARGETS, (14, 14), patch_maxpool=False)
    assert _rel_completeness(good) <= COMPLETENESS_TOL
    assert _rel_completeness(bad) > 1e-3
    # non-overlapping windows: captum's stock rule is fine for the coefficients
    head22 = _small_head(2, 2)
    stock = liftcam_reference(head22, A, HAND_TARGETS, (14, 14), patch_maxpool=False)
    assert _rel_completeness(stock) <= COMPLETENESS_TOL


def test_bug4_maxpool_fallback_uses_sample_zero_gradient():
    """Where |x − x'| < eps captum's max-pool rule falls back to ``grad_input[0]`` -- sample 0's
    gradient -- for every sample. Coefficients survive (A = 0 there), multipliers do not."""
    head = _small_head(2, 2, conv_first=False, seed=1)
    A = _acts(6, relu=True)
    targets = np.array([0, 1, 3])
    good = liftcam_reference(head, A, targets, (14, 14))
    bad = liftcam_reference(head, A, targets, (14, 14), patch_maxpool=False)
    m = _np_sequential_deeplift(head, A, good["classes"])
    assert _rel(good["multipliers"], m) <= 1e-12
    assert _rel(bad["coefficients"], good["coefficients"]) <= 1e-12
    assert _rel(bad["multipliers"][0], m[0]) <= 1e-12  # sample 0 is right
    wrong = np.abs(bad["multipliers"][1:] - m[1:]) > 1e-9
    assert wrong.any() and np.all(A[1:][wrong] == 0)  # others wrong exactly where A = 0
    # one image at a time, stock captum is right
    one = liftcam_reference(head, A[1:2], targets[1:2], (14, 14), patch_maxpool=False)
    assert _rel(one["multipliers"][0], m[1]) <= 1e-12


def test_fixes_are_noops_on_official_heads():
    """On VGG16's head (MaxPool on A ≥ 0, ReLUs fed by Linears) stock captum with one image equals
    the corrected reference: none of the bug patterns occurs there."""
    _, _, head, _, A, targets = _case("vgg16", "features.29", 64)
    ref, _ = _refs("vgg16", "features.29", 64)
    stock = liftcam_reference(head, A[:1], targets[:1], (64, 64), clone_fix=False, patch_maxpool=False)
    assert _rel(stock["multipliers"][0], ref["multipliers"][0]) <= 1e-12


def test_captum_table_restored():
    from captum.attr._core import deep_lift

    before = dict(deep_lift.SUPPORTED_NON_LINEAR)
    with captum_rules() as table:
        assert table[nn.ReLU6] is deep_lift.nonlinear and nn.Hardswish in table
    assert deep_lift.SUPPORTED_NON_LINEAR == before


# ---------------------------------------------------------------------------------------------
# Real MobileNetV2 (../shared)
# ---------------------------------------------------------------------------------------------

_REAL_IMAGES = ("n01440764_tench.JPEG", "n01530575_brambling.JPEG", "n02007558_flamingo.JPEG")


def _preprocess(path) -> np.ndarray:
    """Shorter side 256 (bilinear), centre crop 224, /255, ImageNet mean/std, CHW float32."""
    from PIL import Image

    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((round(w * s), round(h * s)), Image.BILINEAR)
    w, h = im.size
    left, top = (w - 224) // 2, (h - 224) // 2
    a = np.asarray(im.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    a = (a - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return a.transpose(2, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def real_mobilenet():
    root = shared_dir()
    state = root / REAL_MOBILENET_V2_STATE_DICT
    sample = root / "images" / "imagenet-sample"
    if not state.is_file() or not (sample / "labels.csv").is_file():
        pytest.skip(f"shared data not found under {root} (set ONNXCAM_SHARED to the shared/ folder)")
    labels = {r["file"]: int(r["class_index"]) for r in csv.DictReader(open(sample / "labels.csv"))}
    x = torch.from_numpy(np.stack([_preprocess(sample / f) for f in _REAL_IMAGES]))
    return load_real_mobilenet_v2(state), x, np.array([labels[f] for f in _REAL_IMAGES]), root


def test_real_mobilenet_v2_matches_onnx(real_mobilenet):
    model, x, labels, root = real_mobilenet
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        y = model(x).numpy()
    assert np.array_equal(y.argmax(1), labels)
    onnx_path = root / "models" / "mobilenetv2_imagenet_fp32.onnx"
    if onnx_path.is_file():
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        y_ort = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert np.max(np.abs(y - y_ort)) <= 1e-4


@pytest.mark.parametrize("cut", ["features.14", "features.18"])
def test_real_mobilenet_v2_liftcam(real_mobilenet, cut):
    model, x, labels, _ = real_mobilenet
    body, head = split_model("mobilenet_v2", model, cut)
    with torch.no_grad():
        A = body(x)
        assert torch.equal(head(A), model(x))
    ref = liftcam_reference(head, A.numpy(), None, (224, 224))
    ref_ag = liftcam_reference(head, A.numpy(), None, (224, 224), method="autograd")
    assert np.array_equal(ref["classes"], labels)
    assert _rel_completeness(ref) <= COMPLETENESS_TOL
    assert _rel(ref_ag["coefficients"], ref["coefficients"]) <= 1e-10
    assert np.max(np.abs(ref_ag["heatmap"] - ref["heatmap"])) <= 1e-10
    assert np.all(np.ptp(ref["map"].reshape(len(labels), -1), axis=1) > 0)
