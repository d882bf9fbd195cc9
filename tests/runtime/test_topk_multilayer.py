"""The runtime and the explain CLI on every kind of exported graph: any method, top-k, several layers.

Models come from the real exporter on the CIFAR-10 ResNet-20 of ../shared (``resnet20_cam`` in
conftest; skipped when absent). Results are checked against plain onnxruntime runs of other
exports (a top-k model's rank r against a single-class model fed that rank's classes, a
multi-layer model's layer i against a single-layer export of that layer), not against the runtime.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from onnxcam import contract
from onnxcam.cli_explain import main, output_names
from onnxcam.runtime import Explainer, Explanation, LayerExplanation, colorize

L3 = "/layer3/layer3.2/Relu_1_output_0"
L2 = "/layer2/layer2.2/Relu_1_output_0"
K = 3
TOL = dict(rtol=1e-5, atol=1e-5)
PER_CLASS = (contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_MAP, contract.OUTPUT_HEATMAP, contract.OUTPUT_MULTIPLIERS)
FIELD = {
    contract.OUTPUT_COEFFICIENTS: "coefficients",
    contract.OUTPUT_MAP: "maps",
    contract.OUTPUT_HEATMAP: "heatmaps",
    contract.OUTPUT_ACTIVATIONS: "activations",
    contract.OUTPUT_MULTIPLIERS: "multipliers",
}


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def run_plain(path: str, x: np.ndarray, target) -> dict[str, np.ndarray]:
    """All outputs of a model by plain onnxruntime (no onnxcam runtime involved)."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"input": x, contract.INPUT_TARGET: np.asarray(target, np.int64)})))


def renormalised_mean(heatmaps: list[np.ndarray]) -> np.ndarray:
    mean = np.mean([h.astype(np.float64) for h in heatmaps], axis=0)
    axes = (-2, -1)
    low = mean.min(axis=axes, keepdims=True)
    span = mean.max(axis=axes, keepdims=True) - low
    return np.where(span > 0, (mean - low) / np.where(span > 0, span, 1.0), 0.0)


# ---------------------------------------------------------------------------- methods
@pytest.mark.parametrize("method", contract.METHODS)
def test_method_is_exposed(resnet20_cam, method):
    e = Explainer(resnet20_cam(method=method), device="cpu")
    assert e.method == method
    assert e.top_k is None and e.target_layers == [L3] and e.target_layer == L3 and not e.fused
    assert f"method={method!r}" in repr(e)
    expl = e.explain(images(2))
    assert expl.heatmaps.shape == (2, 32, 32) and expl.k is None and len(expl.layers) == 1


def test_batch_axis_name_is_the_models(resnet20_cam):
    """The exported graph names its batch axis "batch" (not "N"); nothing in the runtime depends on it."""
    e = Explainer(resnet20_cam(top_k=K), device="cpu")
    shapes = {i.name: i.shape for i in e.session.get_inputs()}
    assert shapes["input"][0] == "batch" and shapes[contract.INPUT_TARGET] == ["batch", K]
    assert e.explain(images(3)).classes.shape == (3, K)


# ---------------------------------------------------------------------------- top-k
@pytest.fixture(scope="module")
def topk(resnet20_cam):
    return resnet20_cam(top_k=K, raw=True)


@pytest.fixture(scope="module")
def plain(resnet20_cam):
    return resnet20_cam(raw=True)


def test_top_k_properties(topk):
    e = Explainer(topk, device="cpu")
    assert e.top_k == K and e.method == "liftcam" and e.target_layer == L3 and e.target_shapes == [(64, 8, 8)]
    assert e.outputs == contract.STANDARD_OUTPUTS + contract.RAW_OUTPUTS
    assert "top_k=3" in repr(e)


