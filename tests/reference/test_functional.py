"""Self-tests of the generic, captum-free float64 reference ``tests/reference/functional.py``.

* it equals the captum path (``liftcam_reference`` on the hand-built heads of ``models.split_model``)
  to ~1e-12 wherever captum's rules cover the head (ResNet-50 ``layer4``, ResNet-18 ``layer3``,
  MobileNetV2 ``features.14``/``features.18``, SqueezeNet ``features.12``/``features.7`` (overlapping
  ceil-mode max-pool), VGG16 ``features.29`` at 224 px);
* completeness ``Σφ = y_c(A) − y_c(0)`` holds to ~1e-12 on every family of the coverage matrix;
* each rule on small hand-built models: Shapley product (SE gates, ``x·sigmoid(x)`` equals ``silu``),
  functional / in-place activations, overlapping max-pools, adaptive max-pool, Softmax (both readings),
  strict errors for operations without a rule, the separation check;
* ``make_classifier`` reproduces ``models.make_model`` (``recipe="make_model"``) and its default recipe
  gives image-dependent, fp32-well-conditioned activations on the deep families.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from .functional import NoRuleError, deeplift_reference, make_classifier, prepare_float64
from .liftcam import liftcam_reference
from .models import make_model, split_model

COMPLETENESS_TOL = 1e-12  # relative to max(|Δ|, |y_c(A)|, |y_c(0)|, max_k |φ_k|)
AGREEMENT_TOL = 1e-12  # relative to the largest value of the compared quantity


def _images(n: int, hw: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def _activations(model: nn.Module, layer: str, x: torch.Tensor) -> np.ndarray:
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0].numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _completeness(ref: dict) -> float:
    n = len(ref["classes"])
    y_c = ref["logits"][np.arange(n), ref["classes"]]
    y0 = ref["logit_at_zero"]
    # The rounding floor of Σφ grows with its largest term (|φ_k| reaches 30x the logits on EfficientNet).
    scale = np.maximum.reduce([np.abs(y_c - y0), np.abs(y_c), np.abs(y0), np.abs(ref["coefficients"]).max(1),
                               np.full(n, 1e-300)])
    return float(np.max(np.abs(ref["completeness_error"]) / scale))


# ---------------------------------------------------------------------------------------------
# Equal to the captum path
# ---------------------------------------------------------------------------------------------

CAPTUM_CASES = [
    ("resnet50", "layer4", 64),
    ("resnet18", "layer3", 64),
    ("mobilenet_v2", "features.14", 64),
    ("mobilenet_v2", "features.18", 64),
    ("squeezenet1_1", "features.12", 64),
    ("squeezenet1_1", "features.7", 64),
    pytest.param("vgg16", "features.29", 224, marks=pytest.mark.slow),
]


@functools.lru_cache(maxsize=2)
def _captum_model(name: str) -> nn.Module:
    return make_model(name, seed=0)


@pytest.mark.parametrize("name,layer,hw", CAPTUM_CASES)
def test_equals_captum_path(name, layer, hw):
    pytest.importorskip("captum")
    model = _captum_model(name)
    _, head = split_model(name, model, layer)
    A = _activations(model, layer, _images(3, hw))
    model64 = prepare_float64(model)
    for target in (None, np.array([3, -1, 999])):
        ref = liftcam_reference(head, A, target, (hw, hw))
        new = deeplift_reference(model64, layer, A, target, (hw, hw))
        np.testing.assert_array_equal(new["classes"], ref["classes"])
        for key in ("logits", "multipliers", "coefficients", "map", "heatmap", "logit_at_zero"):
            assert _rel(new[key], ref[key]) <= AGREEMENT_TOL, (key, _rel(new[key], ref[key]))
        assert _completeness(new) <= COMPLETENESS_TOL


# ---------------------------------------------------------------------------------------------
# Completeness on every family of the coverage matrix
# ---------------------------------------------------------------------------------------------

# (family, layers): the last feature map and an earlier block boundary; 64 px (the float64 reference
# needs no ONNX export, so AlexNet/VGG run at 64 px too).
FAMILY_CASES = [
    ("alexnet", ("features.12", "features.5")),
    ("vgg11_bn", ("features.27", "features.14")),
    ("vgg16", ("features.29", "features.16")),
    ("resnet18", ("layer4", "layer2")),
    ("resnet50", ("layer4", "layer2")),
    ("resnext50_32x4d", ("layer3",)),
    ("wide_resnet50_2", ("layer3",)),
    ("densenet121", ("features.norm5", "features.transition2")),
    ("squeezenet1_1", ("features.12", "features.4")),
    ("mobilenet_v2", ("features.18", "features.7")),
    ("mobilenet_v3_small", ("features.12", "features.4")),
    ("mobilenet_v3_large", ("features.16", "features.6")),
    ("efficientnet_b0", ("features.8", "features.4")),
    ("shufflenet_v2_x1_0", ("conv5", "stage3")),
    ("mnasnet1_0", ("layers.16", "layers.10")),
    ("regnet_y_400mf", ("trunk_output.block4", "trunk_output.block2")),
    ("googlenet", ("inception5b", "inception3b")),
]
_FAST = {"squeezenet1_1", "mobilenet_v3_small", "googlenet", "shufflenet_v2_x1_0", "efficientnet_b0", "resnet18"}

#: Rules the float64 reference must apply in the head (a subset; proves the interception works).
EXPECTED_RULES = {
    ("alexnet", "features.5"): {"relu", "max_pool2d"},
    ("densenet121", "features.norm5"): {"relu"},  # the functional F.relu(inplace=True) after features
    ("mobilenet_v3_small", "features.4"): {"hardswish", "hardsigmoid", "relu", "mul"},
    ("efficientnet_b0", "features.4"): {"silu", "sigmoid", "mul"},
    ("regnet_y_400mf", "trunk_output.block2"): {"relu", "sigmoid", "mul"},
    ("googlenet", "inception3b"): {"relu", "max_pool2d"},
    ("squeezenet1_1", "features.4"): {"relu", "max_pool2d"},
}


@pytest.mark.parametrize("name,layers", [
    pytest.param(n, ls, marks=() if n in _FAST else pytest.mark.slow) for n, ls in FAMILY_CASES
], ids=[n for n, _ in FAMILY_CASES])
def test_completeness_every_family(name, layers):
    model = make_classifier(name, seed=0)
    model64 = prepare_float64(model)
    x = _images(2, 64)
    for layer in layers:
        A = _activations(model, layer, x)
        for target in (None, np.array([5, 999])):
            ref = deeplift_reference(model64, layer, A, target, (64, 64))
            assert _completeness(ref) <= COMPLETENESS_TOL, (layer, _completeness(ref), ref["rules"])
            assert np.isfinite(ref["heatmap"]).all()
        assert EXPECTED_RULES.get((name, layer), set()) <= set(ref["rules"]), ref["rules"]


# ---------------------------------------------------------------------------------------------
# Rules on small models
# ---------------------------------------------------------------------------------------------


class Net(nn.Module):
    """``features`` (the target layer) then ``head_fn``."""

    def __init__(self, head_fn, k: int = 6, classes: int = 5, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.BatchNorm2d(k))
        self.conv = nn.Conv2d(k, k, 3, padding=1)
        self.fc = nn.Linear(k, classes)
        self.se1, self.se2 = nn.Linear(k, 3), nn.Linear(3, k)
        self.head_fn = head_fn
        with torch.no_grad():
            self.features[1].running_mean.normal_(0, 0.3)

    def forward(self, x):
        a = self.features(x)
        z = self.head_fn(self, a)
        return self.fc(z.mean((2, 3)))


def _ref(net: Net, n: int = 3, hw: int = 8, **kw) -> tuple[dict, np.ndarray]:
    A = _activations(net.eval(), "features", _images(n, hw, seed=7))
    return deeplift_reference(net, "features", A, None, (hw, hw), **kw), A


def _se(net, a):
    s = torch.sigmoid(net.se2(F.relu(net.se1(a.mean((2, 3))))))[:, :, None, None]
    return F.relu(net.conv(a * s))


def test_shapley_product_is_complete_and_exact():
    ref, _ = _ref(Net(_se))
    assert ref["rules"] == {"relu": 2, "sigmoid": 1, "mul": 1}
    assert _completeness(ref) <= COMPLETENESS_TOL


def test_shapley_rule_values():
    """Head ``y = Σ_ij a·g(a)`` with ``g`` linear in ``a``: m_a from both factors, by hand."""

    class P(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Identity()
            self.w = nn.Parameter(torch.tensor([[0.5, -1.0]]), requires_grad=False)

        def forward(self, x):
            a = self.features(x)  # [N, 2, 1, 1]
            b = 2.0 * a + 1.0  # b' = 1 at a' = 0
            return (a * b).flatten(1) @ self.w.t()

    A = np.array([[[[1.5]], [[-2.0]]]])
    ref = deeplift_reference(P(), "features", A, 0, (1, 1), input_channels=2, check_separation=False)
    a = A.reshape(2)
    b, b_ref, a_ref = 2 * a + 1, np.ones(2), np.zeros(2)
    w = np.array([0.5, -1.0])
    expected = w * ((b + b_ref) / 2 + 2.0 * (a + a_ref) / 2)
    np.testing.assert_allclose(ref["multipliers"].reshape(2), expected, rtol=1e-14)
    assert _completeness(ref) <= COMPLETENESS_TOL


def test_x_times_sigmoid_equals_silu():
    """Composition is exact: the product rule on ``x·σ(x)`` gives the Rescale secant of SiLU."""
    ref_prod, _ = _ref(Net(lambda n, a: n.conv(a) * torch.sigmoid(n.conv(a))))
    ref_silu, _ = _ref(Net(lambda n, a: F.silu(n.conv(a))))
    assert ref_prod["rules"] == {"sigmoid": 1, "mul": 1} and ref_silu["rules"] == {"silu": 1}
    assert _rel(ref_prod["multipliers"], ref_silu["multipliers"]) <= 1e-12


SPELLINGS = {  # name: (head, the same head spelled with an nn module / plain function, rule)
    "hardswish_functional": (lambda n, a: F.hardswish(n.conv(a)), lambda n, a: nn.Hardswish()(n.conv(a)),
                             "hardswish"),
    "hardswish_inplace": (lambda n, a: F.hardswish(n.conv(a), inplace=True),
                          lambda n, a: nn.Hardswish()(n.conv(a)), "hardswish"),
    "relu_inplace_kw": (lambda n, a: F.relu(n.conv(a), inplace=True), lambda n, a: nn.ReLU()(n.conv(a)), "relu"),
    "relu_method_inplace": (lambda n, a: n.conv(a).relu_(), lambda n, a: nn.ReLU()(n.conv(a)), "relu"),
    "relu6_module": (lambda n, a: nn.ReLU6(inplace=True)(n.conv(a)), lambda n, a: F.hardtanh(n.conv(a), 0.0, 6.0),
                     "hardtanh"),
    "sigmoid_method": (lambda n, a: n.conv(a).sigmoid(), lambda n, a: nn.Sigmoid()(n.conv(a)), "sigmoid"),
    "tanh_torch": (lambda n, a: torch.tanh(n.conv(a)), lambda n, a: nn.Tanh()(n.conv(a)), "tanh"),
    "gelu_tanh": (lambda n, a: F.gelu(n.conv(a), approximate="tanh"),
                  lambda n, a: nn.GELU(approximate="tanh")(n.conv(a)), "gelu"),
}


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_activation_spellings_agree(spelling):
    fn, base_fn, rule = SPELLINGS[spelling]
    ref, _ = _ref(Net(fn))
    base, _ = _ref(Net(base_fn))
    assert ref["rules"] == {rule: 1} and base["rules"] == {rule: 1}
    assert _completeness(ref) <= COMPLETENESS_TOL
    assert _rel(ref["multipliers"], base["multipliers"]) == 0.0


@pytest.mark.parametrize("pool,module", [
    (lambda z: F.max_pool2d(z, 3, 1, 1, ceil_mode=True), nn.MaxPool2d(3, 1, 1, ceil_mode=True)),  # GoogLeNet
    (lambda z: F.max_pool2d(z, 3, 2), nn.MaxPool2d(3, 2)),  # AlexNet (overlapping)
    (lambda z: F.max_pool2d(z, kernel_size=2), nn.MaxPool2d(2)),  # VGG (disjoint)
    (lambda z: F.adaptive_max_pool2d(z, 3), None),  # adaptive, 8 -> 3: overlapping windows
], ids=["3/1-ceil", "3/2", "2/2", "adaptive"])
def test_maxpool_rule(pool, module):
    """Complete, and equal to ``liftcam_reference(method="autograd")`` (module hooks + ``maxpool_multiplier``)."""
    net = Net(lambda n, a: pool(F.relu(n.conv(a)) - 0.3))
    ref, A = _ref(net)
    assert sum(v for k, v in ref["rules"].items() if "max_pool" in k) == 1
    assert _completeness(ref) <= COMPLETENESS_TOL
    if module is not None:
        head = nn.Sequential(net.conv, nn.ReLU(), _Shift(-0.3), module, _MeanFc(net.fc))
        expected = liftcam_reference(head, A, None, (8, 8), method="autograd")
        assert _rel(ref["multipliers"], expected["multipliers"]) <= AGREEMENT_TOL


class _Shift(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x + self.c


class _MeanFc(nn.Module):
    def __init__(self, fc):
        super().__init__()
        self.fc = fc

    def forward(self, x):
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("rule", ["path", "diagonal"])
def test_softmax_inside_head(rule):
    """Softmax along channels inside the head (attention-like), both readings of the Rescale rule."""
    net = Net(lambda n, a: n.conv(a) * 3.0 + torch.softmax(n.conv(a) * 4.0, dim=1) * 5.0)
    ref, _ = _ref(net, softmax_rule=rule)
    assert ref["rules"] == {"softmax": 1}
    assert _completeness(ref) <= COMPLETENESS_TOL
    other, _ = _ref(net, softmax_rule="diagonal" if rule == "path" else "path")
    assert _rel(ref["multipliers"], other["multipliers"]) > 1e-6  # the two readings really differ


@pytest.mark.parametrize("head_fn,what", [
    (lambda n, a: n.conv(a) / (n.conv(a).abs() + 1), "abs"),
    (lambda n, a: F.layer_norm(n.conv(a), [8, 8]), "layer_norm"),
    (lambda n, a: torch.exp(n.conv(a)), "exp"),
])
def test_strict_raises_without_rule(head_fn, what):
    with pytest.raises(NoRuleError, match=what):
        _ref(Net(head_fn))
    ref, _ = _ref(Net(head_fn), strict=False)
    assert ref["unclassified"]


def test_separation_check():
    class Skip(Net):
        def forward(self, x):
            a = self.features(x)
            return self.fc((self.conv(a) + x.mean(1, keepdim=True)).mean((2, 3)))

    with pytest.raises(ValueError, match="does not separate"):
        _ref(Skip(lambda n, a: a))


def test_leaves_model_alone():
    net = Net(_se).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.features.register_forward_hook(lambda m, i, o: None)
    _ref(net)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert len(net.features._forward_hooks) == 1


# ---------------------------------------------------------------------------------------------
# make_classifier
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet18"])
def test_make_classifier_reproduces_make_model(name):
    a = make_classifier(name, seed=0, recipe="make_model").state_dict()
    b = make_model(name, seed=0).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name,layer", [("mobilenet_v3_small", "features.12"), ("googlenet", "inception5b")])
def test_make_classifier_activations_depend_on_the_image(name, layer):
    """Without BatchNorm calibration these families map every image to the same ``A`` (1e-7)."""
    model = make_classifier(name, seed=0)
    A = _activations(model, layer, _images(4, 64))
    assert float(A.std(0).mean() / A.std()) > 0.1
    with torch.no_grad():
        y = model(_images(4, 64))
    assert 1.0 < float(y.std()) < 6.0 and float(y.std(0).mean()) > 0.2


# ---------------------------------------------------------------------------------------------
# Max-pool windows and ties
# ---------------------------------------------------------------------------------------------

POOL_CASES = [
    ("max_pool2d", dict(kernel_size=3, stride=1, padding=1, dilation=1, ceil_mode=True)),  # GoogLeNet
    ("max_pool2d", dict(kernel_size=3, stride=2, padding=0, dilation=1, ceil_mode=True)),  # SqueezeNet
    ("max_pool2d", dict(kernel_size=(2, 3), stride=(2, 1), padding=(1, 1), dilation=(1, 2), ceil_mode=False)),
    ("max_pool2d", dict(kernel_size=2, stride=None, padding=0, dilation=1, ceil_mode=False)),
    ("adaptive_max_pool2d", dict(output_size=(3, 5))),
    ("max_pool1d", dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)),
]


@pytest.mark.parametrize("name,args", POOL_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(POOL_CASES)])
def test_pool_windows_argmax_matches_pytorch(name, args):
    from .functional import PoolWindows

    base = getattr(F, name + "_with_indices")
    pool = PoolWindows(name, args, lambda t: base(t, **args))
    gen = torch.Generator().manual_seed(0)
    for shape in ([2, 3, 9, 11], [2, 3, 8, 8], [1, 2, 7, 13]):
        shape = shape[:3] if name.endswith("1d") else shape
        x = torch.randn(*shape, dtype=torch.float64, generator=gen)
        assert torch.equal(pool.argmax(x), base(x, **args)[1])
        ties = torch.randint(0, 3, shape, generator=gen).double()  # many exact ties: first maximum
        assert torch.equal(pool.argmax(ties), base(ties, **args)[1])


def test_pool_windows_ties_within_rounding_go_to_the_first_maximum():
    from .functional import PoolWindows

    args = dict(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    pool = PoolWindows("max_pool2d", args, lambda t: F.max_pool2d_with_indices(t, **args))
    x = torch.tensor([[[[0.8959183338593688, 0.8959183338593693], [0.35, 0.35]]]], dtype=torch.float64)
    assert int(F.max_pool2d_with_indices(x, **args)[1]) == 1  # exact comparison follows the last bit
    assert int(pool.argmax(x)) == 0  # equal to 1e-12: the first maximum
    assert int(pool.argmax(x, rtol=0)) == 1
    assert pool.ambiguous(x, 1e-12, 1e-6) == 0
    assert pool.ambiguous(x + torch.tensor([0.0, 1e-8, 0.0, 0.0], dtype=torch.float64).view(1, 1, 2, 2),
                          1e-12, 1e-6) == 1


@pytest.mark.parametrize("head_fn,linear", [
    (lambda n, a: n.conv(a) @ torch.eye(8, dtype=a.dtype), True),  # product with a constant: linear
    (lambda n, a: n.conv(a) @ n.conv(a).transpose(2, 3), False),  # attention-like: no rule
    (lambda n, a: 1.0 / (F.relu(n.conv(a)) + 1), False),  # reciprocal (__rtruediv__)
    (lambda n, a: n.conv(a) / 3.0, True),
])
def test_products_and_divisions(head_fn, linear):
    if linear:
        ref, _ = _ref(Net(head_fn))
        assert _completeness(ref) <= COMPLETENESS_TOL
    else:
        with pytest.raises(NoRuleError, match="matmul|rdiv|rtruediv"):
            _ref(Net(head_fn))
