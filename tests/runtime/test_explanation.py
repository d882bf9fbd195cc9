"""The Explanation dataclass: softmax, top-k, indexing, concatenation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onnxcam.runtime import Explanation


def make(n: int = 4, c: int = 6, seed: int = 0, with_maps: bool = True) -> Explanation:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, c)).astype(np.float32)
    return Explanation(
        logits=logits,
        classes=logits.argmax(axis=1).astype(np.int64),
        coefficients=rng.normal(size=(n, 3)).astype(np.float32) if with_maps else None,
        maps=rng.random((n, 2, 2)).astype(np.float32) if with_maps else None,
        heatmaps=rng.random((n, 8, 8)).astype(np.float32) if with_maps else None,
    )


def test_probabilities_match_plain_softmax():
    e = make()
    # scalar-by-scalar softmax with math.exp, in float64
    for i in range(len(e)):
        row = [float(v) for v in e.logits[i]]
        denom = sum(math.exp(v) for v in row)
        expected = [math.exp(v) / denom for v in row]
        np.testing.assert_allclose(e.probabilities()[i], expected, rtol=1e-6)
    assert e.probabilities().dtype == np.float32
    np.testing.assert_allclose(e.probabilities().sum(axis=1), 1.0, rtol=1e-6)


def test_probabilities_numerically_stable():
    e = Explanation(logits=np.array([[1000.0, 999.0, -1000.0], [-5000.0, -5000.0, -5000.0]], np.float32), classes=np.zeros(2, np.int64))
    p = e.probabilities()
    assert np.all(np.isfinite(p))
    # softmax is shift-invariant: [1000, 999, -1000] == [1, 0, -2000]
    np.testing.assert_allclose(p[0], [math.e / (math.e + 1), 1 / (math.e + 1), 0.0], rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(p[1], [1 / 3] * 3, rtol=1e-6)


def test_top_k():
    e = make(n=3, c=6)
    idx, vals = e.top_k(3)
    assert idx.shape == (3, 3) and idx.dtype == np.int64
    for i in range(3):
        expected = sorted(range(6), key=lambda j: -float(e.logits[i, j]))[:3]
        assert idx[i].tolist() == expected
        np.testing.assert_array_equal(vals[i], e.logits[i, expected])
    idx_p, probs = e.top_k(3, scores="probabilities")
    np.testing.assert_array_equal(idx_p, idx)
    np.testing.assert_allclose(probs, np.take_along_axis(e.probabilities(), idx, axis=1))
    # k larger than C is clamped; ties keep the lower index first
    tied = Explanation(logits=np.array([[1.0, 2.0, 2.0, 0.0]], np.float32), classes=np.array([1]))
    assert tied.top_k(10)[0].tolist() == [[1, 2, 0, 3]]


def test_top_k_errors():
    e = make()
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        e.top_k(0)
    with pytest.raises(ValueError, match="scores must be 'logits' or 'probabilities'"):
        e.top_k(2, scores="softmax")


def test_len_index_iter():
    e = make(n=4)
    assert len(e) == 4
    one = e[2]
    assert isinstance(one, Explanation) and len(one) == 1
    np.testing.assert_array_equal(one.heatmaps[0], e.heatmaps[2])
    np.testing.assert_array_equal(one.logits, e.logits[2:3])
    assert one.activations is None
    assert np.shares_memory(one.heatmaps, e.heatmaps)  # a view, not a copy
    np.testing.assert_array_equal(e[-1].classes, e.classes[3:])
    np.testing.assert_array_equal(e[np.int64(1)].maps, e.maps[1:2])
    sub = e[1:3]
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.coefficients, e.coefficients[1:3])
    items = list(e)
    assert len(items) == 4 and all(len(x) == 1 for x in items)
    np.testing.assert_array_equal(np.concatenate([x.logits for x in items]), e.logits)
    with pytest.raises(IndexError, match="image index 4 out of range for an Explanation of 4 image"):
        e[4]
    with pytest.raises(IndexError):
        e[-5]
    with pytest.raises(TypeError, match="indices must be int or slice"):
        e["a"]
    assert "N=4" in repr(e) and "heatmaps=(4, 8, 8)" in repr(e)


def test_concatenate():
    a, b = make(n=2, seed=1), make(n=3, seed=2)
    c = Explanation.concatenate([a, b])
    assert len(c) == 5
    np.testing.assert_array_equal(c.logits, np.concatenate([a.logits, b.logits]))
    np.testing.assert_array_equal(c.heatmaps[2:], b.heatmaps)
    d = Explanation.concatenate([a, make(n=1, with_maps=False)])
    assert d.heatmaps is None and len(d) == 3
    with pytest.raises(ValueError, match="nothing to concatenate"):
        Explanation.concatenate([])
