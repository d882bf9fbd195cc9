"""``export_head``: the network after the target layer as a standalone model ``A → logits``.

Checked against plain onnxruntime runs of the source model (a tiny hand-built model here, the real
MobileNetV2 and ResNet-20 of ../shared when present): the head fed the model's own target activations
returns the model's explained logits, at any batch size.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam import contract
from onnxcam.exporters import ExportError, export_head
from onnxcam.runtime import Explainer
from tests.exporters.helpers import session

# -------------------------------------------------------------------------------- tiny model
C_IN, H, W, K1, K2, CLASSES = 3, 8, 8, 4, 5, 6


def tiny_model(flatten: str = "shape", seed: int = 0) -> onnx.ModelProto:
    """x → Conv → Relu = ``a`` → Conv → Relu = ``b``; ``r = Conv1x1(a) + b`` → GAP → reshape → Gemm → Softmax.

    ``flatten="shape"``: the reshape target is ``Concat(Unsqueeze(Shape(gap)[0]), [-1])`` (batch-dependent
    shape arithmetic, as torch's ``x.view(x.size(0), -1)``); ``"static"``: ``Concat([-1], [K2])`` (constant
    arithmetic the head export folds).
    """
    rng = np.random.default_rng(seed)
    init = [
        numpy_helper.from_array(rng.standard_normal((K1, C_IN, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(K1).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((K2, K1, 3, 3)).astype(np.float32) * 0.5, "w2"),
        numpy_helper.from_array(rng.standard_normal((K2, K1, 1, 1)).astype(np.float32) * 0.5, "w3"),
        numpy_helper.from_array(rng.standard_normal((CLASSES, K2)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a_conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a_conv"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["b_conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b_conv"], ["b"]),
        helper.make_node("Conv", ["a", "w3"], ["a_proj"]),
        helper.make_node("Add", ["a_proj", "b"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["gap"]),
        helper.make_node("Constant", [], ["minus_one"], value=numpy_helper.from_array(np.array([-1], np.int64))),
    ]
    if flatten == "shape":
        nodes += [
            helper.make_node("Shape", ["gap"], ["gap_shape"]),
            helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
            helper.make_node("Gather", ["gap_shape", "zero"], ["n"]),
            helper.make_node("Constant", [], ["axis0"], value=numpy_helper.from_array(np.array([0], np.int64))),
            helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
            helper.make_node("Concat", ["n1", "minus_one"], ["flat_shape"], axis=0),
        ]
    else:
        nodes += [
            helper.make_node("Constant", [], ["k2"], value=numpy_helper.from_array(np.array([K2], np.int64))),
            helper.make_node("Concat", ["minus_one", "k2"], ["flat_shape"], axis=0),
        ]
    nodes += [
        helper.make_node("Reshape", ["gap", "flat_shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", C_IN, H, W])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    return out


def _run_head(head: onnx.ModelProto, activations: np.ndarray) -> np.ndarray:
    return session(head).run([contract.HEAD_OUTPUT], {contract.HEAD_INPUT: activations})[0]


def _images(n: int, shape=(C_IN, H, W), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


# -------------------------------------------------------------------------------- tiny-model tests
@pytest.mark.parametrize("flatten", ["shape", "static"])
@pytest.mark.parametrize("target", ["a", "r"])
def test_head_reproduces_the_models_logits_at_any_batch(flatten, target):
    model = tiny_model(flatten)
    head = export_head(model, target)
    full = session(_with_outputs(model, [target, "logits"]))
    for n in (1, 3, 7):
        activations, logits = full.run(None, {"x": _images(n, seed=n)})
        out = _run_head(head, activations)
        assert out.shape == (n, CLASSES) and out.dtype == np.float32
        np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5)  # the Softmax's input, not probabilities


def test_head_interface_checker_and_shape_inference():
    head = export_head(tiny_model(), "a")
    onnx.checker.check_model(head, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(head, check_type=True, strict_mode=True)
    (inp,), (out,) = inferred.graph.input, inferred.graph.output
    assert inp.name == contract.HEAD_INPUT and out.name == contract.HEAD_OUTPUT
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", K1, H, W] and out_dims == ["batch", CLASSES]  # the model's batch axis, dynamic
    meta = {p.key: p.value for p in head.metadata_props}
    assert meta[contract.META_TARGET] == "a" and meta[contract.META_TARGET_SHAPE] == f"[{K1}, {H}, {W}]"
    assert meta[contract.META_EXPLAINED] == "logits" and meta[contract.META_NUM_CLASSES] == str(CLASSES)
    assert contract.META_VERSION not in meta  # not an explaining export: onnxcam.export accepts it as a model


def test_shape_arithmetic_is_kept_when_batch_dependent_and_folded_when_static():
    dynamic = {n.op_type for n in export_head(tiny_model("shape"), "a").graph.node}
    assert {"Shape", "Gather", "Concat"} <= dynamic  # x.view(x.size(0), -1) must follow the batch
    static = export_head(tiny_model("static"), "a")
    assert "Concat" not in {n.op_type for n in static.graph.node}
    folded = {i.name: numpy_helper.to_array(i) for i in static.graph.initializer}
    assert folded["flat_shape"].tolist() == [-1, K2]
    # only what the head reads travels: the body's weights do not
    assert "w1" not in folded and "b1" not in folded


def test_auto_target_is_the_exporters():
    model = tiny_model()
    head = export_head(model)
    meta = {p.key: p.value for p in head.metadata_props}
    cam = onnxcam.export(model)
    assert meta[contract.META_TARGET] == {p.key: p.value for p in cam.metadata_props}[contract.META_TARGET] == "r"
    assert [d.dim_value for d in head.graph.input[0].type.tensor_type.shape.dim[1:]] == [K2, H, W]


def test_head_of_a_raw_export_activations_gives_the_exports_logits():
    model = tiny_model()
    explainer = Explainer(onnxcam.export(model, target="a", raw=True).SerializeToString(), device="cpu")
    expl = explainer.explain(_images(4))
    np.testing.assert_allclose(_run_head(export_head(model, "a"), expl.activations), expl.logits, rtol=1e-5, atol=1e-5)


def test_skip_connection_target_raises_the_exporters_error():
    model = tiny_model()
    with pytest.raises(ExportError, match="does not separate the network") as from_export:
        onnxcam.export(model, target="b")
    with pytest.raises(ExportError) as from_head:
        export_head(model, "b")
    assert str(from_head.value) == str(from_export.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(target="nope"), "not produced by any node"),
        (dict(target="x"), "constant or the model input"),
        (dict(target=["a", "r"]), "one target tensor name"),
        (dict(target="a", output="missing"), "not a graph output"),
    ],
)
def test_errors_name_the_problem(kwargs, message):
    with pytest.raises(ExportError, match=message):
        export_head(tiny_model(), **kwargs)


def test_top_level_api():
    assert onnxcam.export_head is export_head


# -------------------------------------------------------------------------------- real models
MOBILENET_14 = "/features/features.14/conv/conv.2/Conv_output_0"
RESNET20_LAYER2 = "/layer2/layer2.2/Relu_1_output_0"


@pytest.mark.parametrize(
    "file, target, shape",
    [
        ("mobilenetv2_imagenet_fp32.onnx", MOBILENET_14, (160, 7, 7)),
        ("cifar10_resnet20.onnx", RESNET20_LAYER2, (32, 16, 16)),
    ],
)
def test_real_heads_reproduce_the_raw_exports_logits(models_dir, file, target, shape):
    path = models_dir / file
    head = export_head(path, target)
    explainer = Explainer(onnxcam.export(path, target=target, raw=True).SerializeToString(), device="cpu")
    for n in (1, 3):
        expl = explainer.explain(_images(n, explainer.input_shape, seed=n))
        assert expl.activations.shape == (n, *shape)
        out = _run_head(head, expl.activations)
        scale = max(1.0, float(np.abs(expl.logits).max()))
        assert out.shape == expl.logits.shape
        assert float(np.abs(out - expl.logits).max()) <= 1e-5 * scale


def test_real_skip_connection_target_raises_the_exporters_error(models_dir):
    path = models_dir / "cifar10_resnet20.onnx"
    inside = "/layer3/layer3.0/conv1/Conv_output_0"
    with pytest.raises(ExportError, match="skip connection") as from_export:
        onnxcam.export(path, target=inside)
    with pytest.raises(ExportError) as from_head:
        export_head(path, inside)
    assert str(from_head.value) == str(from_export.value)
