"""Rescale rules: ``m = g ⊙ (f(z) − f(z'))/(z − z')`` against float64 torch, with a non-zero reference.

The head is ``A → Add(c) → f → classifier``, so ``z = A + c``, ``z' = c`` (per channel) and the
incoming multiplier ``g`` is the classifier's gradient (probed independently).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")
F = torch.nn.functional

from tests.exporters.rules.probe import classifier_gradient, exported_multipliers, probe_model  # noqa: E402

SHAPE = (1, 3, 5, 6)
RNG = np.random.default_rng(11)
BIAS = np.array([-1.3, 0.4, 2.2], np.float32).reshape(1, 3, 1, 1)
SLOPE = np.array([0.1, -0.3, 0.25], np.float32).reshape(3, 1, 1)


def hardsigmoid(z, alpha=0.2, beta=0.5):
    return torch.clamp(alpha * z + beta, 0, 1)


# op type, attributes, extra initializers (name -> array), float64 reference f, opset
CASES = [
    ("Relu", {}, {}, torch.relu, 17),
    ("LeakyRelu", {"alpha": 0.1}, {}, lambda z: F.leaky_relu(z, 0.1), 17),
    ("PRelu", {}, {"slope": SLOPE}, lambda z: torch.where(z > 0, z, torch.from_numpy(SLOPE).double() * z), 17),
    ("Clip", {}, {"lo": np.float32(-1.0), "hi": np.float32(2.0)}, lambda z: torch.clamp(z, -1, 2), 17),
    ("Elu", {"alpha": 0.7}, {}, lambda z: F.elu(z, 0.7), 17),
    ("Selu", {}, {}, F.selu, 17),
    ("Celu", {"alpha": 1.3}, {}, lambda z: F.celu(z, 1.3), 17),
    ("Sigmoid", {}, {}, torch.sigmoid, 17),
    ("HardSigmoid", {}, {}, hardsigmoid, 17),
    ("HardSwish", {}, {}, F.hardswish, 17),
    ("Tanh", {}, {}, torch.tanh, 17),
    ("Softplus", {}, {}, F.softplus, 17),
    ("Softsign", {}, {}, F.softsign, 17),
    ("Erf", {}, {}, torch.erf, 17),
    ("Mish", {}, {}, F.mish, 18),
    ("Gelu", {}, {}, F.gelu, 20),
    ("Gelu", {"approximate": "tanh"}, {}, lambda z: F.gelu(z, approximate="tanh"), 20),
]


def rescale_reference(f, z: np.ndarray, z_ref: np.ndarray) -> np.ndarray:
    """Exact secant in float64 (derivative where |Δz| < 1e-10)."""
    zt = torch.from_numpy(z.astype(np.float64)).requires_grad_(True)
    zr = torch.from_numpy(np.broadcast_to(z_ref, z.shape).astype(np.float64))
    dz = zt.detach() - zr
    secant = (f(zt.detach()) - f(zr)) / torch.where(dz.abs() < 1e-10, torch.ones_like(dz), dz)
    grad = torch.autograd.grad(f(zt).sum(), zt)[0]
    return torch.where(dz.abs() < 1e-10, grad, secant).numpy()


def activations(n: int) -> np.ndarray:
    """Random activations, some of them very close to the reference (exercises the fallback band)."""
    a = RNG.standard_normal((n, *SHAPE[1:])) * 2.0
    a.reshape(-1)[::7] *= 1e-3
    a.reshape(-1)[::11] *= 1e-7
    return a.astype(np.float32)


@pytest.mark.parametrize("op,attrs,extra,f,opset", CASES, ids=[c[0] + ("_tanh" if c[1].get("approximate") else "") for c in CASES])
def test_rescale_rule(op, attrs, extra, f, opset):
    inputs = ["z"] + list(extra)
    nodes = [helper.make_node("Add", ["A", "bias"], ["z"]), helper.make_node(op, inputs, ["out"], **attrs)]
    inits = [numpy_helper.from_array(BIAS, "bias")] + [numpy_helper.from_array(np.asarray(v), k) for k, v in extra.items()]
    model = probe_model(nodes, SHAPE, "out", inits, opset=opset)
    a = activations(4)
    classes = np.array([0, 1, 2, 1])
    m, phi = exported_multipliers(model, a, classes)
    slope = rescale_reference(f, a + BIAS, BIAS)
    for i, cls in enumerate(classes):
        expected = classifier_gradient(model, SHAPE, cls) * slope[i]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(m[i], expected, rtol=0, atol=1e-5 * scale, err_msg=op)
        # completeness of the single rule: Σ φ = g·(f(z) − f(z')) summed
        np.testing.assert_allclose(phi[i].sum(), (expected * a[i]).sum(), rtol=1e-4, atol=1e-6 * scale)


def test_silu_chain_equals_rescale_of_whole_function():
    """SiLU exported as Mul(z, Sigmoid(z)): Shapley product ∘ Rescale(σ) = Rescale(SiLU) exactly (ALGORITHM §3)."""
    nodes = [helper.make_node("Add", ["A", "bias"], ["z"]), helper.make_node("Sigmoid", ["z"], ["s"]),
             helper.make_node("Mul", ["z", "s"], ["out"])]
    model = probe_model(nodes, SHAPE, "out", [numpy_helper.from_array(BIAS, "bias")])
    a = activations(3)
    classes = np.array([2, 0, 1])
    m, _ = exported_multipliers(model, a, classes)
    slope = rescale_reference(F.silu, a + BIAS, BIAS)
    for i, cls in enumerate(classes):
        expected = classifier_gradient(model, SHAPE, cls) * slope[i]
        np.testing.assert_allclose(m[i], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_gelu_erf_pattern_equals_gelu():
    """GELU exported as x·0.5·(1 + Erf(x/√2)) gets the multiplier of the Rescale rule on GELU."""
    nodes = [
        helper.make_node("Add", ["A", "bias"], ["z"]),
        helper.make_node("Div", ["z", "sqrt2"], ["zs"]),
        helper.make_node("Erf", ["zs"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["z", "e1"], ["ze"]),
        helper.make_node("Mul", ["ze", "half"], ["out"]),
    ]
    inits = [numpy_helper.from_array(BIAS, "bias"), numpy_helper.from_array(np.float32(math.sqrt(2)), "sqrt2"),
             numpy_helper.from_array(np.float32(1), "one"), numpy_helper.from_array(np.float32(0.5), "half")]
    model = probe_model(nodes, SHAPE, "out", inits)
    a = activations(2)
    m, _ = exported_multipliers(model, a, np.array([1, 2]))
    slope = rescale_reference(F.gelu, a + BIAS, BIAS)
    for i, cls in enumerate([1, 2]):
        expected = classifier_gradient(model, SHAPE, cls) * slope[i]
        np.testing.assert_allclose(m[i], expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_product_of_two_varying_tensors_is_complete():
    """Squeeze-and-excitation gate: x · σ(W·GAP(x)); the Shapley product keeps Σφ = y_c(A) − y_c(0) exact."""
    w = RNG.standard_normal((3, 3, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Add", ["A", "bias"], ["z"]),
        helper.make_node("GlobalAveragePool", ["z"], ["p"]),
        helper.make_node("Conv", ["p", "w"], ["q"]),
        helper.make_node("Sigmoid", ["q"], ["gate"]),
        helper.make_node("Mul", ["z", "gate"], ["out"]),
    ]
    model = probe_model(nodes, SHAPE, "out", [numpy_helper.from_array(BIAS, "bias"), numpy_helper.from_array(w, "w")])
    a = activations(4)
    classes = np.array([0, 1, 2, 0])
    _, phi = exported_multipliers(model, a, classes)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = sess.run(["logits"], {"x": a})[0].astype(np.float64)
    zero = sess.run(["logits"], {"x": np.zeros((1, *SHAPE[1:]), np.float32)})[0][0].astype(np.float64)
    delta = logits[np.arange(4), classes] - zero[classes]
    np.testing.assert_allclose(phi.sum(axis=1), delta, rtol=1e-5, atol=1e-6)
