"""Permutation-sampling Shapley values of target-layer channels (``onnxcam.metrics.shapley``).

Ground truth: the exact Shapley values by brute force over all 2^K coalitions of a small non-linear
head; for a head linear in the activations, LIFT-CAM's coefficients (every permutation gives them).
"""

from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam.metrics import shapley as shapley_module
from onnxcam.metrics.shapley import HeadScorer, shapley_permutation
from tests.isolation import run_blocked

K, h, w, C = 6, 4, 4, 3


# -------------------------------------------------------------------------------- heads
def _weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, K)), rng.standard_normal(8) * 0.5, rng.standard_normal((C, 8)), rng.standard_normal(C)


def numpy_head(batch: np.ndarray, seed: int = 0) -> np.ndarray:
    """Conv1x1 (K → 8) → Relu → GAP → Gemm (8 → C), in float64: non-linear in the channels."""
    conv_w, conv_b, fc_w, fc_b = _weights(seed)
    z = np.einsum("ok,mkij->moij", conv_w, batch.astype(np.float64)) + conv_b[None, :, None, None]
    return np.maximum(z, 0).mean(axis=(2, 3)) @ fc_w.T + fc_b


def onnx_head(linear: bool = False, seed: int = 0) -> bytes:
    """The same head as an ONNX model (``linear``: GAP → Gemm of the raw channels instead)."""
    conv_w, conv_b, fc_w, fc_b = _weights(seed)
    if linear:
        fc_w = fc_w @ conv_w  # [C, K]
        nodes = [helper.make_node("GlobalAveragePool", ["a"], ["gap"])]
    else:
        nodes = [
            helper.make_node("Conv", ["a", "cw", "cb"], ["z"]),
            helper.make_node("Relu", ["z"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["gap"]),
        ]
    nodes += [helper.make_node("Flatten", ["gap"], ["flat"]), helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1)]
    init = [
        numpy_helper.from_array(conv_w[:, :, None, None].astype(np.float32), "cw"),
        numpy_helper.from_array(conv_b.astype(np.float32), "cb"),
        numpy_helper.from_array(fc_w.astype(np.float32), "fw"),
        numpy_helper.from_array(fc_b.astype(np.float32), "fb"),
    ]
    if linear:
        init = init[2:]
    graph = helper.make_graph(
        nodes, "head",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", K, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])],
        initializer=init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def activations(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((K, h, w)) + 0.3).astype(np.float32)


def exact_shapley(head_fn, a: np.ndarray, c: int) -> np.ndarray:
    """φ_k = Σ_{S ∌ k} |S|!(K−|S|−1)!/K! · (v(S ∪ {k}) − v(S)), over all 2^K coalitions."""
    k = a.shape[0]
    masks = np.array(list(itertools.product([0, 1], repeat=k)), dtype=bool)  # [2^K, K]
    values = np.asarray(head_fn(a[None] * masks[:, :, None, None].astype(np.float32)), np.float64)[:, c]
    index = {tuple(m): i for i, m in enumerate(masks)}
    phi = np.zeros(k)
    for m, v_s in zip(masks, values):
        size = int(m.sum())
        for j in np.flatnonzero(~m):
            with_j = m.copy()
            with_j[j] = True
            weight = math.factorial(size) * math.factorial(k - size - 1) / math.factorial(k)
            phi[j] += weight * (values[index[tuple(with_j)]] - v_s)
    return phi


# -------------------------------------------------------------------------------- convergence
@pytest.mark.parametrize("antithetic", [True, False])
def test_converges_to_the_exact_shapley_values_of_a_nonlinear_head(antithetic):
    a, c = activations(), 2
    exact = exact_shapley(numpy_head, a, c)
    est = shapley_permutation(numpy_head, a, c, permutations=2000, antithetic=antithetic, seed=3)
    assert np.all(est.stderr > 0)  # non-linear: the orders disagree
    assert np.all(np.abs(est.values - exact) <= 4 * est.stderr), (est.values - exact) / est.stderr
    assert est.relative_stderr < 0.05 and est.split_half_pearson > 0.99
    # and it is not the one-pass linearisation: the exact values differ from a single permutation's
    one = shapley_permutation(numpy_head, a, c, permutations=2, antithetic=False, seed=3)
    assert not np.allclose(one.values, exact, atol=1e-3)


def test_onnx_head_through_head_scorer_matches_the_brute_force():
    scorer = HeadScorer(onnx_head(), batch_size=64)
    a, c = activations(5), 0
    np.testing.assert_allclose(scorer(a[None])[0], numpy_head(a[None])[0], rtol=1e-5, atol=1e-5)
    exact = exact_shapley(scorer, a, c)
    est = shapley_permutation(scorer, a, c, permutations=1000, batch_size=64, seed=0)
    assert est.evaluations == 2 + 1000 * (K - 1)
    assert np.all(np.abs(est.values - exact) <= 4 * est.stderr + 1e-6)


def test_linear_head_every_permutation_gives_the_liftcam_coefficients():
    """GAP → Gemm: y_c = Σ_k W[c,k]·mean_ij A_k + b, so v(S ∪ k) − v(S) = W[c,k]·mean_ij A_k = Σ_ij A ∂y_c/∂A."""
    scorer = HeadScorer(onnx_head(linear=True))
    conv_w, _, fc_w, _ = _weights()
    weights = (fc_w @ conv_w).astype(np.float32).astype(np.float64)
    a, c = activations(7), 1
    liftcam = weights[c] * a.astype(np.float64).mean(axis=(1, 2))
    est = shapley_permutation(scorer, a, c, permutations=16, seed=0)
    scale = float(np.abs(liftcam).max())
    np.testing.assert_allclose(est.values, liftcam, rtol=0, atol=1e-5 * scale)
    assert float(est.stderr.max()) <= 1e-5 * scale  # float32 rounding only
    # in float64 the orders agree exactly
    exact_linear = shapley_permutation(lambda b: b.astype(np.float64).mean(axis=(2, 3)) @ weights.T, a, c, permutations=16)
    np.testing.assert_allclose(exact_linear.values, liftcam, rtol=1e-12, atol=1e-12)
    assert float(exact_linear.stderr.max()) < 1e-12


def test_linear_head_shapley_equals_onnxcams_liftcam_export():
    """The exported LIFT-CAM coefficients of a GAP → Gemm head are the channels' Shapley values."""
    import onnxcam
    from onnxcam.runtime import Explainer
    from tests.exporters.test_head import tiny_model

    model = tiny_model("static")  # head after `r`: GAP → Reshape → Gemm, linear
    explainer = Explainer(onnxcam.export(model, target="r", raw=True).SerializeToString(), device="cpu")
    expl = explainer.explain(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32))
    scorer = HeadScorer(onnxcam.export_head(model, "r").SerializeToString())
    for i in range(2):
        est = shapley_permutation(scorer, expl.activations[i], int(expl.classes[i]), permutations=8)
        np.testing.assert_allclose(est.values, expl.coefficients[i], rtol=1e-4, atol=1e-5)


