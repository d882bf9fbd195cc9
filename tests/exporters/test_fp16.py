"""Float16 models: the forward runs in float16, the reverse sweep and the CAM tail in float32."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxcam
from onnxcam import contract
from onnxcam.exporters.precision import to_float16
from tests.exporters.helpers import logits_at_zero, metadata, run_cam, session


@pytest.fixture(scope="module")
def photos_batch(photos_dir):
    from onnxcam.runtime import load_image, preprocess

    photos = sorted(p for p in photos_dir.iterdir() if p.name != "mnist_5.jpg")
    batch, _ = preprocess([load_image(p) for p in photos], contract.PREPROCESSING_PRESETS["imagenet"], (224, 224))
    return batch


def test_real_mobilenet_v2_fp16_heatmaps_within_1e2_of_fp32(models_dir, photos_batch):
    path = models_dir / "mobilenetv2_imagenet_fp32.onnx"
    cam32, cam16 = onnxcam.export(path), onnxcam.export(path, fp16=True)
    s16 = session(cam16)
    assert {i.name: i.type for i in s16.get_inputs()} == {"input": "tensor(float)", contract.INPUT_TARGET: "tensor(int64)"}
    assert all(o.type == "tensor(float)" for o in s16.get_outputs() if o.name != contract.OUTPUT_CLASS)
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in cam16.graph.initializer)
    out32 = run_cam(session(cam32), photos_batch)
    predicted16 = run_cam(s16, photos_batch)
    np.testing.assert_array_equal(predicted16[contract.OUTPUT_CLASS], out32[contract.OUTPUT_CLASS])
    out16 = run_cam(s16, photos_batch, out32[contract.OUTPUT_CLASS])
    assert np.abs(out16[contract.OUTPUT_HEATMAP] - out32[contract.OUTPUT_HEATMAP]).max() <= 1e-2
    phi32 = out32[contract.OUTPUT_COEFFICIENTS]
    assert np.abs(out16[contract.OUTPUT_COEFFICIENTS] - phi32).max() <= 2e-2 * np.abs(phi32).max()


def test_float16_model_exports_as_given(models_dir):
    """A model that is already float16 (here converted beforehand) exports without fp16=True, identically."""
    path = models_dir / "cifar10_resnet20.onnx"
    half = to_float16(onnx.load(str(path)))
    direct = onnxcam.export(half, "/layer2/layer2.2/Relu_1_output_0")
    flagged = onnxcam.export(path, "/layer2/layer2.2/Relu_1_output_0", fp16=True)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    a, b = run_cam(session(direct), x), run_cam(session(flagged), x)
    for key in (contract.OUTPUT_CLASS, contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_HEATMAP):
        np.testing.assert_array_equal(a[key], b[key])


def test_float16_thresholds_suit_the_dtype(models_dir):
    cam = onnxcam.export(models_dir / "cifar10_resnet20.onnx", "/layer2/layer2.2/Relu_1_output_0", fp16=True)
    eps = {numpy_helper.to_array(i).item() for i in cam.graph.initializer if i.name.startswith("onnxcam/rescale_eps")}
    assert eps == {np.float32(1e-3)}
    cam32 = onnxcam.export(models_dir / "cifar10_resnet20.onnx", "/layer2/layer2.2/Relu_1_output_0")
    eps32 = {numpy_helper.to_array(i).item() for i in cam32.graph.initializer if i.name.startswith("onnxcam/rescale_eps")}
    assert eps32 == {np.float32(1e-10)}


def test_fp16_completeness_on_cifar(models_dir):
    """Σφ = y_c(A) − y_c(0) still holds to float16 accuracy (the logits are float16 values)."""
    path = models_dir / "cifar10_resnet20.onnx"
    target = "/layer2/layer2.2/Relu_1_output_0"
    half = to_float16(onnx.load(str(path)))
    cam = onnxcam.export(half, target)
    x = np.random.default_rng(1).standard_normal((8, 3, 32, 32)).astype(np.float32)
    out = run_cam(session(cam), x)
    meta = metadata(cam)
    y0 = logits_at_zero(half, target, meta[contract.META_EXPLAINED], (3, 32, 32))
    classes = out[contract.OUTPUT_CLASS]
    delta = out[contract.OUTPUT_LOGITS][np.arange(8), classes] - y0[classes]
    scale = np.maximum(np.abs(delta), np.abs(out[contract.OUTPUT_LOGITS]).max(axis=1))
    assert np.max(np.abs(out[contract.OUTPUT_COEFFICIENTS].sum(axis=1) - delta) / scale) <= 1e-2
    assert json.loads(meta[contract.META_INPUT_SHAPE]) == [3, 32, 32]
