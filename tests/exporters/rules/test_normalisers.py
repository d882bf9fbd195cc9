"""Softmax / LogSoftmax inside the head: the path-averaged Jacobian (ALGORITHM.md §3).

Softmax is checked against the float64 reference ``tests/reference/functional.py``
(``softmax_rule="path"``, adaptive quadrature to 1e-13, written independently). In these heads the
Softmax input is affine in ``A`` and everything after it is linear, so the path rule's multiplier at
``A`` is also the integrated gradient ``∫₀¹ ∇_A y_c(t·A) dt``: float64 torch autograd at many
Gauss–Legendre nodes gives a second, rule-free reference (used for LogSoftmax, which the functional
reference has no rule for). Plus completeness, and the plain Jacobian in gradient mode.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import onnxcam  # noqa: E402
from onnxcam.exporters.rules.normalisers import quadrature  # noqa: E402
from tests.reference.functional import deeplift_reference  # noqa: E402

HW = 6


class AttentionHead(nn.Module):
    """``features`` (the target) → 1×1 convs → softmax over space (attention pooling: the weights times the
    values is a product of two varying tensors, Shapley rule) or along channels, → linear classifier."""

    def __init__(self, kind: str, scale: float):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.ReLU())
        self.attn = nn.Conv2d(8, 1, 1)
        self.value = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 4)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.6
        self.kind, self.scale = kind, scale

    def forward(self, x):
        a = self.features(x)
        n = a.shape[0]
        if self.kind == "spatial":  # softmax over the h·w positions, then a weighted sum
            w = torch.softmax(self.scale * self.attn(a).reshape(n, 1, -1), dim=2)
            pooled = (self.value(a).reshape(n, 6, -1) * w).sum(2)
        elif self.kind == "channel":  # softmax along channels (axis 1 of a 4-D tensor)
            pooled = (torch.softmax(self.scale * self.value(a), dim=1) * 3.0).mean((2, 3))
        else:  # log-softmax along channels
            pooled = F.log_softmax(self.scale * self.value(a), dim=1).mean((2, 3))
        return self.fc(pooled)


def _images(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, HW, HW, generator=torch.Generator().manual_seed(seed)) * 1.5


def _run(model, x: np.ndarray, target=None) -> dict:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    n = x.shape[0]
    t = np.full(n, -1, np.int64) if target is None else np.asarray(target, np.int64)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x, "onnxcam_target": t})))


def _with_target(net, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    handle = net.features.register_forward_hook(lambda m, i, o: a)
    try:
        return net(x)
    finally:
        handle.remove()


def integrated_gradient(net, A: np.ndarray, classes: np.ndarray, panels: int = 64, points: int = 16) -> np.ndarray:
    """``∫₀¹ ∇_A y_c(t·A) dt`` in float64 (composite Gauss–Legendre, 1024 nodes)."""
    net = net.double()
    x, w = np.polynomial.legendre.leggauss(points)
    total = np.zeros(A.shape)
    dummy = torch.zeros(A.shape[0], 3, HW, HW, dtype=torch.float64)
    rows = torch.arange(A.shape[0])
    for p in range(panels):
        for tq, wq in zip((p + (x + 1) / 2) / panels, w / 2 / panels):
            a = (torch.from_numpy(A.astype(np.float64)) * float(tq)).requires_grad_(True)
            y = _with_target(net, a, dummy)
            total += wq * torch.autograd.grad(y[rows, torch.from_numpy(classes)].sum(), a)[0].numpy()
    net.float()
    return total


def test_quadrature_integrates_polynomials_exactly():
    t, w = quadrature()
    assert np.all((t > 0) & (t < 1)) and abs(w.sum() - 1) < 1e-14
    for degree in range(0, 31):
        assert abs((w * t**degree).sum() - 1 / (degree + 1)) < 1e-14


@pytest.mark.parametrize("kind,scale", [("spatial", 1.0), ("spatial", 4.0), ("channel", 2.5), ("log", 2.0)])
def test_softmax_inside_head_matches_float64_reference(kind, scale):
    net = AttentionHead(kind, scale).eval()
    x = _images(5)
    cam = onnxcam.export_torch(net, x[:1], net.features, raw=True)
    types = {n.op_type for n in cam.graph.node}
    assert ("LogSoftmax" if kind == "log" else "Softmax") in types
    targets = np.array([-1, 0, 1, 2, 3])
    out = _run(cam, x.numpy(), targets)
    A = out["onnxcam_activations"]
    classes = out["onnxcam_class"]
    references = []
    if kind != "spatial":  # softmax input affine in A, linear after it: the integrated gradient applies
        references.append(integrated_gradient(net, A, classes))
    if kind != "log":
        ref = deeplift_reference(net, "features", A, classes, (HW, HW), softmax_rule="path")
        assert ref["rules"] == ({"softmax": 1, "mul": 1} if kind == "spatial" else {"softmax": 1})
        np.testing.assert_array_equal(classes, ref["classes"])
        references.append(ref["multipliers"])
    if len(references) == 2:  # the two references agree with each other
        np.testing.assert_allclose(references[0], references[1], atol=1e-9 * np.abs(references[1]).max())
    m = out["onnxcam_multipliers"].astype(np.float64)
    for reference in references:
        assert np.abs(m - reference).max() <= 1e-5 * np.abs(reference).max()
        rcoef = (reference * A).sum((2, 3))
        rel = np.abs(out["onnxcam_coefficients"] - rcoef).max() / np.abs(rcoef).max()
        assert rel <= 1e-5, rel
    # completeness of the graph's own coefficients (the path rule is complete; the diagonal reading is not)
    with torch.no_grad():
        y_zero = _with_target(net, torch.zeros(A.shape), x)[np.arange(5), classes].numpy().astype(np.float64)
    y = out["onnxcam_logits"][np.arange(5), classes].astype(np.float64)
    gap = np.abs(out["onnxcam_coefficients"].astype(np.float64).sum(1) - (y - y_zero)).max()
    assert gap <= 1e-5 * max(1.0, np.abs(y).max()), gap


def test_path_rule_is_not_captums_diagonal_reading():
    net = AttentionHead("channel", 2.5).eval()
    x = _images(3)
    cam = onnxcam.export_torch(net, x[:1], net.features, raw=True)
    out = _run(cam, x.numpy())
    diagonal = deeplift_reference(net, "features", out["onnxcam_activations"], out["onnxcam_class"], (HW, HW),
                                  softmax_rule="diagonal")
    rel = np.abs(out["onnxcam_coefficients"] - diagonal["coefficients"]).max() / np.abs(diagonal["coefficients"]).max()
    assert rel > 1e-3  # the two readings really differ on this head, and the graph follows the path rule


@pytest.mark.parametrize("kind", ["spatial", "channel", "log"])
def test_gradient_mode_is_the_jacobian(kind):
    net = AttentionHead(kind, 2.0).eval()
    x = _images(3)
    cam = onnxcam.export_torch(net, x[:1], net.features, method="gradcam", raw=True)
    out = _run(cam, x.numpy(), [0, 2, 3])
    a = torch.from_numpy(out["onnxcam_activations"]).double().requires_grad_(True)
    y = _with_target(net.double(), a, x.double())
    grad = torch.autograd.grad(y[torch.arange(3), torch.tensor([0, 2, 3])].sum(), a)[0].numpy()
    np.testing.assert_allclose(out["onnxcam_multipliers"], grad, atol=1e-5 * np.abs(grad).max())
