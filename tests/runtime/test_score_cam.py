"""Score-CAM at runtime (onnxcam/runtime/score_cam.py) against a plain float64 loop over channels.

The reference below is written from the definition, independently of the implementation: one channel
at a time, float64, the conftest's own bilinear resize, probabilities from the conftest's numpy model.
"""

from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from onnxcam.runtime import Explainer, Scorer, cam_heatmap, load_image, score_cam
from onnxcam.runtime.score_cam import bilinear_matrix

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_MODEL = REPO / "examples" / "mobilenetv2_imagenet.onnx"


# ---------------------------------------------------------------------------- the plain reference
def softmax64(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def minmax64(u: np.ndarray) -> np.ndarray | None:
    """(u - min) / (max - min); None when u is constant."""
    span = u.max() - u.min()
    return None if span == 0 else (u - u.min()) / span


def reference_score_cam(prob64, x, acts, classes, resize):
    """Score-CAM straight from the definition: ``prob64(x [M,C,H,W]) -> float64 probabilities``."""
    n, k = acts.shape[:2]
    size = x.shape[2:]
    baseline = prob64(np.zeros((1, *x.shape[1:])))[0]
    alpha = np.zeros((n, k))
    for i in range(n):
        for j in range(k):
            if acts[i, j].max() == acts[i, j].min():
                continue  # H_k = 0: the masked image is the baseline, alpha = 0
            mask = minmax64(resize(acts[i, j][None].astype(np.float64), *size)[0])
            alpha[i, j] = prob64((x[i] * mask[None])[None])[0, classes[i]] - baseline[classes[i]]
    maps = np.maximum(np.einsum("nk,nkyx->nyx", alpha, acts.astype(np.float64)), 0.0)
    heat = np.zeros((n, *size))
    for i in range(n):
        if maps[i].max() > maps[i].min():
            heat[i] = minmax64(resize(maps[i][None], *size)[0])
    return alpha, maps, heat


# ---------------------------------------------------------------------------- against the reference
def test_tiny_onnx_model_matches_reference(tiny, tiny_weights, tiny_raw_model_path, rng):
    """Activations from a raw export, probabilities from onnxruntime (Scorer), vs numpy float64."""
    x = tiny.random_batch(rng, 4)
    expl = Explainer(tiny_raw_model_path, device="cpu").explain(x)
    scorer = Scorer(tiny_raw_model_path, batch_size=5)
    result = score_cam(scorer, x, expl.activations, expl.classes, batch_size=3)

    def prob64(batch):
        return softmax64(tiny.reference(tiny_weights, batch)["logits"])

    acts64 = tiny.reference(tiny_weights, x)["activations"]
    alpha, maps, heat = reference_score_cam(prob64, x.astype(np.float64), acts64, expl.classes, tiny.resize)
    assert result.coefficients.shape == (4, tiny.K) and result.coefficients.dtype == np.float32
    assert result.maps.shape == (4, tiny.h, tiny.w) and result.heatmaps.shape == (4, tiny.H, tiny.W)
    assert np.abs(alpha).max() > 1e-3  # the masks really move the probabilities
    np.testing.assert_allclose(result.coefficients, alpha, atol=2e-6)
    scale = np.abs(maps).max(axis=(1, 2), keepdims=True)
    assert (np.abs(result.maps - maps) / scale).max() < 1e-5
    np.testing.assert_allclose(result.heatmaps, heat, atol=1e-4)


def test_numpy_score_function_with_chunks_and_both_resize_directions(tiny):
    """A linear-softmax score function; the map is shrunk along H (20 -> 16) and grown along W (5 -> 12)."""
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 0.05, (6, 2, 16, 12))

    def prob64(batch):
        return softmax64(np.einsum("mcyx,jcyx->mj", np.asarray(batch, np.float64), weights))

    x = rng.normal(0, 1, (3, 2, 16, 12)).astype(np.float32)
    acts = np.maximum(rng.normal(0, 1, (3, 5, 20, 5)), 0).astype(np.float32)
    classes = np.array([0, 5, 2])
    alpha, maps, heat = reference_score_cam(prob64, x.astype(np.float64), acts, classes, tiny.resize)
    results = [score_cam(prob64, x, acts, classes, batch_size=b) for b in (1, 4, 64)]
    for r in results:
        np.testing.assert_allclose(r.coefficients, alpha, atol=1e-6)
        np.testing.assert_allclose(r.maps, maps, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(r.heatmaps, heat, atol=1e-5)
        assert r.forward_passes == 1 + 3 * 5
    # chunking does not change anything
    np.testing.assert_array_equal(results[0].coefficients, results[2].coefficients)


# ---------------------------------------------------------------------------- hand-computable cases
def channel0_mean(batch: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """Two "probabilities": the mean of channel 0 (+ offset), and its complement."""
    p = batch[:, 0].astype(np.float64).mean(axis=(1, 2)) + offset
    return np.stack([p, 1 - p], axis=1)


@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_hand_computed_coefficients_map_and_heatmap(offset):
    """All-ones image: alpha_k = mean(H_k) (+ offset - offset: the baseline cancels a constant score)."""
    x = np.ones((1, 2, 2, 2), np.float32)
    acts = np.array([[[[0, 1], [2, 3]], [[0, 0], [0, 4]], [[5, 5], [5, 5]], [[0, 0], [0, 0]]]], np.float32)
    r = score_cam(lambda b: channel0_mean(b, offset), x, acts, [0])
    np.testing.assert_allclose(r.coefficients, [[0.5, 0.25, 0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(r.maps, [[[0.0, 0.5], [1.0, 2.5]]], atol=1e-6)
    np.testing.assert_allclose(r.heatmaps, [[[0.0, 0.2], [0.4, 1.0]]], atol=1e-6)
    assert r.forward_passes == 3  # baseline + the two varying channels
    # class 1 = 1 - p: every alpha flips sign, the map is ReLU(-...) = 0 and the heatmap all zero
    r1 = score_cam(lambda b: channel0_mean(b, offset), x, acts, [1])
    np.testing.assert_allclose(r1.coefficients, [[-0.5, -0.25, 0.0, 0.0]], atol=1e-7)
    assert not r1.maps.any() and not r1.heatmaps.any()


def test_hand_computed_with_upsampling():
    """A [1, 2] map [0, 2] resized to [1, 4] is [0, 0.5, 1.5, 2]: mask [0, 1/4, 3/4, 1], mean 1/2."""
    x = np.ones((1, 1, 1, 4), np.float32)
    r = score_cam(channel0_mean, x, np.array([[[[0.0, 2.0]]]], np.float32), [0])
    np.testing.assert_allclose(r.coefficients, [[0.5]], atol=1e-7)
    np.testing.assert_allclose(r.maps, [[[0.0, 1.0]]], atol=1e-7)
    np.testing.assert_allclose(r.heatmaps, [[[0.0, 0.25, 0.75, 1.0]]], atol=1e-7)


# ---------------------------------------------------------------------------- constant channels
def test_constant_channels_cost_no_forward_pass():
    rng = np.random.default_rng(3)
    n, k = 3, 8
    acts = np.maximum(rng.normal(0, 1, (n, k, 4, 4)), 0).astype(np.float32)
    acts[0, [1, 4]] = 0.0  # dead after ReLU
    acts[1, 2] = 3.5  # constant but not zero
    acts[2, :] = 0.0
    acts[2, 7] = rng.random((4, 4))
    varying = n * k - 2 - 1 - (k - 1)
    x = rng.normal(0, 1, (n, 3, 8, 8)).astype(np.float32)
    seen: list[int] = []
    calls: list[tuple[int, int]] = []

    def counting(batch):
        seen.append(len(batch))
        return channel0_mean(batch)

    r = score_cam(counting, x, acts, [0, 0, 1], batch_size=5, progress=lambda d, t: calls.append((d, t)))
    assert r.forward_passes == sum(seen) == 1 + varying
    assert max(seen) <= 5
    assert r.coefficients[0, 1] == r.coefficients[0, 4] == r.coefficients[1, 2] == 0.0
    assert not r.coefficients[2, :7].any() and r.coefficients[2, 7] != 0
    assert calls[-1] == (r.forward_passes, r.forward_passes)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls) and len(calls) == len(seen)
    # the same as the plain reference, which scores nothing for them either
    alpha, _, _ = reference_score_cam(channel0_mean, x.astype(np.float64), acts, [0, 0, 1], _resize64)
    np.testing.assert_allclose(r.coefficients, alpha, atol=1e-6)


def _resize64(m, out_h, out_w):
    return np.einsum("yh,nhw,xw->nyx", bilinear_matrix(out_h, m.shape[1]).astype(np.float64), m,
                     bilinear_matrix(out_w, m.shape[2]).astype(np.float64))


# ---------------------------------------------------------------------------- heatmap convention
@pytest.mark.parametrize("out_size,in_size", [(224, 7), (32, 8), (16, 16), (5, 9), (1, 3), (7, 1)])
def test_bilinear_matrix_is_onnx_resize_linear_half_pixel(out_size, in_size):
    """The matrix (shared by the exporter and Score-CAM, onnxcam.resize) equals onnxruntime's
    ``Resize(linear, half_pixel)`` applied to the identity (rows resized from in_size to out_size)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    sizes = numpy_helper.from_array(np.array([1, 1, out_size, in_size], np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="half_pixel")
    graph = helper.make_graph([node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, in_size, in_size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (resized,) = session.run(None, {"x": np.eye(in_size, dtype=np.float32)[None, None]})
    np.testing.assert_allclose(bilinear_matrix(out_size, in_size), resized[0, 0], atol=1e-6)


def test_cam_heatmap_matches_float64_and_zeroes_constant_maps(tiny):
    rng = np.random.default_rng(5)
    maps = np.maximum(rng.normal(0, 1, (4, 8, 8)), 0).astype(np.float32)
    maps[2] = 0.0
    maps[3] = 1.25  # constant: its resize is not exactly constant in float32, still 0
    got = cam_heatmap(maps, (tiny.H, tiny.W))
    up = tiny.resize(maps.astype(np.float64), tiny.H, tiny.W)
    for i in range(2):
        np.testing.assert_allclose(got[i], minmax64(up[i]), atol=1e-6)
    assert not got[2:].any()
    assert got.dtype == np.float32 and got.min() >= 0 and got.max() <= 1


def test_cam_heatmap_subnormal_spans_stay_finite():
    # As in the graph (tests/exporters/test_cam.py): 1/span would overflow to inf, and inf·0 = NaN.
    maps = np.zeros((1, 3, 4), np.float32)
    maps[0, 0, 0] = np.finfo(np.float32).tiny / 8
    got = cam_heatmap(maps, (12, 10))
    assert np.all(np.isfinite(got)) and got.min() >= 0 and got.max() <= 1


@pytest.fixture(scope="module")
def mobilenet_raw(tmp_path_factory):
    """The bundled MobileNetV2, exported raw (LIFT-CAM), explained on the two bundled photos."""
    onnxcam = pytest.importorskip("onnxcam")
    model = onnxcam.export(str(EXAMPLE_MODEL), None, raw=True, preprocessing="imagenet")
    explainer = Explainer(model.SerializeToString(), device="cpu")
    images = [load_image(REPO / "examples" / "bulldog_and_cat.png"), load_image(REPO / "examples" / "house_finch.jpg")]
    x, _ = explainer.preprocess(images)
    return explainer, x, explainer.explain(x)


def test_heatmap_convention_equals_the_exported_graph(mobilenet_raw):
    """Feeding the graph's own onnxcam_map through cam_heatmap gives its onnxcam_heatmap."""
    explainer, x, expl = mobilenet_raw
    got = cam_heatmap(expl.maps, x.shape[2:])
    assert np.abs(got - expl.heatmaps).max() <= 1e-5
    # and a Score-CAM map goes through the same function (4 channels, a numpy score function: fast)
    fake = score_cam(channel0_mean, x[:1], expl.activations[:1, :4], [0])
    assert fake.maps.any()
    np.testing.assert_array_equal(fake.heatmaps, cam_heatmap(fake.maps, x.shape[2:]))


# ---------------------------------------------------------------------------- pytorch-grad-cam's ScoreCAM
def test_pytorch_grad_cam_scorecam_weights_are_a_softmax_over_channels(tiny, tiny_weights, tiny_raw_model_path, rng):
    """Pins the difference documented in the module: grad-cam's ScoreCAM weights are
    softmax_k(logit_c(X ⊙ H'_k)) with align_corners=True masks and no baseline; ours are
    p_c(X ⊙ H_k) - p_c(0) (half-pixel masks)."""
    torch = pytest.importorskip("torch")
    from tests.reference.torchvision_shim import import_torchvision

    import_torchvision()
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net = torch.nn.Sequential(torch.nn.Conv2d(3, tiny.K, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(tiny.K, tiny.NUM_CLASSES))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(tiny_weights.conv_w))
        net[0].bias.copy_(torch.from_numpy(tiny_weights.conv_b))
        net[4].weight.copy_(torch.from_numpy(tiny_weights.fc_w))
        net[4].bias.copy_(torch.from_numpy(tiny_weights.fc_b))
    net.eval()
    x = tiny.random_batch(rng, 2)
    expl = Explainer(tiny_raw_model_path, device="cpu").explain(x)
    acts = expl.activations
    cam = ScoreCAM(model=net, target_layers=[net[1]])
    try:
        targets = [ClassifierOutputTarget(int(c)) for c in expl.classes]
        theirs = cam.get_cam_weights(torch.from_numpy(x), net[1], targets, acts, None)
    finally:
        cam.activations_and_grads.release()

    def align_corners_up(m, out):  # UpsamplingBilinear2d
        src = np.arange(out) * (m.shape[-1] - 1) / (out - 1)
        lo = np.minimum(np.floor(src).astype(int), m.shape[-1] - 2)
        f = src - lo
        return m[..., lo] * (1 - f) + m[..., lo + 1] * f

    up = align_corners_up(np.swapaxes(align_corners_up(acts.astype(np.float64), tiny.W), -1, -2), tiny.H)
    up = np.swapaxes(up, -1, -2)
    lo, hi = up.min(axis=(2, 3), keepdims=True), up.max(axis=(2, 3), keepdims=True)
    masks = (up - lo) / (hi - lo + 1e-8)
    logits = np.stack([tiny.reference(tiny_weights, x[i][None] * masks[i][:, None])["logits"][:, expl.classes[i]]
                       for i in range(len(x))])
    np.testing.assert_allclose(theirs, softmax64(logits), atol=1e-5)
    np.testing.assert_allclose(theirs.sum(axis=1), 1.0, atol=1e-6)
    ours = score_cam(Scorer(tiny_raw_model_path), x, acts, expl.classes).coefficients
    assert np.abs(ours - theirs).max() > 1e-2


# ---------------------------------------------------------------------------- errors
def test_errors():
    x = np.zeros((2, 1, 4, 4), np.float32)
    a = np.ones((2, 3, 2, 2), np.float32)
    a[:, :, 0, 0] = 0
    with pytest.raises(ValueError, match=r"batch must be a non-empty preprocessed batch \[N, C, H, W\]"):
        score_cam(channel0_mean, x[0], a, [0, 0])
    with pytest.raises(ValueError, match=r"activations must be a non-empty \[N, K, h, w\]"):
        score_cam(channel0_mean, x, a[:, 0], [0, 0])
    with pytest.raises(ValueError, match="activations have N=1 images .* batch has N=2"):
        score_cam(channel0_mean, x, a[:1], [0, 0])
    with pytest.raises(ValueError, match=r"classes must have shape \[N\] = \(2,\)"):
        score_cam(channel0_mean, x, a, [0])
    with pytest.raises(ValueError, match="integer class indices"):
        score_cam(channel0_mean, x, a, [0.0, 1.0])
    with pytest.raises(ValueError, match=r"class 2 \(image 1\) is out of range \[0, 2\)"):
        score_cam(channel0_mean, x, a, [0, 2])
    with pytest.raises(ValueError, match=r"class -1 \(image 0\) is negative"):
        score_cam(channel0_mean, x, a, [-1, 0])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        score_cam(channel0_mean, x, a, [0, 0], batch_size=0)
    with pytest.raises(ValueError, match="activations contains NaN or Inf in image"):
        score_cam(channel0_mean, x, np.where(a > 0, np.nan, a), [0, 0])
    with pytest.raises(ValueError, match="batch must be floating point"):
        score_cam(channel0_mean, x.astype(np.int32), a, [0, 0])
    with pytest.raises(ValueError, match=r"score_fn must return probabilities \[M, num_classes\]"):
        score_cam(lambda b: channel0_mean(b)[:, 0], x, a, [0, 0])
    with pytest.raises(ValueError, match="NaN or Inf scores"):
        score_cam(lambda b: channel0_mean(b) * np.nan, x, a, [0, 0])


# ---------------------------------------------------------------------------- docs and isolation
def test_docstring_examples():
    # (onnxcam.runtime.score_cam is the function: the runtime exports it under the module's name)
    result = doctest.testmod(importlib.import_module("onnxcam.runtime.score_cam"), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("module", ["onnxcam.runtime.score_cam", "onnxcam.runtime.gallery"])
def test_imports_neither_torch_nor_onnx(module):
    """Importing the module (and the runtime with it) pulls neither torch nor onnx."""
    code = textwrap.dedent(
        f"""
        import sys
        import {module}
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript")))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(REPO), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
