"""The exported graph equals a float64 captum DeepLift reference on the head (ALGORITHM.md §4).

``A`` is taken from the fp32 graph itself (the ``raw`` output), then the head's LIFT-CAM is computed
in float64 by ``tests.reference.liftcam_reference`` (captum ``DeepLift`` with its three known bugs
corrected). Tolerances: coefficients 1e-4 relative (to the largest |φ| of the image), heatmaps 1e-3
absolute, same class.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("captum")

import onnxcam  # noqa: E402
from onnxcam import contract  # noqa: E402
from tests.exporters.helpers import metadata, run_cam, session  # noqa: E402
from tests.reference.liftcam import liftcam_reference  # noqa: E402
from tests.reference.models import load_real_mobilenet_v2, make_model, split_model  # noqa: E402

# (model, layer, input size): VGG16 needs 224 px (its adaptive 7x7 average pool must divide evenly).
CASES = [
    ("resnet50", "layer4", 64),
    ("resnet18", "layer3", 64),
    ("mobilenet_v2", "features.14", 64),
    ("mobilenet_v2", "features.18", 64),
    ("squeezenet1_1", "features.12", 64),
    ("vgg16", "features.29", 224),
]


def compare(cam_outputs: dict, reference: dict) -> dict:
    phi, phi_ref = cam_outputs[contract.OUTPUT_COEFFICIENTS].astype(np.float64), reference["coefficients"]
    # Relative to the image's largest |φ|; an image whose φ are all zero (the class has no path
    # through the head's ReLUs) is compared against the batch's scale instead.
    scale = np.maximum(np.abs(phi_ref).max(axis=1, keepdims=True), 1e-3 * np.abs(phi_ref).max() + 1e-12)
    errors = {
        "coefficients": float((np.abs(phi - phi_ref) / scale).max()),
        "heatmap": float(np.abs(cam_outputs[contract.OUTPUT_HEATMAP] - reference["heatmap"]).max()),
        "multipliers": float(np.abs(cam_outputs[contract.OUTPUT_MULTIPLIERS] - reference["multipliers"]).max()
                             / np.abs(reference["multipliers"]).max()),
    }
    np.testing.assert_array_equal(cam_outputs[contract.OUTPUT_CLASS], reference["classes"])
    assert errors["coefficients"] <= 1e-4, errors
    assert errors["heatmap"] <= 1e-3, errors
    return errors


@pytest.mark.parametrize("name,layer,size", CASES)
def test_torchvision_head_matches_captum(name, layer, size):
    model = make_model(name, seed=0)
    module = dict(model.named_modules())[layer]
    cam = onnxcam.export_torch(model, torch.zeros(1, 3, size, size), module, raw=True)
    assert metadata(cam)[contract.META_TARGET] == f"{layer}.output"
    _, head = split_model(name, model, layer)
    x = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1)).numpy()
    sess = session(cam)
    for target in (None, np.array([3, -1, 7, 999])):
        out = run_cam(sess, x, target)
        reference = liftcam_reference(head, out[contract.OUTPUT_ACTIVATIONS], target, (size, size))
        errors = compare(out, reference)
        print(name, layer, "target" if target is not None else "predicted", errors)
        with torch.no_grad():
            np.testing.assert_allclose(out["logits"], model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("onnx_layer,torch_layer", [
    (None, "features.18"),
    ("/features/features.14/conv/conv.2/Conv_output_0", "features.14"),
])
def test_real_mobilenet_v2_on_photos(models_dir, photos_dir, onnx_layer, torch_layer):
    """The real ImageNet MobileNetV2 (ONNX front door) on real photos vs captum on the torchvision head."""
    from onnxcam.runtime import load_image, preprocess

    cam = onnxcam.export(models_dir / "mobilenetv2_imagenet_fp32.onnx", onnx_layer, preprocessing="imagenet", raw=True)
    prep = json.loads(metadata(cam)[contract.META_PREPROCESSING])
    photos = sorted(p for p in photos_dir.iterdir() if p.name != "mnist_5.jpg")
    batch, _ = preprocess([load_image(p) for p in photos], prep, (224, 224))
    out = run_cam(session(cam), batch)
    model = load_real_mobilenet_v2(models_dir / "mobilenetv2_imagenet_torchvision_state_dict.pt")
    _, head = split_model("mobilenet_v2", model, torch_layer)
    reference = liftcam_reference(head, out[contract.OUTPUT_ACTIVATIONS], None, (224, 224))
    print(torch_layer, compare(out, reference))
