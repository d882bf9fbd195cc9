"""Models from torch's dynamo exporter (``torch.onnx.export(..., dynamo=True)``), weights in an external
data file, through the ONNX front door, checked against the float64 reference like the coverage matrix.

The dynamo exporter names tensors after aten ops (``relu_16``, ``silu_48``), not modules, and writes
``model.onnx`` + ``model.onnx.data``; the automatic target must still be the last feature map, equal to
the module's output, and the explanation must match the reference (ALGORITHM.md §4 tolerances).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

import onnxcam  # noqa: E402
from benchmarks.coverage import _run, _session, activation_error, build, compare, explicit_targets, family, verdict  # noqa: E402
from onnxcam import contract  # noqa: E402
from onnxcam.exporters import ExportError  # noqa: E402

# (family, module whose output the automatic target must be)
CASES = [("resnet18", "layer4"), ("efficientnet_b0", "features")]


def dynamo_export(model, size: int, folder) -> str:
    path = os.path.join(folder, "model.onnx")
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), path, dynamo=True, external_data=True,
                      input_names=["input"], output_names=["logits"],
                      dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    return path


@pytest.mark.parametrize("name,layer", CASES)
def test_dynamo_export_with_external_data_matches_reference(name, layer, tmp_path):
    from tests.reference.functional import deeplift_reference

    model, model64 = build(name)
    size = family(name).size
    path = dynamo_export(model, size, tmp_path)
    assert os.path.getsize(path + ".data") > os.path.getsize(path)  # the weights really are external
    cam = onnxcam.export(path, raw=True)
    onnx.checker.check_model(cam, full_check=True)
    sess = _session(cam)
    n = 3
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(4)).numpy()
    targets = np.concatenate([-np.ones(n, np.int64), explicit_targets(n)])
    out = _run(sess, np.concatenate([x, x]), targets)
    assert activation_error(model, layer, x, out[contract.OUTPUT_ACTIVATIONS][:n]) <= 1e-5
    ref = deeplift_reference(model64, layer, out[contract.OUTPUT_ACTIVATIONS], targets, (size, size))
    errors = compare(out, ref)
    assert not verdict(errors), (verdict(errors), errors)


def test_unloaded_external_data_is_a_clear_error(tmp_path):
    model, _ = build("resnet18")
    path = dynamo_export(model, family("resnet18").size, tmp_path)
    proto = onnx.load(path, load_external_data=False)
    with pytest.raises(ExportError, match=r"stored in the external data file 'model.onnx.data' and was not loaded"):
        onnxcam.export(proto)
    os.remove(path + ".data")
    with pytest.raises(ExportError, match=r"cannot read ONNX model .*model.onnx \(or its external data files\)"):
        onnxcam.export(path)
