"""GraphBuilder: naming and renaming of the nodes the exporter adds."""

from __future__ import annotations

from onnx import helper

from onnxcam.exporters.builder import GraphBuilder


def empty_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [], [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_rename_rewrites_the_producer_and_every_reader():
    b = GraphBuilder(empty_model(), 17)
    t = b.op("Relu", ["y"], "t")
    u = b.op("Add", [t, t], "u")
    b.static_shapes[t] = (2, 3)
    assert b.rename(t, "wanted") == "wanted"
    assert list(b.nodes[0].output) == ["wanted"] and list(b.nodes[1].input) == ["wanted", "wanted"]
    assert b.static_shapes == {"wanted": (2, 3)}
    assert u == b.nodes[1].output[0]


def test_rename_leaves_tensors_it_did_not_add_alone():
    b = GraphBuilder(empty_model(), 17)
    b.op("Relu", ["y"], "t")
    assert b.rename("y", "wanted") is None  # produced by the source model
    assert b.rename(b.const(1.0, "c"), "wanted") is None  # an initializer
    assert list(b.nodes[0].input) == ["y"]
