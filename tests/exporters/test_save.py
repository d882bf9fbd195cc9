"""onnxcam.save: atomic, refuses to overwrite unasked, and gives the file the usual permissions."""

from __future__ import annotations

import os
import stat

import onnx
import pytest
from onnx import TensorProto, helper

import onnxcam


def _model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_save_mode_follows_umask_and_no_temp_left(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.onnx"
        onnxcam.save(_model(), path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        os.umask(0o077)
        onnxcam.save(_model(), path, overwrite=True)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    with pytest.raises(Exception, match="exists"):
        onnxcam.save(_model(), path)