# -------------------------------------------------------------------------------- properties
def test_efficiency_holds_by_construction():
    a, c = activations(2), 1
    est = shapley_permutation(numpy_head, a, c, permutations=6, seed=1)  # few samples, still exact
    ends = numpy_head(np.stack([np.zeros_like(a), a]))[:, c]
    assert est.value_empty == pytest.approx(ends[0], abs=1e-12) and est.value_full == pytest.approx(ends[1], abs=1e-12)
    assert est.efficiency_gap < 1e-12
    assert est.values.sum() == pytest.approx(ends[1] - ends[0], abs=1e-12)
    assert est.permutations == 6 and est.evaluations == 2 + 6 * (K - 1) and est.antithetic


def test_seed_reproducibility_and_independence_from_batching():
    a = activations(3)
    first = shapley_permutation(numpy_head, a, 0, permutations=40, seed=11, batch_size=7)
    again = shapley_permutation(numpy_head, a, 0, permutations=40, seed=11, batch_size=7)
    np.testing.assert_array_equal(first.values, again.values)
    np.testing.assert_array_equal(first.stderr, again.stderr)
    rebatched = shapley_permutation(numpy_head, a, 0, permutations=40, seed=11, batch_size=1000)
    np.testing.assert_allclose(rebatched.values, first.values, rtol=0, atol=1e-12)  # same permutations
    other = shapley_permutation(numpy_head, a, 0, permutations=40, seed=12, batch_size=7)
    assert not np.allclose(other.values, first.values)


