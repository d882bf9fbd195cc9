"""Scorer: batched logits/probabilities from a plain model or an onnxcam export."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from onnxcam.runtime import Scorer, softmax


def test_softmax_rows_sum_to_one_and_are_shift_invariant():
    z = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]])
    p = softmax(z)
    assert np.allclose(p.sum(axis=1), 1)
    assert np.allclose(p[1], 1 / 3)
    assert np.allclose(p[0], softmax(z[0] - 1000))


def test_scorer_chunks_match_one_run(tiny_model_path):
    session = ort.InferenceSession(str(tiny_model_path), providers=["CPUExecutionProvider"])
    scorer = Scorer(tiny_model_path, batch_size=3)
    image = session.get_inputs()[0]
    x = np.random.default_rng(0).normal(size=(7, *image.shape[1:])).astype(np.float32)
    feeds = {image.name: x}
    for extra in session.get_inputs()[1:]:
        feeds[extra.name] = np.full(7, -1, np.int64)
    (expected,) = session.run([scorer.output], feeds)
    assert np.allclose(scorer.logits(x), expected, atol=1e-6)
    assert np.allclose(scorer(x), softmax(expected), atol=1e-6)


def test_scorer_errors(tiny_model_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        Scorer(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        Scorer(tiny_model_path, batch_size=0)
    with pytest.raises(ValueError, match="no output 'nope'"):
        Scorer(tiny_model_path, output="nope")
    with pytest.raises(ValueError, match="batch must be"):
        Scorer(tiny_model_path).logits(np.zeros((3, 4)))
