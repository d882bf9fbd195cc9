"""onnxcam/resize.py: the extreme rows of the bilinear resize (the interpolation matrix itself is
checked against onnxruntime's Resize in tests/runtime/test_score_cam.py)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcam.resize import bilinear_matrix, extreme_rows


@pytest.mark.parametrize("out_size,in_size", [(224, 7), (224, 14), (299, 8), (12, 3), (10, 4), (7, 7), (5, 9), (1, 3), (3, 1)])
def test_min_and_max_of_the_resize_lie_on_the_extreme_rows(out_size, in_size):
    matrix = bilinear_matrix(out_size, in_size).astype(np.float64)
    rows = extreme_rows(out_size, in_size)
    assert rows.dtype.kind == "i" and np.all(np.diff(rows) > 0) and rows[0] == 0 and rows[-1] == out_size - 1
    vectors = np.random.default_rng(out_size * 100 + in_size).standard_normal((in_size, 200)) ** 3
    resized = matrix @ vectors
    np.testing.assert_allclose(resized[rows].min(axis=0), resized.min(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(resized[rows].max(axis=0), resized.max(axis=0), rtol=0, atol=1e-12)


def test_upsampling_needs_about_two_rows_per_source_row():
    assert len(extreme_rows(224, 7)) == 14
    assert len(extreme_rows(224, 14)) == 28


def test_sizes_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        extreme_rows(0, 3)


def test_docstring_examples():
    import doctest

    import onnxcam.resize

    result = doctest.testmod(onnxcam.resize)
    assert result.attempted >= 2 and result.failed == 0
