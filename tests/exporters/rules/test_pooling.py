"""MaxPool: captum's rule with scatter-add, against the float64 torch implementation in tests/reference.

Negative inputs, a non-zero (spatially constant, so tie-heavy) reference, overlapping windows,
padding, dilation and ceil_mode.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

torch = pytest.importorskip("torch")

from tests.exporters.rules.probe import classifier_gradient, exported_multipliers, probe_model  # noqa: E402
from tests.reference.liftcam import maxpool_multiplier  # noqa: E402

SHAPE = (1, 3, 9, 8)
BIAS = np.array([-0.5, 0.3, 1.1], np.float32).reshape(1, 3, 1, 1)

# (kernel, stride, pad, dilation, ceil_mode)
CASES = [
    (2, 2, 0, 1, 0),
    (3, 2, 0, 1, 0),  # overlapping (AlexNet-style)
    (3, 1, 1, 1, 0),  # overlapping, padded (GoogLeNet-style)
    (3, 2, 1, 1, 1),  # ceil_mode
    (2, 1, 0, 2, 0),  # dilation
]


@pytest.mark.parametrize("kernel,stride,pad,dilation,ceil", CASES, ids=["2s2", "3s2_overlap", "3s1_pad", "3s2_ceil", "2s1_dil2"])
def test_max_pool_rule(kernel, stride, pad, dilation, ceil):
    node = helper.make_node("MaxPool", ["z"], ["out"], kernel_shape=[kernel, kernel], strides=[stride, stride],
                            pads=[pad] * 4, dilations=[dilation, dilation], ceil_mode=ceil)
    model = probe_model([helper.make_node("Add", ["A", "bias"], ["z"]), node], SHAPE, "out",
                        [numpy_helper.from_array(BIAS, "bias")])
    rng = np.random.default_rng(kernel * 10 + stride)
    a = rng.standard_normal((3, *SHAPE[1:])).astype(np.float32)
    a[0, :, :4, :4] = 0.0  # exactly at the reference: exercises the |x − x'| < eps fallback
    classes = np.array([0, 1, 2])
    m, phi = exported_multipliers(model, a, classes)

    module = torch.nn.MaxPool2d(kernel, stride, pad, dilation, ceil_mode=bool(ceil))
    x = torch.from_numpy((a + BIAS).astype(np.float64))
    x_ref = torch.from_numpy(BIAS.astype(np.float64)).expand(1, *SHAPE[1:]).contiguous()
    out_shape = module(x).shape
    for i, cls in enumerate(classes):
        g = torch.from_numpy(classifier_gradient(model, (1, *out_shape[1:]), cls))[None]
        expected = maxpool_multiplier(module, x[i:i + 1], x_ref, g)[0].numpy()
        scale = np.abs(expected).max()
        np.testing.assert_allclose(m[i], expected, rtol=0, atol=1e-5 * scale)
        if i > 0:  # image 0 has positions exactly at the reference, where the rule falls back to the gradient
            # Σ contributions = Σ g ⊙ (y − y'): the rule's own completeness (fp32 sums: 1e-4 relative)
            y, y_ref = module(x[i:i + 1]), module(x_ref)
            np.testing.assert_allclose(phi[i].sum(), float((g * (y - y_ref)).sum()), rtol=1e-4, atol=1e-7)


def test_global_max_pool():
    model = probe_model([helper.make_node("Add", ["A", "bias"], ["z"]), helper.make_node("GlobalMaxPool", ["z"], ["out"])],
                        SHAPE, "out", [numpy_helper.from_array(BIAS, "bias")])
    a = np.random.default_rng(3).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    m, _ = exported_multipliers(model, a, np.array([1, 2]))
    module = torch.nn.MaxPool2d(SHAPE[2:])
    x = torch.from_numpy((a + BIAS).astype(np.float64))
    x_ref = torch.from_numpy(BIAS.astype(np.float64)).expand(1, *SHAPE[1:]).contiguous()
    for i, cls in enumerate([1, 2]):
        g = torch.from_numpy(classifier_gradient(model, (1, 3, 1, 1), cls))[None]
        expected = maxpool_multiplier(module, x[i:i + 1], x_ref, g)[0].numpy()
        np.testing.assert_allclose(m[i], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
