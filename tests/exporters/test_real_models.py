"""The exporter on the real models of ../shared: completeness, batching, targets, the graph contract."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import onnxcam
from onnxcam import contract
from tests.exporters.helpers import (
    completeness_error,
    logits_at_zero,
    metadata,
    reference_heatmap,
    run_cam,
    session,
)

# (file, target or None for auto, preprocessing preset, input scale)
CASES = [
    ("cifar10_resnet20.onnx", None, "cifar10", 1.0),
    ("cifar10_resnet20.onnx", "/layer2/layer2.2/Relu_1_output_0", "cifar10", 1.0),
    ("cifar10_resnet20.onnx", "/layer1/layer1.2/Relu_1_output_0", "cifar10", 1.0),
    ("cifar10_resnet56.onnx", None, "cifar10", 1.0),
    ("cifar10_resnet56.onnx", "/layer2/layer2.8/Relu_1_output_0", "cifar10", 1.0),
    ("mobilenetv2_imagenet_fp32.onnx", None, "imagenet", 1.0),
    ("mobilenetv2_imagenet_fp32.onnx", "/features/features.14/conv/conv.2/Conv_output_0", "imagenet", 1.0),
    ("mobilenetv2_imagenet_fp32.onnx", "/features/features.8/Add_output_0", "imagenet", 1.0),
    ("mnist_cntk.onnx", None, "mnist", 100.0),
    ("mnist_cntk.onnx", "ReLU32_Output_0", "mnist", 100.0),
    ("mnist_cnn_pytorch.onnx", None, "mnist", 1.0),
]

_cache: dict = {}


def exported(models_dir, name, target, preset):
    key = (name, target)
    if key not in _cache:
        source = onnx.load(str(models_dir / name))
        _cache[key] = (source, onnxcam.export(models_dir / name, target, preprocessing=preset, raw=True))
    return _cache[key]


def inputs_for(model: onnx.ModelProto, n: int, scale: float, seed: int = 0) -> np.ndarray:
    meta = metadata(model)
    shape = json.loads(meta[contract.META_INPUT_SHAPE])
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return np.abs(x) * scale if scale != 1.0 else x


@pytest.mark.parametrize("name,target,preset,scale", CASES, ids=[f"{c[0]}@{c[1] or 'auto'}" for c in CASES])
def test_completeness(models_dir, name, target, preset, scale):
    """Σ_k φ_k = y_c(A) − y_c(0) within 1e-4 relative, for predicted and for explicit classes."""
    source, cam = exported(models_dir, name, target, preset)
    meta = metadata(cam)
    x = inputs_for(cam, 5, scale)
    sess = session(cam)
    y_zero = logits_at_zero(source, meta[contract.META_TARGET], meta[contract.META_EXPLAINED],
                            json.loads(meta[contract.META_INPUT_SHAPE]))
    predicted = run_cam(sess, x)
    assert completeness_error(predicted, y_zero) < 1e-4
    classes = np.arange(5) % int(meta[contract.META_NUM_CLASSES])
    chosen = run_cam(sess, x, classes)
    np.testing.assert_array_equal(chosen[contract.OUTPUT_CLASS], classes)
    assert completeness_error(chosen, y_zero) < 1e-4


@pytest.mark.parametrize("name,target,preset,scale", CASES[:1] + CASES[5:6] + CASES[8:9],
                         ids=["resnet20", "mobilenetv2", "mnist_cntk"])
def test_contract_outputs(models_dir, name, target, preset, scale):
    """Original outputs unchanged; shapes/dtypes as documented; map and heatmap follow their formulas."""
    source, cam = exported(models_dir, name, target, preset)
    meta = metadata(cam)
    onnx.checker.check_model(cam, full_check=True)
    assert meta[contract.META_METHOD] == "liftcam"
    assert meta[contract.META_VERSION] == onnxcam.__version__
    assert json.loads(meta[contract.META_PREPROCESSING]) == contract.PREPROCESSING_PRESETS[preset]
    x = inputs_for(cam, 3, scale, seed=1)
    out = run_cam(session(cam), x)
    plain = session(source, optimise=False)
    for original in plain.get_outputs():
        expected = np.concatenate([plain.run([original.name], {plain.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(3)])
        np.testing.assert_allclose(out[original.name], expected, rtol=1e-5, atol=1e-5)

    k, h, w = json.loads(meta[contract.META_TARGET_SHAPE])
    _, H, W = json.loads(meta[contract.META_INPUT_SHAPE])
    C = int(meta[contract.META_NUM_CLASSES])
    expected_shapes = {
        contract.OUTPUT_LOGITS: ((3, C), np.float32), contract.OUTPUT_CLASS: ((3,), np.int64),
        contract.OUTPUT_COEFFICIENTS: ((3, k), np.float32), contract.OUTPUT_MAP: ((3, h, w), np.float32),
        contract.OUTPUT_HEATMAP: ((3, H, W), np.float32), contract.OUTPUT_ACTIVATIONS: ((3, k, h, w), np.float32),
        contract.OUTPUT_MULTIPLIERS: ((3, k, h, w), np.float32),
    }
    for name_, (shape, dtype) in expected_shapes.items():
        assert out[name_].shape == shape and out[name_].dtype == dtype, name_
    np.testing.assert_array_equal(out[contract.OUTPUT_CLASS], out[contract.OUTPUT_LOGITS].argmax(1))
    A, m = out[contract.OUTPUT_ACTIVATIONS].astype(np.float64), out[contract.OUTPUT_MULTIPLIERS].astype(np.float64)
    phi = (A * m).sum(axis=(2, 3))
    np.testing.assert_allclose(out[contract.OUTPUT_COEFFICIENTS], phi, rtol=1e-4, atol=1e-5 * np.abs(phi).max())
    cam_map = np.maximum(np.einsum("nk,nkhw->nhw", out[contract.OUTPUT_COEFFICIENTS].astype(np.float64), A), 0)
    np.testing.assert_allclose(out[contract.OUTPUT_MAP], cam_map, rtol=1e-4, atol=1e-5 * cam_map.max())
    heat = out[contract.OUTPUT_HEATMAP]
    np.testing.assert_allclose(heat, reference_heatmap(out[contract.OUTPUT_MAP], (H, W)), atol=1e-5)
    assert heat.min() >= 0 and heat.max() <= 1


def test_dynamic_batch_is_per_image(models_dir):
    """Batches of 1, 2, 7 and 32 give each image the result it gets alone (MNIST CNTK had a fixed batch of 1)."""
    for name, preset, scale in [("cifar10_resnet20.onnx", "cifar10", 1.0), ("mnist_cntk.onnx", "mnist", 100.0)]:
        _, cam = exported(models_dir, name, None, preset)
        sess = session(cam)
        x = inputs_for(cam, 32, scale, seed=2)
        targets = np.where(np.arange(32) % 3 == 0, -1, np.arange(32) % 10)
        alone = [run_cam(sess, x[i:i + 1], targets[i:i + 1]) for i in range(32)]
        for n in (1, 2, 7, 32):
            together = run_cam(sess, x[:n], targets[:n])
            for key in (contract.OUTPUT_CLASS, contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_HEATMAP):
                expected = np.concatenate([a[key] for a in alone[:n]])
                np.testing.assert_allclose(together[key], expected, rtol=1e-5, atol=1e-5, err_msg=f"{name} n={n} {key}")


def test_constant_map_gives_zero_heatmap(models_dir):
    """An image whose map is all zeros (explaining a class with no positive evidence) gets a zero heatmap."""
    _, cam = exported(models_dir, "cifar10_resnet20.onnx", None, "cifar10")
    sess = session(cam)
    x = inputs_for(cam, 16, 1.0, seed=3)
    found = False
    for cls in range(10):
        out = run_cam(sess, x, np.full(16, cls))
        flat = out[contract.OUTPUT_MAP].reshape(16, -1)
        constant = flat.max(1) == flat.min(1)
        if constant.any():
            found = True
            assert np.all(out[contract.OUTPUT_HEATMAP][constant] == 0)
        varying = ~constant
        assert np.allclose(out[contract.OUTPUT_HEATMAP][varying].reshape(varying.sum(), -1).max(1), 1.0)
    if not found:
        pytest.skip("no image with a constant map in this sample")


def test_softmax_output_explains_logits(models_dir):
    """mnist_cnn_pytorch ends in LogSoftmax: its input (the logits) is explained, the output is kept."""
    _, cam = exported(models_dir, "mnist_cnn_pytorch.onnx", None, "mnist")
    meta = metadata(cam)
    nodes = {o: n for n in cam.graph.node for o in n.output}
    assert nodes[cam.graph.output[0].name].op_type == "LogSoftmax"
    assert meta[contract.META_EXPLAINED] == nodes[cam.graph.output[0].name].input[0]


def test_opset_upgrade_and_batch_rewrite_keep_the_model(models_dir):
    _, cam = exported(models_dir, "mnist_cntk.onnx", None, "mnist")
    assert next(o.version for o in cam.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert cam.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_list_layers_and_cli(models_dir, capsys):
    """Candidates carry op, shape and support; exactly one is the automatic choice; in-block tensors are refused."""
    from onnxcam.cli import main

    layers = {layer.name: layer for layer in onnxcam.list_layers(models_dir / "cifar10_resnet20.onnx")}
    auto = [name for name, layer in layers.items() if layer.auto]
    assert auto == ["/layer3/layer3.2/Relu_1_output_0"] == [onnxcam.exporters.choose_target(models_dir / "cifar10_resnet20.onnx")]
    assert layers["/layer2/layer2.2/Relu_1_output_0"].shape == (32, 16, 16) and layers["/layer2/layer2.2/Relu_1_output_0"].supported
    inside = layers["/layer3/layer3.2/conv1/Conv_output_0"]
    assert inside.op_type == "Conv" and not inside.supported and inside.reason == "skip connection around it"
    assert main(["layers", str(models_dir / "cifar10_resnet20.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "/layer3/layer3.2/Relu_1_output_0" in printed and "<- auto" in printed
    assert "/layer3/layer3.2/conv1/Conv_output_0" not in printed  # unsupported ones only with --all
