"""Every way an export can be refused says which node, tensor or setting, and why."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxcam
from onnxcam.exporters import ExportError


def tiny_cnn(head_ops=("Relu",), spatial=(8, 8), batch="N", extra_nodes=(), opset=17, outputs=None, kernel=3, stride=1):
    """input [N,3,H,W] → Conv(4) → `A` → head_ops... → GlobalAveragePool → Flatten → Gemm → logits [N,5]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, kernel, kernel)).astype(np.float32), "w_conv"),
        numpy_helper.from_array(rng.standard_normal((5, 4)).astype(np.float32), "w_fc"),
    ]
    pad = kernel // 2
    nodes = [helper.make_node("Conv", ["input", "w_conv"], ["A"], pads=[pad] * 4, strides=[stride] * 2, name="conv")]
    current = "A"
    for i, op in enumerate(head_ops):
        nodes.append(helper.make_node(op, [current], [f"h{i}"], name=f"head_{op.lower()}_{i}"))
        current = f"h{i}"
    nodes += list(extra_nodes)
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w_fc"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *spatial])],
        outputs or [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_tiny_model_exports():
    cam = onnxcam.export(tiny_cnn(), "A")
    onnx.checker.check_model(cam, full_check=True)


def test_unsupported_operator_names_node_and_op():
    model = tiny_cnn(head_ops=("Relu", "LpNormalization"))
    with pytest.raises(ExportError) as info:
        onnxcam.export(model, "A")
    message = str(info.value)
    assert "head_lpnormalization_1" in message and "(LpNormalization)" in message
    assert "Supported operators:" in message and "Relu" in message and "MaxPool" in message


def test_custom_domain_operator_is_refused():
    model = tiny_cnn(head_ops=())
    model.graph.node.insert(1, helper.make_node("Swish", ["A"], ["s"], domain="com.example", name="custom_swish"))
    model.graph.node[2].input[0] = "s"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ExportError, match=r"custom_swish.*Swish in domain 'com.example'"):
        onnxcam.export(model, "A")


def test_skip_connection_around_target():
    # A2 = Relu(A); head adds A back: cutting at A2 leaves A reaching the head around it.
    model = tiny_cnn(head_ops=())
    nodes = list(model.graph.node)
    relu = helper.make_node("Relu", ["A"], ["A2"], name="relu")
    add = helper.make_node("Add", ["A2", "A"], ["summed"], name="residual_add")
    nodes[1].input[0] = "summed"
    del model.graph.node[:]
    model.graph.node.extend([nodes[0], relu, add, *nodes[1:]])
    with pytest.raises(ExportError, match=r"does not separate the network: node 'residual_add' \(Add\).*reads 'A'"):
        onnxcam.export(model, "A2")


def test_unknown_target_suggests_close_names():
    with pytest.raises(ExportError, match=r"'h' is not produced.*did you mean 'h0'"):
        onnxcam.export(tiny_cnn(), "h")


def test_target_must_be_activation_not_input_or_weight():
    with pytest.raises(ExportError, match="constant or the model input"):
        onnxcam.export(tiny_cnn(), "input")
    with pytest.raises(ExportError, match="constant or the model input"):
        onnxcam.export(tiny_cnn(), "w_conv")


def test_target_must_be_4d():
    with pytest.raises(ExportError, match=r"'flat' has shape \[1, 4\].*4-D activation"):
        onnxcam.export(tiny_cnn(), "flat")


def test_dynamic_spatial_size_needs_input_size():
    model = tiny_cnn(spatial=("H", "W"))
    with pytest.raises(ExportError, match=r"dynamic spatial size.*input_size=\(H, W\)"):
        onnxcam.export(model, "A")
    cam = onnxcam.export(model, "A", input_size=(10, 12))
    meta = {p.key: p.value for p in cam.metadata_props}
    assert meta["onnxcam.input_shape"] == "[3, 10, 12]"


def test_input_size_contradicting_model():
    with pytest.raises(ExportError, match=r"contradicts the model's static height 8"):
        onnxcam.export(tiny_cnn(), "A", input_size=(9, 8))


def test_unknown_output_and_preset():
    with pytest.raises(ExportError, match=r"output 'probs' is not a graph output; the model's outputs are: logits"):
        onnxcam.export(tiny_cnn(), "A", output="probs")
    with pytest.raises(ExportError, match=r"unknown preprocessing preset 'imagenett'; presets: imagenet"):
        onnxcam.export(tiny_cnn(), "A", preprocessing="imagenett")
    with pytest.raises(ExportError, match=r"unknown preprocessing keys \['colour'\]"):
        onnxcam.export(tiny_cnn(), "A", preprocessing={"colour": "RGB"})


