"""Faithfulness metrics on constructed cases whose answers are known by hand, plus one real-model check.

The hand-made "model" ``mean_channel`` gives class 0 the probability ``p0 = mean of channel 0`` of
the image (class 1 gets ``1 - p0``), so deleting or inserting pixels moves ``p0`` linearly and every
curve value is a pixel count divided by ``H·W``.
"""

from __future__ import annotations

import doctest

import cv2
import numpy as np
import pytest

from onnxcam.metrics import faithfulness
from onnxcam.metrics.faithfulness import (
    average_drop_increase,
    deletion_auc,
    deletion_insertion,
    gaussian_blur,
    insertion_auc,
    normalize_maps,
    pixel_ranks,
)


def mean_channel(batch: np.ndarray, channel: int = 0) -> np.ndarray:
    p0 = batch[:, channel].mean(axis=(1, 2)).astype(np.float64)
    return np.stack([p0, 1.0 - p0], axis=1)


class CountingScore:
    """``mean_channel`` that records the size of every batch it is handed."""

    def __init__(self, channel: int = 0) -> None:
        self.channel = channel
        self.sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.sizes.append(batch.shape[0])
        return mean_channel(batch, self.channel)


def four_bright_pixels() -> np.ndarray:
    """A 1-channel 4x4 image with four pixels at 1 (p0 = 4/16 = 0.25), the rest 0."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, [0, 1, 2, 3], [3, 2, 1, 0]] = 1.0
    return x


def test_docstring_examples():
    assert doctest.testmod(faithfulness, optionflags=doctest.ELLIPSIS).failed == 0


# ----------------------------------------------------------------------------- deletion / insertion
def test_deletion_of_a_perfect_and_an_inverted_map_by_hand():
    x = four_bright_pixels()
    perfect = deletion_auc(mean_channel, x, x[:, 0], [0], steps=4)
    assert perfect.counts.tolist() == [0, 4, 8, 12, 16]
    assert perfect.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    np.testing.assert_allclose(perfect.curves, [[0.25, 0, 0, 0, 0]], atol=1e-7)
    # trapezoid: (0.25 + 0) / 2 * 0.25 = 0.03125
    np.testing.assert_allclose(perfect.aucs, [0.03125], atol=1e-7)
    inverted = deletion_auc(mean_channel, x, 1 - x[:, 0], [0], steps=4)
    np.testing.assert_allclose(inverted.curves, [[0.25, 0.25, 0.25, 0.25, 0]], atol=1e-7)
    # 3 full intervals of 0.25 * 0.25 plus the last half one: 0.1875 + 0.03125
    np.testing.assert_allclose(inverted.aucs, [0.21875], atol=1e-7)
    assert perfect.mode == "deletion" and perfect.mean_auc == pytest.approx(0.03125)


def test_insertion_from_zero_by_hand():
    x = four_bright_pixels()
    r = insertion_auc(mean_channel, x, x[:, 0], [0], steps=4, baseline="zero")
    np.testing.assert_allclose(r.curves, [[0, 0.25, 0.25, 0.25, 0.25]], atol=1e-7)
    np.testing.assert_allclose(r.aucs, [(0.25 * 4 - 0.125) / 4], atol=1e-7)  # 0.21875
    assert r.mode == "insertion"


def test_pixel_counts_round_half_to_even():
    # 3x3 = 9 pixels, steps = 2: round(4.5) = 4 (Python's round), then all 9.
    x = np.ones((1, 1, 3, 3), np.float32)
    r = deletion_auc(mean_channel, x, np.zeros((1, 3, 3)), [0], steps=2)
    assert r.counts.tolist() == [0, 4, 9]
    np.testing.assert_allclose(r.curves, [[1.0, 5 / 9, 0.0]], atol=1e-7)


def test_ties_are_broken_by_reading_order():
    assert pixel_ranks(np.zeros((1, 2, 2))).tolist() == [[0, 1, 2, 3]]
    assert pixel_ranks(np.array([[[1.0, 3.0], [3.0, 2.0]]])).tolist() == [[3, 0, 1, 2]]
    # a constant map deletes the top row first: it holds the zeros here, so p0 holds for a step
    x = np.array([[[[0, 0], [1, 1]]]], np.float32)
    r = deletion_auc(mean_channel, x, np.full((1, 2, 2), 7.0), [0], steps=2)
    np.testing.assert_allclose(r.curves, [[0.5, 0.5, 0.0]], atol=1e-7)


def test_mean_and_array_baselines():
    x = four_bright_pixels()
    # the image mean is 0.25: the 4 bright pixels become 0.25 (p0 = 4 * 0.25 / 16), then 4 zeros at a time
    # rise to 0.25 (+ 1/16 each step), ending at the mean itself
    mean = deletion_auc(mean_channel, x, x[:, 0], [0], steps=4, baseline="mean")
    np.testing.assert_allclose(mean.curves, [[0.25, 0.0625, 0.125, 0.1875, 0.25]], atol=1e-7)
    # deleting the 4 bright pixels into 0.5: (12 * 0 + 4 * 0.5) / 16 = 0.125; then zeros become 0.5 too
    half = deletion_auc(mean_channel, x, x[:, 0], [0], steps=4, baseline=np.array([[[0.5]]]))
    np.testing.assert_allclose(half.curves, [[0.25, 0.125, 0.25, 0.375, 0.5]], atol=1e-7)
    same = deletion_auc(mean_channel, x, x[:, 0], [0], steps=4, baseline=0.5)
    np.testing.assert_allclose(same.curves, half.curves)


def test_every_channel_is_replaced():
    x = np.zeros((1, 2, 2, 2), np.float32)
    x[0, 1] = [[1, 1], [0, 0]]  # channel 1 carries the signal, channel 0 is all zeros
    maps = np.array([[[1.0, 1.0], [0.0, 0.0]]])
    r = deletion_auc(lambda b: mean_channel(b, channel=1), x, maps, [0], steps=2)
    np.testing.assert_allclose(r.curves, [[0.5, 0.0, 0.0]], atol=1e-7)


def test_blur_baseline_is_rises_gaussian():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 3, 12, 10)).astype(np.float32)
    blurred = gaussian_blur(x)
    for n in range(2):
        for c in range(3):
            np.testing.assert_allclose(blurred[n, c], cv2.GaussianBlur(x[n, c], (11, 11), 5.0), atol=1e-6)
    r = insertion_auc(mean_channel, x, rng.uniform(size=(2, 12, 10)), [0, 1], steps=3)
    p_blur = mean_channel(blurred)[[0, 1], [0, 1]]
    p_x = mean_channel(x)[[0, 1], [0, 1]]
    np.testing.assert_allclose(r.curves[:, 0], p_blur, atol=1e-6)
    np.testing.assert_allclose(r.curves[:, -1], p_x, atol=1e-6)
    small = insertion_auc(mean_channel, x, np.zeros((2, 12, 10)), [0, 0], steps=1, blur_kernel=3, blur_sigma=1.0)
    np.testing.assert_allclose(small.curves[:, 0], mean_channel(gaussian_blur(x, 3, 1.0))[:, 0], atol=1e-6)


def reference_curve(score_fn, x, saliency, classes, steps, baseline, deletion):
    """A plain loop over images and steps (the definition, written the slow way)."""
    n, _, h, w = x.shape
    curves = np.zeros((n, steps + 1))
    for i in range(n):
        order = sorted(range(h * w), key=lambda p: (-saliency[i].reshape(-1)[p], p))
        for s in range(steps + 1):
            k = round(s * h * w / steps)
            chosen = np.zeros(h * w, bool)
            chosen[order[:k]] = True
            chosen = chosen.reshape(h, w)
            image = np.where(chosen, baseline[i], x[i]) if deletion else np.where(chosen, x[i], baseline[i])
            curves[i, s] = score_fn(image[None])[0, classes[i]]
    return curves


@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_matches_a_slow_reference_for_any_batch_size(batch_size):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (3, 2, 5, 6)).astype(np.float32)
    maps = rng.integers(0, 4, (3, 5, 6)).astype(float)  # many ties
    classes = np.array([0, 1, 0])
    score = CountingScore()
    r = deletion_insertion(score, x, maps, classes, steps=7, insertion_baseline="mean", batch_size=batch_size)
    zero = np.zeros_like(x)
    mean = np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape)
    np.testing.assert_allclose(r.deletion.curves, reference_curve(mean_channel, x, maps, classes, 7, zero, True), atol=1e-6)
    np.testing.assert_allclose(r.insertion.curves, reference_curve(mean_channel, x, maps, classes, 7, mean, False), atol=1e-6)
    # the batches handed to score_fn: never above batch_size, 2 * 3 * 8 images in all
    assert max(score.sizes) <= batch_size and sum(score.sizes) == 2 * 3 * 8
    # the AUC is the trapezoid of the curve
    fractions = np.arange(8) / 7
    expected = ((r.deletion.curves[:, 1:] + r.deletion.curves[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)
    np.testing.assert_allclose(r.deletion.aucs, expected, atol=1e-12)


def test_classes_pick_their_own_probability():
    x = four_bright_pixels().repeat(2, axis=0)
    r = deletion_auc(mean_channel, x, x[:, 0], [0, 1], steps=4)
    np.testing.assert_allclose(r.curves[1], 1 - r.curves[0], atol=1e-7)


# ----------------------------------------------------------------------------- Average Drop
def test_average_drop_and_increase_by_hand():
    x = np.full((3, 1, 2, 2), 0.8, np.float32)
    keep_half = np.array([[1.0, 1.0], [0.0, 0.0]])
    maps = np.stack([keep_half, keep_half * 7 + 3, keep_half])  # any scale: min-max normalised
    r = average_drop_increase(mean_channel, x, maps, [0, 0, 1])
    # class 0: Y = 0.8, O = 0.4 -> drop 0.5; class 1: Y = 0.2, O = 0.6 -> no drop, an increase
    np.testing.assert_allclose(r.original, [0.8, 0.8, 0.2], atol=1e-6)
    np.testing.assert_allclose(r.explained, [0.4, 0.4, 0.6], atol=1e-6)
    np.testing.assert_allclose(r.drop, [0.5, 0.5, 0.0], atol=1e-6)
    assert r.increase.tolist() == [False, False, True]
    assert r.average_drop == pytest.approx(100 / 3, abs=1e-4)
    assert r.increase_in_confidence == pytest.approx(100 / 3)


def test_average_drop_baseline_and_soft_maps():
    x = np.full((1, 1, 2, 2), 0.8, np.float32)
    soft = np.array([[[0.0, 0.5], [1.0, 1.0]]])  # H = [0, .5, 1, 1]: E = .8 * H + .2 * (1 - H)
    r = average_drop_increase(mean_channel, x, soft, [0], baseline=0.2)
    expected = np.mean(0.8 * np.array([0, 0.5, 1, 1]) + 0.2 * np.array([1, 0.5, 0, 0]))  # 0.65
    np.testing.assert_allclose(r.explained, [expected], atol=1e-6)
    np.testing.assert_allclose(r.drop, [(0.8 - expected) / 0.8], atol=1e-6)
    # a baseline equal to the image: E = x whatever the map, so no drop and no (strict) increase
    same = average_drop_increase(mean_channel, x, soft, [0], baseline=np.full((1, 1, 1), 0.8))
    assert same.drop.tolist() == [0.0] and same.increase.tolist() == [False]
    # a constant map gives H = 0: E is the baseline
    flat = average_drop_increase(mean_channel, x, np.ones((1, 2, 2)), [0], baseline=0.3)
    np.testing.assert_allclose(flat.explained, [0.3], atol=1e-6)


def test_normalize_maps():
    out = normalize_maps(np.array([[[1.0, 3.0]], [[5.0, 5.0]], [[-2.0, 0.0]]]))
    assert out.tolist() == [[[0.0, 1.0]], [[0.0, 0.0]], [[0.0, 1.0]]]


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(saliency=np.zeros((2, 7, 7))), r"saliency has shape \(2, 7, 7\); expected \[N, H, W\] = \[2, 4, 4\] matching x"),
        (dict(classes=[0]), r"classes has shape \(1,\); expected \[N\] = \[2\]"),
        (dict(classes=[0, 2]), r"classes\[1\] = 2 is out of range \[0, 2\)"),
        (dict(classes=[-1, 0]), r"classes\[0\] = -1 is negative"),
        (dict(classes=[0.0, 1.0]), r"classes must hold integer"),
        (dict(steps=0), r"steps must be an integer >= 1, got 0"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1"),
        (dict(baseline="black"), r"baseline must be 'zero', 'mean', 'blur'"),
        (dict(baseline=np.zeros((3, 1, 1))), r"baseline has shape \(3, 1, 1\), which does not broadcast to x's shape \(2, 1, 4, 4\)"),
        (dict(x=np.zeros((1, 4, 4), np.float32)), r"x must be a batch \[N, C, H, W\], got 3-D"),
        (dict(x=np.zeros((2, 1, 4, 4), np.int64)), r"x must hold preprocessed floats"),
        (dict(saliency=np.full((2, 4, 4), np.nan)), r"saliency contains NaN"),
        (dict(score_fn=lambda b: np.zeros((len(b),))), r"score_fn must return probabilities \[M, num_classes\]"),
    ],
)
def test_clear_errors(kwargs, message):
    args = dict(score_fn=mean_channel, x=np.zeros((2, 1, 4, 4), np.float32), saliency=np.zeros((2, 4, 4)), classes=[0, 1])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        deletion_auc(args.pop("score_fn"), args.pop("x"), args.pop("saliency"), args.pop("classes"), **args)


def test_average_drop_refuses_a_named_baseline_and_bad_blur():
    x = np.zeros((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="baseline must be a number or an array"):
        average_drop_increase(mean_channel, x, np.zeros((1, 4, 4)), [0], baseline="blur")
    with pytest.raises(ValueError, match="blur kernel must be odd, got 4"):
        insertion_auc(mean_channel, x, np.zeros((1, 4, 4)), [0], blur_kernel=4)
    with pytest.raises(ValueError, match="saliency has shape"):
        average_drop_increase(mean_channel, x, np.zeros((1, 4, 5)), [0])


# ----------------------------------------------------------------------------- a real model
def test_liftcam_deletes_faster_than_its_inverse_on_mobilenetv2(models_dir, photos_dir):
    """On real photos the LIFT-CAM map's deletion AUC is below the inverted map's, and its insertion AUC above."""
    model = models_dir / "mobilenetv2_imagenet_fp32.onnx"
    if not model.is_file():
        pytest.skip(f"{model} not found")
    onnxcam = pytest.importorskip("onnxcam")
    from onnxcam.runtime import Explainer, Scorer, load_image

    explainer = Explainer(onnxcam.export(str(model), preprocessing="imagenet").SerializeToString(), device="cpu")
    images = [load_image(photos_dir / name) for name in ("bulldog_and_cat.png", "house_finch.jpg")]
    x, _ = explainer.preprocess(images)
    expl = explainer.explain(x)
    scorer = Scorer(str(model), device="cpu", batch_size=32)
    good = deletion_insertion(scorer, x, expl.heatmaps, expl.classes, steps=10)
    bad = deletion_insertion(scorer, x, 1.0 - expl.heatmaps, expl.classes, steps=10)
    assert np.all(good.deletion.aucs < bad.deletion.aucs)
    assert np.all(good.insertion.aucs > bad.insertion.aucs)
    # the first deletion point is the unperturbed image: the model's own probability
    np.testing.assert_allclose(good.deletion.curves[:, 0], scorer(x)[[0, 1], expl.classes], atol=1e-6)