@pytest.mark.parametrize("target_kind", ["none", "list", "array"])
def test_top_k_ranks_equal_single_class_runs(topk, plain, target_kind):
    x = images(5)
    logits = run_plain(plain, x, -np.ones(5))[contract.OUTPUT_LOGITS]
    best = np.argsort(-logits, axis=1, kind="stable")[:, :K]
    if target_kind == "none":
        target, expected = None, best
    elif target_kind == "list":  # one list for every image: rank 0 predicted, class 7 at rank 1, class 2 at rank 2
        target = [-1, 7, 2]
        expected = np.stack([best[:, 0], np.full(5, 7), np.full(5, 2)], axis=1)
    else:
        target = -np.ones((5, K), np.int64)
        target[1, 2], target[3, 0] = 9, 4
        expected = np.where(target < 0, best, target)
    expl = Explainer(topk, device="cpu").explain(x, target=target)
    assert expl.k == K and len(expl) == 5
    np.testing.assert_array_equal(expl.classes, expected)
    np.testing.assert_allclose(expl.logits, logits, **TOL)
    assert expl.coefficients.shape == (5, K, 64) and expl.maps.shape == (5, K, 8, 8)
    assert expl.heatmaps.shape == (5, K, 32, 32) and expl.multipliers.shape == (5, K, 64, 8, 8)
    assert expl.activations.shape == (5, 64, 8, 8)
    for r in range(K):
        alone = run_plain(plain, x, expected[:, r])
        one = expl.rank(r)
        np.testing.assert_array_equal(one.classes, expected[:, r])
        for name in PER_CLASS:
            np.testing.assert_allclose(getattr(expl, FIELD[name])[:, r], alone[name], **TOL, err_msg=f"{name} rank {r}")
            np.testing.assert_allclose(getattr(one, FIELD[name]), alone[name], **TOL, err_msg=f"{name} rank {r}")
        np.testing.assert_allclose(one.activations, alone[contract.OUTPUT_ACTIVATIONS], **TOL)
    # the explained classes of the default target are the logits' ranking
    if target_kind == "none":
        np.testing.assert_array_equal(expl.classes, expl.top_k(K)[0])


def test_top_k_negative_int_means_all_predicted(topk):
    e = Explainer(topk, device="cpu")
    x = images(2, seed=3)
    np.testing.assert_array_equal(e.explain(x, target=-1).classes, e.explain(x).classes)


