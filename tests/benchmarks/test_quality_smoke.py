"""Smoke test of the faithfulness benchmark (``python -m benchmarks.quality``) on ResNet-20.

Runs the command line in a subprocess on 2 photos, 2 methods (LIFT-CAM and Score-CAM) and 4
deletion/insertion steps (about 10 s), then checks the JSON's structure, that every figure is finite,
and that the markdown has a row per method. No figure is asserted beyond real invariants.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.quality import centre_maps, evenly_spaced  # noqa: E402

METRICS = ("average_drop", "increase_in_confidence", "deletion_auc", "insertion_auc")


def test_evenly_spaced_and_centre_helpers():
    assert evenly_spaced(20, 100)[:3] == [0, 5, 10] and evenly_spaced(20, 100)[-1] == 99
    assert len(evenly_spaced(20, 100)) == 20 and evenly_spaced(5, 3) == [0, 1, 2] and evenly_spaced(1, 9) == [0]
    bump = centre_maps(1, 5, 7)[0]
    assert bump.argmax() == 2 * 7 + 3 and bump[2, 3] == 1.0


def test_quality_benchmark_runs_and_writes_finite_results(models_dir, tmp_path):
    if not (models_dir / "cifar10_resnet20.onnx").is_file():
        pytest.skip("cifar10_resnet20.onnx not found")
    out = tmp_path / "quality"
    env = dict(os.environ, ONNXCAM_SHARED=str(models_dir.parent))
    command = [sys.executable, "-m", "benchmarks.quality", "--models", "resnet20", "--methods", "liftcam,scorecam",
               "--images", "2", "--steps", "4", "--resamples", "200", "--out", str(out)]
    proc = subprocess.run(command, cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "quality: resnet20: scorecam" in proc.stderr  # progress goes to stderr
    assert sorted(p.name for p in out.iterdir()) == ["quality.json", "quality.md"]  # no temporary leftovers

    results = json.loads((out / "quality.json").read_text())
    assert results["schema"] == "onnxcam.quality/1" and results["complete"] is True
    assert results["settings"]["steps"] == 4 and list(results["models"]) == ["resnet20"]
    model = results["models"]["resnet20"]
    assert len(model["images"]) == len(model["classes"]) == 2 and model["explained"] == "predicted"
    assert model["classes"] == model["predicted"] and model["target_shape"] == [64, 8, 8]
    assert list(model["methods"]) == ["liftcam", "scorecam"]
    for method, entry in model["methods"].items():
        assert math.isfinite(entry["time_per_image_s"]) and entry["time_per_image_s"] > 0, method
        assert entry["same_maps_as"] is None, method  # LIFT-CAM's and Score-CAM's maps differ
        for key in METRICS:
            stats = entry["metrics"][key]
            assert all(math.isfinite(stats[v]) for v in ("mean", "low", "high")), (method, key)
            assert stats["low"] <= stats["mean"] <= stats["high"], (method, key)
            assert len(stats["per_image"]) == 2 and all(math.isfinite(v) for v in stats["per_image"])
        curves = entry["metrics"]["mean_curves"]
        assert len(curves["deletion"]) == len(curves["insertion"]) == 5
        # the first deletion point is the unperturbed image, the last insertion point the image itself
        expected = sum(model["class_probability"]) / 2
        assert curves["deletion"][0] == pytest.approx(expected, abs=1e-5)
        assert curves["insertion"][-1] == pytest.approx(expected, abs=1e-5)
    # Score-CAM ran one forward pass per non-constant channel (64 at most) per image, plus a baseline
    assert 1 < model["methods"]["scorecam"]["forward_passes_per_image"] <= 64 + 1

    markdown = (out / "quality.md").read_text()
    assert "## resnet20" in markdown
    assert markdown.count("\n| liftcam |") == 1 and markdown.count("\n| scorecam |") == 1
