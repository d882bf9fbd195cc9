"""``switchable=True``: the explanation behind an If on ``onnxcam_explain`` (serving without paying twice)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxcam
from onnxcam import contract
from onnxcam.runtime import Explainer, Scorer


def _session(model: onnx.ModelProto, profile_prefix: str | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _executed_nodes(session: ort.InferenceSession, feeds: dict) -> int:
    session.run(None, feeds)
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    return sum(1 for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))


@pytest.fixture(scope="module")
def resnet20(models_dir):
    return str(models_dir / "cifar10_resnet20.onnx")


@pytest.mark.parametrize("kwargs", [{}, {"raw": True, "top_k": 2}, {"target": ["/layer3/layer3.2/Relu_1_output_0",
                                                                             "/layer2/layer2.2/Relu_1_output_0"]}])
def test_explain_true_equals_the_plain_export_and_false_skips_it(resnet20, kwargs):
    plain = onnxcam.export(resnet20, **kwargs)
    switch = onnxcam.export(resnet20, switchable=True, **kwargs)
    assert [i.name for i in switch.graph.input] == [i.name for i in plain.graph.input] + [contract.INPUT_EXPLAIN]
    assert [o.name for o in switch.graph.output] == [o.name for o in plain.graph.output]
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    k = kwargs.get("top_k")
    target = np.full((3,) if k is None else (3, k), -1, np.int64)
    feeds = {"input": x, contract.INPUT_TARGET: target}
    names = [o.name for o in plain.graph.output]
    expected = _session(plain).run(names, feeds)
    sess = _session(switch)
    on = sess.run(names, {**feeds, contract.INPUT_EXPLAIN: np.array(True)})
    for name, a, b in zip(names, on, expected):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=name)
    off = sess.run(names, {**feeds, contract.INPUT_EXPLAIN: np.array(False)})
    always = {"output", contract.OUTPUT_LOGITS, contract.OUTPUT_CLASS} | {o.name for o in onnx.load(resnet20).graph.output}
    for name, a, b in zip(names, off, expected):
        if name in always:
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            assert a.shape == (0, *b.shape[1:]) and a.dtype == b.dtype, name


def test_explain_false_runs_only_the_forward_pass(resnet20, tmp_path):
    original = onnx.load(resnet20)
    switch = onnxcam.export(resnet20, switchable=True)
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    feeds = {"input": x, contract.INPUT_TARGET: np.full(2, -1, np.int64)}
    floor = _executed_nodes(_session(original, str(tmp_path / "floor")), {"input": x})
    off = _executed_nodes(_session(switch, str(tmp_path / "off")), {**feeds, contract.INPUT_EXPLAIN: np.array(False)})
    on = _executed_nodes(_session(switch, str(tmp_path / "on")), {**feeds, contract.INPUT_EXPLAIN: np.array(True)})
    # off: the forward, the class argmax and the If with its else-branch constants; on: the whole sweep too
    assert off <= floor + 12, (floor, off, on)
    assert on >= off + 20, (floor, off, on)


def test_runtime_switch(resnet20, tmp_path):
    path = tmp_path / "r20.switch.onnx"
    onnxcam.save(onnxcam.export(resnet20, switchable=True, preprocessing="cifar10"), path)
    explainer = Explainer(str(path), device="cpu")
    plain = Explainer(onnxcam.export(resnet20).SerializeToString(), device="cpu")
    assert explainer.switchable and not plain.switchable
    x = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(np.float32)
    expl = explainer.explain(x)
    np.testing.assert_allclose(expl.heatmaps, plain.explain(x).heatmaps, atol=1e-6)
    np.testing.assert_array_equal(explainer.predict(x), expl.logits)
    np.testing.assert_array_equal(plain.predict(x), expl.logits)
    np.testing.assert_allclose(Scorer(str(path))(x), Scorer(resnet20)(x), atol=1e-6)


def test_cli_switchable(resnet20, tmp_path):
    from onnxcam.cli import main

    out = tmp_path / "m.onnx"
    assert main(["export", resnet20, "-o", str(out), "--switchable"]) == 0
    assert contract.INPUT_EXPLAIN in [i.name for i in onnx.load(str(out)).graph.input]