def test_until_stderr_stops_early_on_a_prefix_of_the_full_run():
    a = activations(4)
    stopped = shapley_permutation(numpy_head, a, 0, permutations=4000, seed=5, batch_size=50, until_stderr=0.05)
    assert stopped.stderr_target_met and stopped.relative_stderr <= 0.05
    assert 16 <= stopped.permutations < 4000
    prefix = shapley_permutation(numpy_head, a, 0, permutations=stopped.permutations, seed=5)
    np.testing.assert_allclose(prefix.values, stopped.values, rtol=0, atol=1e-12)
    unreachable = shapley_permutation(numpy_head, a, 0, permutations=8, seed=5, until_stderr=1e-9)
    assert unreachable.stderr_target_met is False and unreachable.permutations == 8
    assert shapley_permutation(numpy_head, a, 0, permutations=8).stderr_target_met is None


def test_odd_permutations_round_up_to_pairs_and_summary_is_plain():
    est = shapley_permutation(numpy_head, activations(), 0, permutations=5)
    assert est.permutations == 6
    summary = est.summary()
    assert summary["permutations"] == 6 and all(not isinstance(v, np.ndarray) for v in summary.values())


# -------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(activations=np.zeros((1, K, h, w), np.float32)), r"\[K, h, w\], got shape \(1, 6, 4, 4\); pass one image's"),
        (dict(activations=np.zeros((K, h, w), np.int64)), "float array"),
        (dict(activations=np.full((K, h, w), np.nan, np.float32)), "NaN"),
        (dict(target_class=C), "target_class 3 is out of range for 3 classes"),
        (dict(target_class=-1), "non-negative"),
        (dict(permutations=2), r"permutations must be >= 4 with antithetic"),
        (dict(permutations=1, antithetic=False), r"permutations must be >= 2"),
        (dict(batch_size=0), "batch_size"),
        (dict(until_stderr=0), "until_stderr"),
    ],
)
def test_errors_name_the_problem(kwargs, message):
    args = dict(activations=activations(), target_class=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        shapley_permutation(numpy_head, args.pop("activations"), args.pop("target_class"), **args)


def test_shape_mismatch_with_the_head_is_named():
    scorer = HeadScorer(onnx_head())
    assert scorer.input_shape == (K, h, w)
    with pytest.raises(ValueError, match=r"\[5, 4, 4\] but the head expects \[6, 4, 4\]"):
        shapley_permutation(scorer, np.zeros((5, h, w), np.float32), 0)
    with pytest.raises(ValueError, match=r"\[6, 2, 2\] but the head model expects \[6, 4, 4\]"):
        scorer(np.zeros((3, K, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"head_fn must return logits \[M, C\] = \[2, C\]"):
        shapley_permutation(lambda b: b.sum(axis=(1, 2, 3)), activations(), 0)


# -------------------------------------------------------------------------------- docs, isolation
def test_docstring_examples():
    assert doctest.testmod(shapley_module, optionflags=doctest.ELLIPSIS).failed == 0


def test_imports_neither_onnx_nor_torch():
    done = run_blocked(
        """
        import numpy as np
        from onnxcam.metrics.shapley import HeadScorer, shapley_permutation
        est = shapley_permutation(lambda b: b.mean(axis=(2, 3)), np.ones((3, 2, 2), np.float32), 0, permutations=4)
        print(est.values.round(6).tolist())
        """,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[1.0, 0.0, 0.0]"
