"""Smoke test of the Shapley-fidelity benchmark (``python -m benchmarks.fidelity``).

Runs the real ResNet-20 on two photos with 8 permutations (about a second) and checks the result's
structure and finiteness, not its figures.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `benchmarks` is a top-level folder, not an installed package
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import fidelity  # noqa: E402

ROWS = ["liftcam", "gradcam", "gradcam × ΣA", "gradcam++", "gradcam++ × ΣA", "xgradcam", "xgradcam × ΣA", "hirescam", "layercam"]


def test_tiny_run_writes_finite_json_and_markdown(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXCAM_SHARED", str(shared_dir))
    assert fidelity.main(["--models", "resnet20", "--images", "2", "--permutations", "8", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "fidelity.json").read_text())
    assert results["settings"]["permutations"] == {"resnet20": 8} and list(results["models"]) == ["resnet20"]
    model = results["models"]["resnet20"]
    assert model["images"] == 2 and model["target_shape"] == [32, 16, 16] and model["permutations"] == 8
    assert list(model["summary"]) == ROWS
    shap = model["shapley"]
    assert shap["evaluations_per_image"] == 2 + 8 * 31
    assert shap["efficiency_gap_max"] < 1e-9  # Σφ = y_c(A) − y_c(0) by construction
    assert 0 < shap["relative_stderr"]["mean"] < 1 and -1 <= shap["split_half_pearson"]["min"] <= 1
    assert shap["liftcam_completeness_gap_max"] < 1e-3  # LIFT-CAM and Shapley share the total
    for image in model["per_image"]:
        assert image["class_name"] and 0 <= image["class"] < 10
        assert set(image["agreement"]) == set(ROWS)
        for values in image["agreement"].values():
            assert set(values) >= {"pearson", "spearman", "cosine"}
            assert all(math.isfinite(v) and -1 - 1e-9 <= v <= 1 + 1e-9 for v in values.values())
    for stats in model["summary"].values():
        for cell in stats.values():
            assert cell["n"] == 2 and cell["low"] - 1e-12 <= cell["mean"] <= cell["high"] + 1e-12
    markdown = (tmp_path / "fidelity.md").read_text()
    assert "| method | scores | pearson |" in markdown and "**× ΣA** (contribution)" in markdown
    assert markdown.count("\n| ") == 2 + len(ROWS)  # header, rule, one line per row
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_contribution_rows_are_weights_times_channel_sums():
    rng = np.random.default_rng(0)
    activations = rng.random((2, 3, 4, 4))
    coefficients = {m: rng.standard_normal((2, 3)) for m in fidelity.METHODS}
    rows = fidelity.compared_weights(coefficients, activations)
    assert list(rows) == ROWS
    np.testing.assert_allclose(rows["gradcam × ΣA"], coefficients["gradcam"] * activations.sum(axis=(2, 3)))
    assert rows["liftcam"] is coefficients["liftcam"] and rows["hirescam"] is coefficients["hirescam"]


def test_images_are_spread_over_the_sorted_folder(shared_dir):
    spec = fidelity.MODELS["mobilenetv2"]
    picked = fidelity.pick_images(spec, shared_dir, 5)
    everything = sorted(p.name for p in (shared_dir / "images" / spec.image_dir).iterdir() if p.suffix == ".JPEG")
    assert [p.name for p in picked] == [everything[i] for i in np.linspace(0, len(everything) - 1, 5).round().astype(int)]
    assert len(fidelity.pick_images(fidelity.MODELS["resnet20"], shared_dir, 99)) == 10  # all photos


def test_noise_ceiling():
    assert fidelity._ceiling(1.0) == 1.0
    assert fidelity._ceiling(0.8) == pytest.approx(math.sqrt(1.6 / 1.8))
    assert math.isnan(fidelity._ceiling(-0.2))


def test_permutations_option_per_model_or_for_all():
    import argparse

    parser = argparse.ArgumentParser()
    assert fidelity._permutations(parser, None) == {}
    assert fidelity._permutations(parser, ["64"]) == dict.fromkeys(fidelity.MODELS, 64)
    assert fidelity._permutations(parser, ["64", "resnet56=256"]) == {"mobilenetv2": 64, "resnet20": 64, "resnet56": 256}
    for bad in (["vgg=8"], ["2"], ["many"]):
        with pytest.raises(SystemExit):
            fidelity._permutations(parser, bad)
