"""Every module of ``onnxcam.metrics`` imports, and the metrics run, where torch and onnx cannot be imported.

Modules are discovered with ``pkgutil.walk_packages``, so modules added later (``shapley.py``) are
covered without editing this test.
"""

from __future__ import annotations

import json
import pkgutil
import sys
from pathlib import Path

from tests.isolation import run_blocked as _run

REPO = Path(__file__).resolve().parents[2]
METRICS = REPO / "onnxcam" / "metrics"


def _modules_on_disk() -> list[str]:
    found = ["onnxcam.metrics"]
    found += [m.name for m in pkgutil.walk_packages([str(METRICS)], prefix="onnxcam.metrics.")]
    return sorted(found)


def test_the_blocker_blocks():
    proc = _run("import onnx")
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr


def test_every_metrics_module_imports_without_torch_and_onnx():
    code = """
    import importlib, json, pkgutil, sys
    import onnxcam.metrics as package
    imported = ["onnxcam.metrics"]
    for info in pkgutil.walk_packages(package.__path__, prefix="onnxcam.metrics."):
        importlib.import_module(info.name)
        imported.append(info.name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript", "torchvision"))
    print(json.dumps({"imported": sorted(imported), "leaked": leaked}))
    """
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = _modules_on_disk()
    assert {"onnxcam.metrics.faithfulness", "onnxcam.metrics.pointing", "onnxcam.metrics.statistics"} <= set(expected)
    assert result["imported"] == expected
    assert result["leaked"] == []


def _tiny_classifier(path: Path) -> str:
    """A plain ONNX classifier [N,3,16,16] -> Conv 3x3 -> Relu -> GlobalAveragePool -> Gemm -> logits [N,4]."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 2.0, (4, 6)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["A"]),
        helper.make_node("GlobalAveragePool", ["A"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_metrics_run_on_a_scorer_without_torch_and_onnx(tmp_path):
    """A Scorer on a tiny plain ONNX classifier (written here, with onnx) feeds every metric."""
    plain_model_path = _tiny_classifier(tmp_path / "tiny.onnx")
    code = f"""
    import json, sys
    import numpy as np
    from onnxcam.runtime import Scorer
    from onnxcam.metrics import (agreement, average_drop_increase, bootstrap_ci, deletion_insertion,
                                 energy_pointing_game, pointing_game)
    scorer = Scorer({plain_model_path!r}, device="cpu", batch_size=8)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    maps = np.random.default_rng(1).uniform(size=(2, 16, 16))
    classes = scorer(x).argmax(axis=1)
    curves = deletion_insertion(scorer, x, maps, classes, steps=4)
    drop = average_drop_increase(scorer, x, maps, classes)
    hits = pointing_game(maps, [[(0, 0, 8, 8)], [(8, 8, 16, 16)]])
    energy = energy_pointing_game(maps, [[(0, 0, 8, 8)], [(8, 8, 16, 16)]])
    values = [*curves.deletion.aucs, *curves.insertion.aucs, drop.average_drop, *energy,
              bootstrap_ci(curves.deletion.aucs)[0], agreement(maps[0].ravel(), maps[1].ravel())["cosine"]]
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript", "torchvision"))
    print(json.dumps({{"finite": bool(np.all(np.isfinite(values))), "hits": hits.tolist(), "leaked": leaked}}))
    """
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finite"] and len(result["hits"]) == 2 and result["leaked"] == []
