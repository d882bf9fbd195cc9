"""overlay / colorize / heatmap_to_uint8."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxcam.runtime import colorize, heatmap_to_uint8, overlay


@pytest.fixture
def heat(rng) -> np.ndarray:
    return rng.random((12, 10)).astype(np.float32)


def test_heatmap_to_uint8_truncates(heat):
    got = heatmap_to_uint8(heat)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.floor(heat.astype(np.float64) * 255).astype(np.uint8))
    assert heatmap_to_uint8(np.array([[0.0, 1.0]], np.float32)).tolist() == [[0, 255]]
    # float rounding just outside [0, 1] is clipped, not an error
    assert heatmap_to_uint8(np.array([[-1e-7, 1 + 1e-7]], np.float32)).tolist() == [[0, 255]]


def test_colorize_is_applycolormap(heat):
    u8 = np.floor(heat.astype(np.float64) * 255).astype(np.uint8)
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    np.testing.assert_array_equal(colorize(heat, rgb=False), bgr)
    np.testing.assert_array_equal(colorize(heat), bgr[:, :, ::-1])
    np.testing.assert_array_equal(colorize(heat, cv2.COLORMAP_VIRIDIS, rgb=False), cv2.applyColorMap(u8, cv2.COLORMAP_VIRIDIS))
    # JET: 0 is dark blue, 1 is dark red (RGB)
    assert colorize(np.array([[0.0, 1.0]], np.float32))[0].tolist() == [[0, 0, 128], [128, 0, 0]]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_overlay_blend_formula(rng, heat, alpha):
    image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    colour = cv2.applyColorMap(np.floor(heat.astype(np.float64) * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    expected = np.clip(np.rint((1 - alpha) * image.astype(np.float64) + alpha * colour), 0, 255)
    got = overlay(image, heat, alpha=alpha)
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float32 vs float64 rounding
    if alpha == 0.0:
        np.testing.assert_array_equal(got, image)


def test_overlay_bgr_mode(rng, heat):
    image = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    rgb_out = overlay(image, heat, alpha=0.4)
    bgr_out = overlay(image[:, :, ::-1].copy(), heat, alpha=0.4, rgb=False)
    np.testing.assert_array_equal(bgr_out[:, :, ::-1], rgb_out)


def test_overlay_resizes_heatmap(rng, heat):
    image = rng.integers(0, 256, (36, 20, 3), dtype=np.uint8)
    resized = np.clip(cv2.resize(heat, (20, 36), interpolation=cv2.INTER_LINEAR), 0, 1)
    np.testing.assert_array_equal(overlay(image, heat, 0.5), overlay(image, resized, 0.5))
    assert overlay(image, heat).shape == (36, 20, 3)


def test_overlay_grey_image(rng, heat):
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(grey, heat), overlay(np.repeat(grey[:, :, None], 3, axis=2), heat))


def test_overlay_errors(heat):
    image = np.zeros((12, 10, 3), np.uint8)
    with pytest.raises(ValueError, match=r"image must be uint8 \(0..255\), got dtype float32"):
        overlay(image.astype(np.float32), heat)
    with pytest.raises(ValueError, match=r"image must have shape \[H, W, 3\] or \[H, W\], got \(12, 10, 4\)"):
        overlay(np.zeros((12, 10, 4), np.uint8), heat)
    with pytest.raises(ValueError, match=r"heatmap must have shape \[H, W\].*got \(2, 12, 10\)"):
        overlay(image, np.stack([heat, heat]))
    with pytest.raises(ValueError, match=r"heatmap values must be in \[0, 1\], got \[0, 2\]"):
        overlay(image, heat * 0 + np.array([[0.0, 2.0] * 5] * 12, np.float32))
    with pytest.raises(ValueError, match=r"heatmap contains NaN or Inf"):
        overlay(image, np.full((12, 10), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"heatmap must be floating point"):
        overlay(image, np.zeros((12, 10), np.uint8))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], got 1.5"):
        overlay(image, heat, alpha=1.5)
    with pytest.raises(ValueError, match=r"image must be a numpy array, got list"):
        overlay([[0]], heat)
