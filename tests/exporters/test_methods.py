"""The Grad-CAM family from the same sweep, against pytorch-grad-cam and torchcam on the same weights.

The low-resolution map (``onnxcam_map`` = ReLU of the method's weighted sum) must equal the peers' to
1e-4 relative (to the image's largest value). Conventions where the libraries differ, tested below:

- pytorch-grad-cam normalises the low-resolution map (``s(L) = (L − min)/(max(L − min) + 1e-7)``),
  resizes it with ``cv2.resize``, and normalises again: ``s(resize(s(L)))``; torchcam returns the map min-max normalised at low resolution and leaves the
  resize to the caller; onnxcam resizes (half-pixel bilinear) *then* min-max normalises, as LIFT-CAM's
  reference recipe does (ALGORITHM.md §1 step 5).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from tests.reference.torchvision_shim import import_torchvision  # noqa: E402

import_torchvision()  # the peers import torchvision; define its CPU-missing ops first
pytest.importorskip("pytorch_grad_cam")

import onnxcam  # noqa: E402
from onnxcam import contract  # noqa: E402
from tests.exporters.helpers import run_cam, session  # noqa: E402
from tests.reference.models import make_model  # noqa: E402

GRAD_CAM_CLASSES = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM", "layercam": "LayerCAM",
}
MODELS = [("resnet50", "layer4", 64), ("vgg16", "features.29", 224)]
_cache: dict = {}


def exported(name, layer, size, method):
    key = (name, method)
    if key not in _cache:
        model = _cache.setdefault((name, "model"), make_model(name, seed=3))
        _cache[key] = onnxcam.export_torch(model, torch.zeros(1, 3, size, size), dict(model.named_modules())[layer],
                                           method=method)
    return _cache[(name, "model")], _cache[key]


def grad_cam_lowres(model, layer, method, x, classes):
    """pytorch-grad-cam's map before its normalisation and resize: ReLU(get_cam_image(...))."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = getattr(pytorch_grad_cam, GRAD_CAM_CLASSES[method])(model=model, target_layers=[layer])
    try:
        inputs = torch.from_numpy(x)
        outputs = cam.activations_and_grads(inputs)
        targets = [ClassifierOutputTarget(int(c)) for c in classes]
        model.zero_grad()
        sum(t(o) for t, o in zip(targets, outputs)).backward()
        acts = cam.activations_and_grads.activations[0].cpu().numpy()
        grads = cam.activations_and_grads.gradients[0].cpu().numpy()
        lowres = np.maximum(cam.get_cam_image(inputs, layer, targets, acts, grads, False), 0)
        full = cam(input_tensor=inputs, targets=targets)
    finally:
        cam.activations_and_grads.release()
    return lowres, full, acts


def near_tie_positions(acts: np.ndarray, pool: int = 2) -> np.ndarray:
    """Positions [N,h,w] inside a ``pool``×``pool`` max-pool window whose two largest values differ by
    less than fp32 noise in some channel (all-zero windows excluded: both libraries pick the first).

    At such windows the argmax — hence where the gradient is routed — depends on the last bit of A,
    which onnxruntime and torch compute differently, so per-position maps (HiResCAM, LayerCAM) may
    legitimately differ there; channel means (Grad-CAM & co.) do not.
    """
    n, k, h, w = acts.shape
    windows = acts.reshape(n, k, h // pool, pool, w // pool, pool).transpose(0, 1, 2, 4, 3, 5)
    top = np.sort(windows.reshape(n, k, h // pool, w // pool, pool * pool), axis=-1)
    risky = ((top[..., -1] - top[..., -2]) <= 1e-5 * np.abs(acts).max()) & (top[..., -1] > 0)
    return np.repeat(np.repeat(risky.any(axis=1), pool, axis=1), pool, axis=2)


@pytest.mark.parametrize("name,layer,size", MODELS)
@pytest.mark.parametrize("method", list(GRAD_CAM_CLASSES))
def test_matches_pytorch_grad_cam(name, layer, size, method):
    import cv2

    model, cam = exported(name, layer, size, method)
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5)).numpy()
    out = run_cam(session(cam), x, np.array([-1, 4, 17]))
    classes = out[contract.OUTPUT_CLASS]
    lowres, full, acts = grad_cam_lowres(model, dict(model.named_modules())[layer], method, x, classes)
    ours = out[contract.OUTPUT_MAP]
    # Relative to the image's largest value (an all-zero map — no positive evidence — uses the batch's).
    assert lowres.max() > 0
    scale = np.maximum(np.abs(lowres).max(axis=(1, 2), keepdims=True), 1e-3 * np.abs(lowres).max())
    error = np.abs(ours - lowres) / scale
    if name == "vgg16" and method in ("hirescam", "layercam"):  # a 2x2 MaxPool follows features.29
        ties = near_tie_positions(acts)
        assert ties.mean() < 0.2
        error = np.where(ties, 0.0, error)
    assert np.max(error) <= 1e-4
    # Convention: pytorch-grad-cam = s(cv2.resize(s(L))); onnxcam = minmax(half-pixel resize(L)).
    def scale(m):
        m = m - m.min()
        return m / (1e-7 + m.max())

    np.testing.assert_allclose(full, np.stack([scale(cv2.resize(scale(m), (size, size))) for m in lowres]), atol=1e-5)



@pytest.mark.parametrize("method,torchcam_name", [("gradcam", "GradCAM"), ("gradcam++", "GradCAMpp"),
                                                  ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")])
def test_matches_torchcam(method, torchcam_name):
    pytest.importorskip("torchcam")
    import torchcam.methods

    model, cam = exported("resnet50", "layer4", 64, method)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6)).numpy()
    out = run_cam(session(cam), x, np.array([2, -1]))
    extractor = getattr(torchcam.methods, torchcam_name)(model, target_layer="layer4")
    try:
        scores = model(torch.from_numpy(x))
        maps = extractor(out[contract.OUTPUT_CLASS].tolist(), scores)[0].detach().numpy()
    finally:
        extractor.remove_hooks()
    # torchcam: ReLU then min-max at low resolution.
    ours = out[contract.OUTPUT_MAP]
    low = ours.min(axis=(1, 2), keepdims=True)
    span = ours.max(axis=(1, 2), keepdims=True) - low
    expected = np.where(span > 0, (ours - low) / np.where(span > 0, span, 1), 0)
    if method == "gradcam++":
        # torchcam's Grad-CAM++ differs from pytorch-grad-cam's (it uses exp(score) for the second and
        # third derivatives, without the ReLU gate of Eq. 7); compare it only as a sanity check.
        assert np.corrcoef(maps.ravel(), expected.ravel())[0, 1] > 0.9
        return
    np.testing.assert_allclose(maps, expected, atol=1e-4)


def test_method_recorded_and_liftcam_differs_from_gradcam():
    _, grad = exported("resnet50", "layer4", 64, "gradcam")
    meta = {p.key: p.value for p in grad.metadata_props}
    assert meta[contract.META_METHOD] == "gradcam"
    with pytest.raises(onnxcam.ExportError, match="unknown method 'scorecam'"):
        onnxcam.export_torch(_cache[("resnet50", "model")], torch.zeros(1, 3, 64, 64), method="scorecam")
