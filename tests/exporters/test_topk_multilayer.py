"""Several classes (top-k) and several target layers in one graph, on the real CIFAR-10 ResNet-20."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxcam
from onnxcam import contract
from tests.exporters.helpers import metadata, run_cam, session

LAYER3 = "/layer3/layer3.2/Relu_1_output_0"
LAYER2 = "/layer2/layer2.2/Relu_1_output_0"


@pytest.fixture(scope="module")
def resnet20(models_dir):
    return str(models_dir / "cifar10_resnet20.onnx")


def images(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("method", ["liftcam", "gradcam"])
def test_top_k_equals_separate_runs(resnet20, method):
    k = 3
    single = session(onnxcam.export(resnet20, LAYER2, method=method))
    cam = onnxcam.export(resnet20, LAYER2, method=method, top_k=k)
    meta = metadata(cam)
    assert meta[contract.META_TOP_K] == "3"
    x = images(5)
    targets = -np.ones((5, k), dtype=np.int64)
    targets[1, 2] = 7  # an explicit class at rank 2 of image 1
    out = run_cam(session(cam), x, targets)
    assert out[contract.OUTPUT_CLASS].shape == (5, k)
    assert out[contract.OUTPUT_COEFFICIENTS].shape == (5, k, 32)
    assert out[contract.OUTPUT_HEATMAP].shape == (5, k, 32, 32)
    logits = out[contract.OUTPUT_LOGITS]
    expected_classes = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    expected_classes[1, 2] = 7
    np.testing.assert_array_equal(out[contract.OUTPUT_CLASS], expected_classes)
    for rank in range(k):
        alone = run_cam(single, x, expected_classes[:, rank])
        for key in (contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_MAP, contract.OUTPUT_HEATMAP):
            np.testing.assert_allclose(out[key][:, rank], alone[key], rtol=1e-5, atol=1e-5, err_msg=f"{key} rank {rank}")


def test_top_k_forward_runs_once(resnet20):
    """Only the sweep is repeated k times: the model's own nodes appear once, unchanged."""
    source = onnx.load(resnet20)
    cam = onnxcam.export(resnet20, LAYER2, top_k=4)
    original = [(n.op_type, tuple(n.input), tuple(n.output)) for n in source.graph.node]
    exported = [(n.op_type, tuple(n.input), tuple(n.output)) for n in cam.graph.node if not n.name.startswith("onnxcam/")]
    assert exported == original


def test_top_k_errors(resnet20):
    with pytest.raises(onnxcam.ExportError, match="top_k=11 exceeds the 10 classes"):
        onnxcam.export(resnet20, top_k=11)
    with pytest.raises(onnxcam.ExportError, match="top_k must be a positive int"):
        onnxcam.export(resnet20, top_k=0)


def test_several_layers_equal_single_exports_and_fuse(resnet20):
    cam = onnxcam.export(resnet20, [LAYER3, LAYER2], raw=True)
    meta = metadata(cam)
    assert json.loads(meta[contract.META_TARGET]) == [LAYER3, LAYER2]
    assert json.loads(meta[contract.META_TARGET_SHAPE]) == [[64, 8, 8], [32, 16, 16]]
    x = images(4, seed=1)
    out = run_cam(session(cam), x, np.array([-1, 3, -1, 9]))
    heatmaps = []
    for i, layer in enumerate([LAYER3, LAYER2]):
        alone = run_cam(session(onnxcam.export(resnet20, layer, raw=True)), x, np.array([-1, 3, -1, 9]))
        for key in (contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_MAP, contract.OUTPUT_HEATMAP,
                    contract.OUTPUT_MULTIPLIERS, contract.OUTPUT_ACTIVATIONS):
            np.testing.assert_allclose(out[f"{key}_{i}"], alone[key], rtol=1e-5, atol=1e-6, err_msg=f"{key}_{i}")
        heatmaps.append(alone[contract.OUTPUT_HEATMAP].astype(np.float64))
    mean = np.mean(heatmaps, axis=0)
    low = mean.min(axis=(1, 2), keepdims=True)
    span = mean.max(axis=(1, 2), keepdims=True) - low
    np.testing.assert_allclose(out[contract.OUTPUT_HEATMAP], (mean - low) / span, atol=1e-5)


def test_repeated_layers_refused(resnet20):
    with pytest.raises(onnxcam.ExportError, match="target layers repeat"):
        onnxcam.export(resnet20, [LAYER2, LAYER2])
