"""The runtime (and the explain CLI) must work where torch and onnx cannot be imported."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.isolation import run_blocked as _run

REPO = Path(__file__).resolve().parents[2]


def test_blocker_really_blocks():
    proc = _run("import onnx")
    assert proc.returncode != 0 and "blocked in this test" in proc.stderr


def test_runtime_end_to_end_without_torch_and_onnx(tiny_model_path, tmp_path):
    image = tmp_path / "img.png"
    code = """
    import sys, json
    import numpy as np, cv2
    import onnxcam
    import onnxcam.runtime as rt
    from onnxcam.runtime import Explainer, overlay, load_image
    assert onnxcam.Explainer is Explainer  # the lazy top-level API stays clean too
    cv2.imwrite(sys.argv[2], np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    e = Explainer(sys.argv[1], device="cpu")
    expl, display = e.explain_images([sys.argv[2], load_image(sys.argv[2])], target=[1, -1])
    picture = overlay(display[0], expl.heatmaps[0])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript"))
    print(json.dumps({"classes": expl.classes.tolist(), "shape": list(picture.shape), "leaked": leaked}))
    """
    proc = _run(code, tiny_model_path, str(image))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["classes"][0] == 1
    assert result["shape"] == [16, 16, 3]
    assert result["leaked"] == []


def test_cli_explain_without_torch_and_onnx(tiny_model_path, tmp_path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "x.png"), np.full((8, 8, 3), 200, np.uint8))
    out = tmp_path / "out"
    code = """
    import sys
    from onnxcam.cli_explain import main
    rc = main(["explain", sys.argv[1], sys.argv[2], "--out", sys.argv[3], "--device", "cpu"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript"))
    assert not leaked, leaked
    sys.exit(rc)
    """
    proc = _run(code, tiny_model_path, str(tmp_path / "x.png"), str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["x.json", "x_heatmap.png", "x_overlay.png"]


@pytest.mark.parametrize("module", ["onnxcam.runtime", "onnxcam.runtime.explainer", "onnxcam.runtime.images", "onnxcam.runtime.overlay", "onnxcam.cli_explain"])
def test_import_alone_pulls_nothing_heavy(module):
    proc = _run(
        f"""
        import sys, importlib
        importlib.import_module({module!r})
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript")))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_top_k_several_layers_without_torch_and_onnx(resnet20_cam, tmp_path):
    """A top-k, two-layer export (built here, with onnx) explained and CLI-rendered where onnx is blocked."""
    import cv2
    import numpy as np

    model = resnet20_cam(["/layer3/layer3.2/Relu_1_output_0", "/layer2/layer2.2/Relu_1_output_0"], top_k=2)
    cv2.imwrite(str(tmp_path / "x.png"), np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8))
    code = """
    import sys, json
    from onnxcam.runtime import Explainer
    from onnxcam.cli_explain import main
    e = Explainer(sys.argv[1], device="cpu")
    expl, _ = e.explain_images([sys.argv[2]], target=[-1, 5])
    rc = main(["explain", sys.argv[1], sys.argv[2], "--out", sys.argv[3], "--device", "cpu"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "onnxscript"))
    print(json.dumps({"rc": rc, "classes": expl.classes.tolist(), "layers": len(expl.layers), "leaked": leaked}))
    """
    proc = _run(code, model, str(tmp_path / "x.png"), str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and result["classes"][0][1] == 5 and result["layers"] == 2 and result["leaked"] == []
    assert len(os.listdir(tmp_path / "out")) == 1 + 2 * 4