def test_two_inputs_refused():
    model = tiny_cnn()
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1]))
    with pytest.raises(ExportError, match="exactly one input.*input, mask"):
        onnxcam.export(model, "A")


def test_missing_file_and_garbage_file(tmp_path):
    with pytest.raises(ExportError, match="model file not found: .*nope.onnx"):
        onnxcam.export(tmp_path / "nope.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ExportError, match="cannot read ONNX model .*garbage.onnx"):
        onnxcam.export(garbage)


def test_exporting_twice_is_refused():
    cam = onnxcam.export(tiny_cnn(), "A")
    with pytest.raises(ExportError, match="exported by onnxcam already"):
        onnxcam.export(cam, "A")


def test_source_model_is_not_modified():
    model = tiny_cnn()
    before = model.SerializeToString()
    onnxcam.export(model, "A")
    assert model.SerializeToString() == before


def test_save_refuses_overwrite_and_is_atomic(tmp_path):
    cam = onnxcam.export(tiny_cnn(), "A")
    path = tmp_path / "out.cam.onnx"
    path.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        onnxcam.save(cam, path)
    assert path.read_bytes() == b"user data"
    onnxcam.save(cam, path, overwrite=True)
    assert onnx.load(str(path)).graph.output[-1].name == "onnxcam_heatmap"
    assert sorted(os.listdir(tmp_path)) == ["out.cam.onnx"]


def test_low_opset_model_is_converted():
    model = tiny_cnn(opset=11)
    cam = onnxcam.export(model, "A")
    assert next(o.version for o in cam.opset_import if o.domain == "") == 17


def test_cli_export_errors(tmp_path, capsys):
    from onnxcam.cli import main

    src = tmp_path / "tiny.onnx"
    onnx.save(tiny_cnn(head_ops=("LpNormalization",)), str(src))
    assert main(["export", str(src), "--layer", "A", "-o", str(tmp_path / "o.onnx")]) == 2
    assert "(LpNormalization) has no DeepLIFT backward rule" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()
    assert main(["export", str(src), "--preprocessing", "{bad json", "-o", str(tmp_path / "o.onnx")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_constant_nonzero_map_gives_zero_heatmap():
    """A constant, positive 5x7 map upscaled to 37x41 must give an all-zero heatmap.

    onnxruntime's half-pixel resize of a constant is not exactly constant (spans of ~1e-7 relative);
    normalising that noise would draw structure where the explanation has none.
    """
    import onnxruntime as ort

    model = tiny_cnn(head_ops=("Relu",), spatial=(37, 41), kernel=1, stride=8)
    cam = onnxcam.export(model, "h0")
    sess = ort.InferenceSession(cam.SerializeToString(), providers=["CPUExecutionProvider"])
    # A spatially constant image through a 1x1 convolution gives spatially constant activations.
    x = np.broadcast_to(np.random.default_rng(5).standard_normal((16, 3, 1, 1)) * 100, (16, 3, 37, 41)).astype(np.float32)
    cam_map, heat = sess.run(["onnxcam_map", "onnxcam_heatmap"], {"input": x, "onnxcam_target": np.full(16, -1)})
    positive = cam_map.reshape(16, -1).max(axis=1) > 0
    assert positive.any() and np.all(cam_map.min(axis=(1, 2)) == cam_map.max(axis=(1, 2)))
    assert np.all(heat == 0)


def test_export_torch_target_is_the_module_output_even_before_an_inplace_op():
    """DenseNet-style: F.relu(x, inplace=True) right after the target module must not leak into A."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, x):
            y = torch.nn.functional.relu(self.norm(self.conv(x)), inplace=True)
            return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))

    net = Net().eval()
    with torch.no_grad():
        net.norm.running_mean.normal_()
    cam = onnxcam.export_torch(net, torch.zeros(1, 3, 8, 8), net.norm, raw=True)
    x = torch.randn(2, 3, 8, 8)
    sess = ort.InferenceSession(cam.SerializeToString(), providers=["CPUExecutionProvider"])
    (a,) = sess.run(["onnxcam_activations"], {"input": x.numpy(), "onnxcam_target": np.array([-1, -1])})
    with torch.no_grad():
        expected = net.norm(net.conv(x)).numpy()
    assert (expected < 0).any()  # the ReLU would have changed it
    np.testing.assert_allclose(a, expected, rtol=1e-5, atol=1e-5)
    assert not net.norm._forward_hooks  # the capture hook is removed after export
