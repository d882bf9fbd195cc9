"""The coverage matrix (``benchmarks/coverage.py``) as tests: torchvision family × target layer.

Each case exports the model with ``onnxcam.export_torch(..., raw=True)``, runs the graph in
onnxruntime with predicted and explicit targets, and compares it with the generic float64 reference
``tests/reference/functional.py`` at the graph's own ``A`` (``ALGORITHM.md`` §4): coefficients ≤ 1e-4
relative, heatmaps ≤ 1e-3 absolute, same classes, completeness ≤ 1e-4, and the graph's ``A`` is the
module's output. A fast subset (``CI_PAIRS``, well under a minute) runs by default; every other pair
is marked ``slow`` (deselect with ``-m "not slow"``; ``python -m benchmarks.coverage`` runs them all
and writes the table).
"""
from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from benchmarks.coverage import CI_PAIRS, FAMILIES, all_pairs, run_pair  # noqa: E402

PAIRS = [pytest.param(m, l, marks=() if (m, l) in CI_PAIRS else pytest.mark.slow, id=f"{m}@{l}")
         for m, l in all_pairs()]


def test_ci_pairs_are_in_the_matrix():
    assert set(CI_PAIRS) <= set(all_pairs())
    assert len(FAMILIES) == 17


@pytest.mark.parametrize("model,layer", PAIRS)
def test_coverage(model, layer):
    rec = run_pair(model, layer)
    if rec["status"] == "error":
        pytest.fail(f"{model} {layer}: {rec['stage']} raised {rec['error']}", pytrace=False)
    errors = {k: v for k, v in rec["errors"].items()}
    assert rec["status"] == "pass", f"{model} {layer}: {rec.get('failure')} {errors}"
