"""Metadata read before the session exists (no onnx), and the exporter's session-config hint."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam import contract
from onnxcam.exporters.session_hints import shared_matrix_weights
from onnxcam.runtime import Explainer
from onnxcam.runtime.model_metadata import read_metadata_props, recommended_session_config

HINT = {"session.disable_prepacking": "1"}


def big_classifier(hidden: int) -> onnx.ModelProto:
    """conv → relu (target) → flatten → Gemm [8·32·32 → hidden] → relu → Gemm [hidden → 10]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.01, (hidden, 8 * 32 * 32)).astype(np.float32), "fc1_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (10, hidden)).astype(np.float32), "fc2_w"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["a"]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("Gemm", ["f", "fc1_w"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "fc2_w"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_reader_equals_onnx_on_an_exported_model(tmp_path):
    cam = onnxcam.export(big_classifier(64), "a", class_names=[f"class {i} é" for i in range(10)])
    path = tmp_path / "m.onnx"
    onnxcam.save(cam, path)
    expected = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert read_metadata_props(path) == expected
    assert read_metadata_props(path.read_bytes()) == expected
    assert contract.META_SESSION_CONFIG not in expected  # 2 MiB of weights: no hint


def test_reader_rejects_garbage_and_hints_default_to_empty(tmp_path):
    with pytest.raises(ValueError):
        read_metadata_props(b"\x0f\x00")  # wire type 7 does not exist
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\xff\xff")
    assert recommended_session_config(bad) == {}
    assert recommended_session_config(tmp_path / "missing.onnx") == {}


def test_large_shared_classifier_weight_gets_the_prepacking_hint(tmp_path):
    model = big_classifier(1024)  # fc1_w: 32 MiB, read forward and by the sweep
    cam = onnxcam.export(model, "a")
    assert set(shared_matrix_weights(cam.graph)) == {"fc1_w"}
    meta = {p.key: p.value for p in cam.metadata_props}
    assert json.loads(meta[contract.META_SESSION_CONFIG]) == HINT
    switchable = onnxcam.export(model, "a", switchable=True)  # the sweep's Gemm sits inside the If branch
    assert json.loads({p.key: p.value for p in switchable.metadata_props}[contract.META_SESSION_CONFIG]) == HINT
    path = tmp_path / "m.onnx"
    onnxcam.save(cam, path)
    assert recommended_session_config(path) == HINT
    explainer = Explainer(str(path), device="cpu")
    assert explainer.session_config == HINT
    mine = Explainer(str(path), device="cpu", session_config={"session.disable_prepacking": "0"})
    assert mine.session_config == {"session.disable_prepacking": "0"}
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    a, b = explainer.explain(x), mine.explain(x)
    np.testing.assert_allclose(a.coefficients, b.coefficients, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="session_config must be a mapping"):
        Explainer(str(path), device="cpu", session_config=[("a", "b")])


def test_real_small_heads_get_no_hint(models_dir):
    for name in ("cifar10_resnet20.onnx", "mobilenetv2_imagenet_fp32.onnx"):
        cam = onnxcam.export(str(models_dir / name))
        assert contract.META_SESSION_CONFIG not in {p.key for p in cam.metadata_props}, name