def test_top_k_target_validation(topk):
    e = Explainer(topk, device="cpu")
    x = images(4)
    with pytest.raises(ValueError, match=r"target=5: a top-k model \(k=3\) explains 3 classes per image"):
        e.explain(x, target=5)
    with pytest.raises(ValueError, match=r"shape \[k\] = \(3,\) or \[N, k\] = \(4, 3\) for a batch of 4.*got shape \(4,\)"):
        e.explain(x, target=[1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"got shape \(4, 2\)"):
        e.explain(x, target=np.zeros((4, 2), np.int64))
    with pytest.raises(ValueError, match=r"got shape \(3, 3\)"):
        e.explain(x, target=np.zeros((3, 3), np.int64))
    with pytest.raises(ValueError, match=r"target class 10 \(image index 2, rank 1\) is out of range \[0, 10\)"):
        t = -np.ones((4, 3), np.int64)
        t[2, 1] = 10
        e.explain(x, target=t)
    with pytest.raises(ValueError, match=r"target class 12 \(image index 0, rank 2\)"):
        e.explain(x, target=[0, 1, 12])
    with pytest.raises(ValueError, match=r"integer class indices, got dtype float64"):
        e.explain(x, target=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"not a rectangular array"):
        e.explain(x, target=[[0, 1, 2], [0, 1]])
    with pytest.raises(ValueError, match=r"target must be an int class index, got True"):
        e.explain(x, target=True)


def test_single_class_model_refuses_top_k_targets(plain):
    e = Explainer(plain, device="cpu")
    with pytest.raises(ValueError, match=r"got shape \(2, 3\); the model explains one class per image"):
        e.explain(images(2), target=np.zeros((2, 3), np.int64))


def test_top_k_indexing_and_chunks(topk):
    e = Explainer(topk, device="cpu")
    x = images(5, seed=4)
    full = e.explain(x, target=[-1, 3, -1])
    one = full[3]
    assert len(one) == 1 and one.k == K and one.heatmaps.shape == (1, K, 32, 32)
    np.testing.assert_array_equal(one.classes, full.classes[3:4])
    np.testing.assert_array_equal(full.rank(-1).heatmaps, full.heatmaps[:, K - 1])
    with pytest.raises(IndexError, match=r"rank 3 out of range for an explanation of 3 class"):
        full.rank(3)
    joined = Explanation.concatenate([e.explain(x[:2], target=[-1, 3, -1]), e.explain(x[2:], target=[-1, 3, -1])])
    for name in ("classes", "coefficients", "maps", "heatmaps", "activations", "multipliers"):
        np.testing.assert_allclose(getattr(joined, name), getattr(full, name), **TOL, err_msg=name)
    # explain_images chunks an [N, k] target (from a [k] list) like the batch
    display = [np.ascontiguousarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(5)]
    whole, _ = e.explain_images(display, target=[-1, 3, -1], batch_size=5)
    parts, _ = e.explain_images(display, target=[-1, 3, -1], batch_size=2)
    np.testing.assert_array_equal(parts.classes, whole.classes)
    np.testing.assert_allclose(parts.heatmaps, whole.heatmaps, **TOL)
    assert whole.classes[:, 1].tolist() == [3] * 5


# ---------------------------------------------------------------------------- several layers
@pytest.fixture(scope="module")
def multi(resnet20_cam):
    return resnet20_cam([L3, L2], raw=True)


def test_several_layers_properties(multi, resnet20_cam):
    e = Explainer(multi, device="cpu")
    assert e.target_layers == [L3, L2] and e.target_layer is None
    assert e.target_shapes == [(64, 8, 8), (32, 16, 16)] and e.fused and e.top_k is None
    assert e.outputs == (
        contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS,
        *[f"{n}_0" for n in contract.STANDARD_OUTPUTS[2:] + contract.RAW_OUTPUTS],
        *[f"{n}_1" for n in contract.STANDARD_OUTPUTS[2:] + contract.RAW_OUTPUTS],
        contract.OUTPUT_HEATMAP,
    )
    assert f"target_layers={[L3, L2]!r}" in repr(e)
    unfused = Explainer(resnet20_cam([L3, L2], fuse=False), device="cpu")
    assert not unfused.fused and contract.OUTPUT_HEATMAP not in unfused.outputs


def test_several_layers_equal_single_exports(multi, resnet20_cam):
    x = images(4, seed=1)
    target = np.array([-1, 3, -1, 9])
    expl = Explainer(multi, device="cpu").explain(x, target=target)
    assert len(expl.layers) == 2 and expl.fused and expl.target_layers == [L3, L2]
    singles = []
    for i, layer in enumerate([L3, L2]):
        alone = run_plain(resnet20_cam(layer, raw=True), x, target)
        singles.append(alone[contract.OUTPUT_HEATMAP])
        assert expl.layers[i].name == layer
        np.testing.assert_array_equal(expl.classes, alone[contract.OUTPUT_CLASS])
        for name, f in FIELD.items():
            np.testing.assert_allclose(getattr(expl.layers[i], f), alone[name], **TOL, err_msg=f"{name} layer {i}")
    # top-level fields: the first layer's, except the fused heatmap
    for f in ("coefficients", "maps", "activations", "multipliers"):
        assert getattr(expl, f) is getattr(expl.layers[0], f)
    np.testing.assert_allclose(expl.heatmaps, renormalised_mean(singles), atol=1e-5)
    assert not np.allclose(expl.heatmaps, expl.layers[0].heatmaps, atol=1e-3)
    # per-image indexing keeps the layers
    two = expl[2]
    assert len(two.layers) == 2 and two.fused
    np.testing.assert_array_equal(two.layers[1].maps, expl.layers[1].maps[2:3])
    np.testing.assert_array_equal(two.heatmaps, expl.heatmaps[2:3])


def test_several_layers_without_fusion(resnet20_cam):
    path = resnet20_cam([L3, L2], fuse=False)
    e = Explainer(path, device="cpu")
    x = images(3, seed=2)
    expl = e.explain(x)
    assert not expl.fused and expl.heatmaps is expl.layers[0].heatmaps
    np.testing.assert_allclose(expl.layers[1].heatmaps, run_plain(resnet20_cam(L2), x, -np.ones(3))[contract.OUTPUT_HEATMAP], **TOL)
    # without a fused output "onnxcam_heatmap" means every layer's heatmap
    lean = e.explain(x, outputs=[contract.OUTPUT_HEATMAP])
    assert lean.coefficients is None and lean.layers[1].maps is None
    np.testing.assert_array_equal(lean.heatmaps, expl.heatmaps)
    np.testing.assert_array_equal(lean.layers[1].heatmaps, expl.layers[1].heatmaps)


def test_several_layers_output_selection(multi, resnet20_cam):
    e = Explainer(multi, device="cpu")
    x = images(2)
    only = e.explain(x, outputs=[f"{contract.OUTPUT_MAP}_1"])
    assert only.layers[1].maps.shape == (2, 16, 16)
    assert only.layers[0].maps is None and only.maps is None and only.heatmaps is None
    fused = e.explain(x, outputs=[contract.OUTPUT_HEATMAP])  # the fused heatmap alone
    assert fused.heatmaps.shape == (2, 32, 32) and all(layer.heatmaps is None for layer in fused.layers)
    every = e.explain(x, outputs=[contract.OUTPUT_COEFFICIENTS])  # shorthand: every layer's
    assert [layer.coefficients.shape for layer in every.layers] == [(2, 64), (2, 32)]
    spy_names = e._check_outputs([contract.OUTPUT_MULTIPLIERS])
    assert spy_names == [contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS, f"{contract.OUTPUT_MULTIPLIERS}_0", f"{contract.OUTPUT_MULTIPLIERS}_1"]
    with pytest.raises(ValueError, match=r"unknown output 'onnxcam_map_2'; valid outputs are"):
        e.explain(x, outputs=["onnxcam_map_2"])
    lean = Explainer(resnet20_cam([L3, L2]), device="cpu")
    with pytest.raises(ValueError, match=r"no output 'onnxcam_activations_1'.*raw=True"):
        lean.explain(x, outputs=["onnxcam_activations_1"])
    with pytest.raises(ValueError, match=r"no output 'onnxcam_activations'.*raw=True"):
        lean.explain(x, outputs=[contract.OUTPUT_ACTIVATIONS])


def test_several_layers_top_k(resnet20_cam):
    path = resnet20_cam([L3, L2], top_k=2, method="gradcam")
    e = Explainer(path, device="cpu")
    assert e.top_k == 2 and e.method == "gradcam" and e.fused
    x = images(3, seed=5)
    expl = e.explain(x, target=[-1, 6])
    assert expl.k == 2 and expl.heatmaps.shape == (3, 2, 32, 32)
    for r in range(2):
        singles = []
        for i, layer in enumerate([L3, L2]):
            alone = run_plain(resnet20_cam(layer, method="gradcam"), x, expl.classes[:, r])
            singles.append(alone[contract.OUTPUT_HEATMAP])
            one = expl.rank(r).layers[i]
            for name in (contract.OUTPUT_COEFFICIENTS, contract.OUTPUT_MAP, contract.OUTPUT_HEATMAP):
                np.testing.assert_allclose(getattr(one, FIELD[name]), alone[name], **TOL, err_msg=f"{name} layer {i} rank {r}")
        np.testing.assert_allclose(expl.rank(r).heatmaps, renormalised_mean(singles), atol=1e-5)
    assert expl.classes[:, 1].tolist() == [6, 6, 6]


# ---------------------------------------------------------------------------- inconsistent metadata
def _edited(path: str, tmp_path, **changes) -> str:
    import onnx

    model = onnx.load(path)
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    out = tmp_path / "edited.onnx"
    onnx.save(model, str(out))
    return str(out)


def test_metadata_inconsistent_with_outputs(multi, topk, tmp_path):
    with pytest.raises(ValueError, match=r"'onnxcam.target_layer' must be a JSON list of the 2 target layer names"):
        Explainer(_edited(multi, tmp_path, **{contract.META_TARGET: json.dumps([L3])}), device="cpu")
    with pytest.raises(ValueError, match=r"'onnxcam.target_shape' must be a list of 2 \[K, h, w\]"):
        Explainer(_edited(multi, tmp_path, **{contract.META_TARGET_SHAPE: "[64, 8, 8]"}), device="cpu")
    with pytest.raises(ValueError, match=r"input 'onnxcam_target' has shape \['batch', 3\]; expected \[N, 2\]"):
        Explainer(_edited(topk, tmp_path, **{contract.META_TOP_K: "2"}), device="cpu")
    with pytest.raises(ValueError, match=r"'onnxcam.top_k' must be an integer in \[1, 10\], got 'x'"):
        Explainer(_edited(topk, tmp_path, **{contract.META_TOP_K: "x"}), device="cpu")
    listed = json.dumps([*contract.STANDARD_OUTPUTS, "onnxcam_map_7"])
    with pytest.raises(ValueError, match=r"'onnxcam.outputs' lists outputs the model lacks: \['onnxcam_map_7'\]"):
        Explainer(_edited(topk, tmp_path, **{contract.META_OUTPUTS: listed}), device="cpu")


# ---------------------------------------------------------------------------- the explain CLI
@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(7)
    d = tmp_path / "imgs"
    d.mkdir()
    for name in ("a", "b"):
        assert cv2.imwrite(str(d / f"{name}.png"), rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
    return d


def run_cli(capsys, *argv) -> tuple[int, str]:
    rc = main(["explain", *map(str, argv)])
    return rc, capsys.readouterr().err


def runtime_result(path: str, image) -> Explanation:
    expl, _ = Explainer(path, device="cpu").explain_images([image])
    return expl


def test_cli_top_k(tmp_path, capsys, topk, photos):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, topk, photos, "--out", out, "--device", "cpu", "--batch-size", 1)
    assert rc == 0, err
    expected = sorted(
        [f"{n}.json" for n in "ab"] + [f"{n}_top{r}_{kind}.png" for n in "ab" for r in (1, 2, 3) for kind in ("heatmap", "overlay")]
    )
    assert sorted(os.listdir(out)) == expected
    for name in "ab":
        record = json.loads((out / f"{name}.json").read_text())
        expl = runtime_result(topk, photos / f"{name}.png")
        assert record["top_k"] == K and record["method"] == "liftcam" and record["target_layers"] == [L3]
        assert "explained_class" not in record and "heatmap" not in record
        ranks = record["explained_classes"]
        assert [c["rank"] for c in ranks] == [1, 2, 3]
        assert [c["index"] for c in ranks] == expl.classes[0].tolist() == [c["index"] for c in record["top5"][:3]]
        for r, entry in enumerate(ranks):
            assert entry["heatmap"] == f"{name}_top{r + 1}_heatmap.png" and entry["overlay"] == f"{name}_top{r + 1}_overlay.png"
            png = cv2.imread(str(out / entry["heatmap"]))
            np.testing.assert_array_equal(png, colorize(expl.heatmaps[0, r], rgb=False))


def test_cli_top_k_refuses_class(tmp_path, capsys, topk, photos):
    rc, err = run_cli(capsys, topk, photos, "--out", tmp_path / "out", "--device", "cpu", "--class", 2)
    assert rc == 2
    assert "--class is not supported for a top-k model" in err and "top_k=3" in err
    assert not (tmp_path / "out").exists()


def test_cli_several_layers(tmp_path, capsys, multi, photos):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, multi, photos / "a.png", "--out", out, "--device", "cpu", "--class", 4)
    assert rc == 0, err
    assert sorted(os.listdir(out)) == ["a.json", "a_heatmap.png", "a_layer0_heatmap.png", "a_layer1_heatmap.png", "a_overlay.png"]
    record = json.loads((out / "a.json").read_text())
    assert record["target_layer"] is None and record["target_layers"] == [L3, L2] and record["fused"] is True
    assert record["explained_class"]["index"] == 4 and record["requested_class"] == 4 and record["top_k"] is None
    assert record["layer_heatmaps"] == [
        {"layer": 0, "target_layer": L3, "heatmap": "a_layer0_heatmap.png"},
        {"layer": 1, "target_layer": L2, "heatmap": "a_layer1_heatmap.png"},
    ]
    expl, _ = Explainer(multi, device="cpu").explain_images([photos / "a.png"], target=4)
    np.testing.assert_array_equal(cv2.imread(str(out / "a_heatmap.png")), colorize(expl.heatmaps[0], rgb=False))
    for i in range(2):
        np.testing.assert_array_equal(cv2.imread(str(out / f"a_layer{i}_heatmap.png")), colorize(expl.layers[i].heatmaps[0], rgb=False))


