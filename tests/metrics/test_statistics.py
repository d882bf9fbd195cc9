"""Bootstrap interval and agreement measures on vectors whose answers are known (no scipy)."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from onnxcam.metrics import statistics
from onnxcam.metrics.statistics import agreement, average_ranks, bootstrap_ci


def test_docstring_examples():
    assert doctest.testmod(statistics, optionflags=doctest.ELLIPSIS).failed == 0


# ----------------------------------------------------------------------------- bootstrap
def test_constant_values_give_a_degenerate_interval():
    assert bootstrap_ci([2.5] * 7) == (2.5, 2.5, 2.5)
    assert bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)


def test_interval_matches_the_explicit_resampling_loop():
    values = np.random.default_rng(5).normal(10.0, 2.0, 40)
    mean, low, high = bootstrap_ci(values, confidence=0.9, resamples=500, seed=11)
    rng = np.random.default_rng(11)
    draws = rng.integers(0, 40, size=(500, 40))
    means = [values[row].mean() for row in draws]
    assert mean == pytest.approx(values.mean())
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.05, 0.95])))


def test_interval_width_follows_the_standard_error():
    values = np.random.default_rng(0).normal(0.0, 1.0, 400)
    mean, low, high = bootstrap_ci(values, resamples=4000)
    se = values.std(ddof=1) / math.sqrt(values.size)
    assert low < mean < high
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)  # deterministic


def test_large_inputs_are_chunked_without_changing_the_answer(monkeypatch):
    values = np.random.default_rng(2).uniform(size=50)
    whole = bootstrap_ci(values, resamples=300, seed=4)
    monkeypatch.setattr(statistics, "_BOOTSTRAP_CHUNK", 50 * 7)  # 7 resamples per chunk
    assert bootstrap_ci(values, resamples=300, seed=4) == pytest.approx(whole)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(values=[]), "values is empty"),
        (dict(values=[[1.0, 2.0]]), r"values must be 1-D, got shape \(1, 2\)"),
        (dict(values=[1.0, float("nan")]), "values contains NaN or Inf at index 1"),
        (dict(values=[1.0], confidence=1.0), r"confidence must be in \(0, 1\)"),
        (dict(values=[1.0], resamples=0), "resamples must be an integer >= 1"),
    ],
)
def test_bootstrap_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(**kwargs)


# ----------------------------------------------------------------------------- agreement
def test_identical_vectors_agree_perfectly():
    a = np.array([0.3, -1.0, 2.0, 5.0, 0.0, 1.5, -0.2, 0.9, 3.3, 4.4])
    result = agreement(a, a.copy())
    assert set(result) == {"pearson", "spearman", "cosine", "top_overlap"}
    for value in result.values():
        assert value == pytest.approx(1.0)


def test_reversed_ranks_and_known_values():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    b = np.array([50.0, 40.0, 30.0, 20.0, 10.0])
    result = agreement(a, b, top_fraction=0.2)  # k = 1: top of a is index 4, of b index 0
    assert result["spearman"] == pytest.approx(-1.0)
    assert result["pearson"] == pytest.approx(-1.0)
    # cosine by hand: (50 + 80 + 90 + 80 + 50) / (sqrt(55) * sqrt(5500)) = 350 / 550
    assert result["cosine"] == pytest.approx(350 / 550)
    assert result["top_overlap"] == 0.0


def test_spearman_is_invariant_to_monotone_maps_and_pearson_is_not():
    a = np.linspace(0.1, 3.0, 12)
    result = agreement(a, np.exp(3 * a))
    assert result["spearman"] == pytest.approx(1.0)
    assert result["pearson"] < 0.95


def test_spearman_with_ties_uses_average_ranks():
    assert average_ranks(np.array([2.0, 1.0, 2.0, 2.0, 0.0])).tolist() == [4.0, 2.0, 4.0, 4.0, 1.0]
    a = np.array([1.0, 2.0, 2.0, 3.0])
    b = np.array([1.0, 2.0, 3.0, 4.0])
    # ranks of a: 1, 2.5, 2.5, 4; of b: 1, 2, 3, 4 -> pearson of the ranks
    ra, rb = np.array([1, 2.5, 2.5, 4]), np.array([1.0, 2, 3, 4])
    expected = np.corrcoef(ra, rb)[0, 1]
    assert agreement(a, b)["spearman"] == pytest.approx(expected)
    assert expected == pytest.approx(math.sqrt(0.9))  # a known closed form: 4.5 / sqrt(4.5 * 5)


def test_top_overlap_counts_the_shared_top_fraction():
    a = np.arange(20.0)  # top 10%: indices 19, 18
    b = np.arange(20.0)
    b[18], b[0] = -1.0, 100.0  # b's top 2: indices 0, 19
    assert agreement(a, b)["top_overlap"] == 0.5
    # k = ceil(0.1 * 30) = 3 exactly (not 4 from 0.1 * 30 = 3.0000000000000004)
    c = np.arange(30.0)
    d = c.copy()
    d[26] = -5.0  # a's top 3: 29, 28, 27; d's top 3: 29, 28, 27 -> still 1.0 with k = 3, 0.75 with k = 4
    assert agreement(c, d)["top_overlap"] == 1.0


def test_degenerate_vectors_give_nan():
    result = agreement(np.ones(5), np.arange(5.0))
    assert math.isnan(result["pearson"]) and math.isnan(result["spearman"])
    assert math.isnan(agreement(np.zeros(3), np.arange(3.0))["cosine"])


@pytest.mark.parametrize(
    "a, b, kwargs, message",
    [
        (np.ones(3), np.ones(4), {}, r"estimate has shape \(4,\); expected \(3,\) matching reference"),
        (np.ones((3, 1)), np.ones(3), {}, r"reference must be 1-D"),
        (np.ones(3), np.ones(3), dict(top_fraction=0.0), r"top_fraction must be in \(0, 1\]"),
        (np.ones(3), np.array([1.0, np.inf, 0.0]), {}, "estimate contains NaN or Inf"),
    ],
)
def test_agreement_errors(a, b, kwargs, message):
    with pytest.raises(ValueError, match=message):
        agreement(a, b, **kwargs)
