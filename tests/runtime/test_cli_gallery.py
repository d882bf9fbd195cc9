"""``onnxcam gallery`` (onnxcam/cli_gallery.py): on a tiny plain model, and end to end on the bundled MobileNetV2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam import cli, cli_gallery
from onnxcam.runtime import Explainer, Scorer, load_image, score_cam
from onnxcam.runtime.gallery import gallery_shape
from onnxcam.runtime.gallery import render_gallery as real_render

REPO = Path(__file__).resolve().parents[2]
PRE = {"color": "RGB", "resize": "exact", "interpolation": "linear", "scale": 1 / 255,
       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
NAMES = ["apple", "banana", "cherry", "date", "elderberry"]


def build_plain_model(path: Path, softmax: bool = False) -> str:
    """input [N,3,16,16] -> Conv(6, 3x3, s2, p1) -> Relu [N,6,8,8] -> GAP -> Flatten -> Gemm -> logits [N,5]
    (-> Softmax -> probabilities [N,5] when ``softmax``)."""
    rng = np.random.default_rng(11)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 6).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 3.0, (5, 6)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.5, 5).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["A"]),
        helper.make_node("GlobalAveragePool", ["A"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    out = "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        out = "probabilities"
    graph = helper.make_graph(nodes, "tiny_plain", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 5])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> str:
    return build_plain_model(tmp_path_factory.mktemp("gallery") / "tiny.onnx")


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    rng = np.random.default_rng(4)
    paths = []
    for i, hw in enumerate([(20, 24), (16, 16), (30, 18)]):
        path = tmp_path / f"photo{i}.png"
        yy, xx = np.mgrid[: hw[0], : hw[1]]
        blob = (np.exp(-((yy - hw[0] * (0.2 + 0.3 * i)) ** 2 + (xx - hw[1] / 2) ** 2) / 20.0) * 255)[..., None]
        rgb = np.clip(rng.integers(0, 80, (*hw, 3)) + blob * [1.0, 0.6 - 0.2 * i, 0.2 * i], 0, 255).astype(np.uint8)
        assert cv2.imwrite(str(path), rgb[:, :, ::-1])
        paths.append(path)
    return paths


@pytest.fixture
def labels(tmp_path) -> Path:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(NAMES))
    return path


@pytest.fixture
def captured(monkeypatch) -> dict:
    """Records the arguments the CLI hands to render_gallery (and still renders)."""
    seen: dict = {}

    def spy(images, columns, row_captions, **kwargs):
        seen.update(images=images, columns=columns, captions=row_captions, **kwargs)
        return real_render(images, columns, row_captions, **kwargs)

    monkeypatch.setattr("onnxcam.runtime.gallery.render_gallery", spy)
    return seen


def run(capsys, *argv) -> tuple[int, str]:
    rc = cli.main(["gallery", *map(str, argv)])
    return rc, capsys.readouterr().err


# ---------------------------------------------------------------------------- happy path
def test_grid_holds_each_methods_heatmaps(tmp_path, capsys, plain_model, photos, labels, captured):
    out = tmp_path / "grid.png"
    rc, err = run(capsys, plain_model, *photos, "--methods", "gradcam,scorecam,liftcam", "--preprocessing", json.dumps(PRE),
                  "--labels", labels, "-o", out, "--cell", 48, "--batch-size", 4, "--device", "cpu")
    assert rc == 0, err
    assert sorted(os.listdir(tmp_path)) == sorted(["grid.png", "labels.json", *(p.name for p in photos)])  # no temp files
    grid = cv2.imread(str(out))[:, :, ::-1]
    assert grid.shape == gallery_shape(3, 3, 48)
    assert "exporting liftcam" in err and "scorecam: " in err and "wrote" in err

    # independent recomputation through the API
    images = [load_image(p) for p in photos]
    lift = Explainer(onnxcam.export(plain_model, None, raw=True, preprocessing=PRE).SerializeToString(), device="cpu")
    x, display = lift.preprocess(images)
    expl = lift.explain(x)
    grad = Explainer(onnxcam.export(plain_model, None, method="gradcam", preprocessing=PRE).SerializeToString(), device="cpu")
    score = score_cam(Scorer(plain_model), x, expl.activations, expl.classes)
    titles = [t for t, _ in captured["columns"]]
    assert titles == ["Grad-CAM", "Score-CAM", "LIFT-CAM"]
    heat = dict(captured["columns"])
    np.testing.assert_allclose(heat["LIFT-CAM"], expl.heatmaps, atol=1e-6)
    np.testing.assert_allclose(heat["Grad-CAM"], grad.explain(x, target=expl.classes).heatmaps, atol=1e-6)
    np.testing.assert_allclose(heat["Score-CAM"], score.heatmaps, atol=1e-5)
    assert f"scorecam: {score.forward_passes} forward passes" in err
    probs = expl.probabilities()
    assert captured["captions"] == [f"{NAMES[c]} (p={probs[i, c]:.2f})" for i, c in enumerate(expl.classes)]
    for shown, expected in zip(captured["images"], display):
        np.testing.assert_array_equal(shown, expected)
    assert captured["cell"] == 48 and captured["alpha"] == 0.5
    # what was written is what was rendered
    np.testing.assert_array_equal(grid, real_render(display, captured["columns"], captured["captions"], cell=48))


def test_explicit_target_and_names_fallback(tmp_path, capsys, plain_model, photos, captured):
    out = tmp_path / "grid.png"
    rc, err = run(capsys, plain_model, photos[0], "--methods", "liftcam", "--preprocessing", json.dumps(PRE),
                  "--target", 3, "-o", out, "--device", "cpu")
    assert rc == 0, err
    assert len(captured["captions"]) == 1 and captured["captions"][0].startswith("class 3 (p=")
    assert "scorecam" not in err


def test_refuses_to_overwrite_then_overwrites(tmp_path, capsys, plain_model, photos):
    out = tmp_path / "grid.png"
    out.write_bytes(b"keep me")
    args = [plain_model, photos[0], "--methods", "liftcam", "--preprocessing", json.dumps(PRE), "-o", out, "--device", "cpu"]
    rc, err = run(capsys, *args)
    assert rc == 2 and "exists; pass --overwrite" in err
    assert out.read_bytes() == b"keep me"
    rc, err = run(capsys, *args, "--overwrite")
    assert rc == 0, err
    assert cv2.imread(str(out)).shape == gallery_shape(1, 1, 224)


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--methods", "liftcam,ablationcam"], r"unknown method 'ablationcam' in --methods; valid methods: liftcam, gradcam, "
                                               r"gradcam\+\+, xgradcam, hirescam, layercam, scorecam"),
        (["--methods", " , "], "--methods is empty"),
        (["--target", "5"], r"--target 5 is out of range \[0, 5\)"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--alpha", "1.5"], r"--alpha must be in \[0, 1\]"),
        (["--layer", "nope"], "cannot export .* with method liftcam"),
        (["--preprocessing", "imagenette"], "is neither a preset"),
    ],
)
def test_usage_errors_write_nothing(tmp_path, capsys, plain_model, photos, extra, message):
    import re

    out = tmp_path / "grid.png"
    base = ["--preprocessing", json.dumps(PRE)] if "--preprocessing" not in extra else []
    rc, err = run(capsys, plain_model, photos[0], "-o", out, "--device", "cpu", *base, *extra)
    assert rc == 2
    assert re.search(message, err), err
    assert not out.exists()


def test_unreadable_image_is_named(tmp_path, capsys, plain_model, photos):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 32)
    out = tmp_path / "grid.png"
    rc, err = run(capsys, plain_model, photos[0], bad, "--preprocessing", json.dumps(PRE), "-o", out, "--device", "cpu")
    assert rc == 2 and "broken.jpg" in err
    assert not out.exists()


def test_missing_preprocessing_labels_and_model(tmp_path, capsys, plain_model, photos):
    out = tmp_path / "grid.png"
    rc, err = run(capsys, plain_model, photos[0], "-o", out)
    assert rc == 2 and "pass --preprocessing" in err
    (tmp_path / "three.json").write_text(json.dumps(NAMES[:3]))
    rc, err = run(capsys, plain_model, photos[0], "-o", out, "--preprocessing", json.dumps(PRE), "--labels",
                  tmp_path / "three.json", "--methods", "liftcam", "--device", "cpu")
    assert rc == 2 and "has 3 names but the model has 5 classes" in err
    rc, err = run(capsys, tmp_path / "missing.onnx", photos[0], "-o", out, "--preprocessing", "imagenet")
    assert rc == 2 and "no such model file" in err
    assert not out.exists()


def test_parse_methods():
    assert cli_gallery.parse_methods(" LiftCAM, gradcam++,liftcam ") == ["liftcam", "gradcam++"]


# ---------------------------------------------------------------------------- the bundled MobileNetV2
def test_bundled_mobilenetv2_end_to_end(tmp_path, capsys, captured):
    """Real weights, a real photo; Score-CAM at a 160-channel layer keeps it to a few seconds."""
    out = tmp_path / "grid.png"
    rc, err = run(capsys, REPO / "examples" / "mobilenetv2_imagenet.onnx", REPO / "examples" / "bulldog_and_cat.png",
                  "--methods", "liftcam,scorecam", "--layer", "/features/features.16/Add_output_0",
                  "--preprocessing", "imagenet", "--labels", REPO / "examples" / "imagenet_classes.json",
                  "-o", out, "--device", "cpu")
    assert rc == 0, err
    assert cv2.imread(str(out)).shape == gallery_shape(1, 2, 224)
    assert captured["captions"][0].startswith("bull mastiff (p=")
    assert "scorecam: 1" in err and "forward passes" in err  # at most 1 + 160
    score = dict(captured["columns"])["Score-CAM"][0]
    assert score.max() == pytest.approx(1.0) and score.min() == 0.0


def test_device_note_printed_once(tmp_path, capsys, plain_model, photos):
    """--device auto without CUDA: the CPU fallback note once, not once per exported method."""
    rc, err = run(capsys, plain_model, photos[0], "--methods", "liftcam,gradcam,layercam", "--preprocessing",
                  json.dumps(PRE), "-o", tmp_path / "grid.png")
    assert rc == 0, err
    assert err.count("CUDAExecutionProvider") <= 1


def test_model_ending_in_softmax_scores_through_the_export(tmp_path, capsys, photos, captured):
    """The explained logits are internal: Score-CAM must not softmax the model's probabilities again."""
    model = build_plain_model(tmp_path / "softmax.onnx", softmax=True)
    rc, err = run(capsys, model, *photos[:2], "--methods", "scorecam", "--preprocessing", json.dumps(PRE),
                  "-o", tmp_path / "grid.png", "--device", "cpu")
    assert rc == 0, err
    assert "are not an output of" in err and "onnxcam_logits" in err
    lift = Explainer(onnxcam.export(model, None, raw=True, preprocessing=PRE).SerializeToString(), device="cpu")
    x, _ = lift.preprocess([load_image(p) for p in photos[:2]])
    expl = lift.explain(x)
    expected = score_cam(Scorer(lift.session), x, expl.activations, expl.classes)
    np.testing.assert_allclose(dict(captured["columns"])["Score-CAM"], expected.heatmaps, atol=1e-5)
    probs = expl.probabilities()
    assert captured["captions"] == [f"class {c} (p={probs[i, c]:.2f})" for i, c in enumerate(expl.classes)]