def test_cli_several_layers_top_k(tmp_path, capsys, resnet20_cam, photos):
    path = resnet20_cam([L3, L2], top_k=2)
    out = tmp_path / "out"
    rc, err = run_cli(capsys, path, photos / "b.png", "--out", out, "--device", "cpu")
    assert rc == 0, err
    files = ["b.json"] + [f"b_top{r}_{kind}.png" for r in (1, 2) for kind in ("heatmap", "overlay", "layer0_heatmap", "layer1_heatmap")]
    assert sorted(os.listdir(out)) == sorted(files)
    record = json.loads((out / "b.json").read_text())
    expl = runtime_result(path, photos / "b.png")
    second = record["explained_classes"][1]
    assert second["index"] == int(expl.classes[0, 1])
    assert second["layer_heatmaps"][1] == {"layer": 1, "target_layer": L2, "heatmap": "b_top2_layer1_heatmap.png"}
    np.testing.assert_array_equal(cv2.imread(str(out / "b_top2_layer1_heatmap.png")), colorize(expl.layers[1].heatmaps[0, 1], rgb=False))


def test_cli_layer_file_names_do_not_clash(tmp_path, capsys, multi):
    """``a.png``'s ``a_layer0_heatmap.png`` is also ``a_layer0.png``'s plain heatmap name."""
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("a", "a_layer0"):
        assert cv2.imwrite(str(d / f"{stem}.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = tmp_path / "out"
    rc, err = run_cli(capsys, multi, d / "a.png", d / "a_layer0.png", "--out", out, "--device", "cpu")
    assert rc == 0, err
    assert json.loads((out / "a_layer0_2.json").read_text())["input"] == str(d / "a_layer0.png")
    assert len(os.listdir(out)) == 10
    assert output_names(["a.png", "a_layer0.png"]) == ["a", "a_layer0"]  # the plain rule is unchanged


# ---------------------------------------------------------------------------- Explanation unit behaviour
def test_explanation_layers_without_models():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4)).astype(np.float32)
    layer = [LayerExplanation(name=f"L{i}", maps=rng.random((3, 2, 2)), heatmaps=rng.random((3, 8, 8))) for i in range(2)]
    fused = rng.random((3, 8, 8))
    e = Explanation(logits=logits, classes=np.zeros(3, np.int64), heatmaps=fused, layers=layer, fused=True)
    assert e.maps is layer[0].maps and e.heatmaps is fused and e.target_layers == ["L0", "L1"]
    assert "layers=2, fused=True" in repr(e)
    joined = Explanation.concatenate([e[:1], e[1:]])
    np.testing.assert_array_equal(joined.heatmaps, fused)
    np.testing.assert_array_equal(joined.layers[1].maps, layer[1].maps)
    single = Explanation(logits=logits, classes=np.zeros(3, np.int64), maps=layer[0].maps)
    assert single.rank(0) is single and single.k is None and single.layers[0].maps is single.maps
    with pytest.raises(ValueError, match="different target layers or fusion"):
        Explanation.concatenate([e, single])
    with pytest.raises(ValueError, match="layers must be a non-empty sequence"):
        Explanation(logits=logits, classes=np.zeros(3, np.int64), layers=())
