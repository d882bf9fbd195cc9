"""render_gallery (onnxcam/runtime/gallery.py): layout, cell contents, text, errors."""

from __future__ import annotations

import doctest
import importlib

import cv2
import numpy as np
import pytest

from onnxcam.runtime import overlay
from onnxcam.runtime.gallery import CAPTION_HEIGHT, GAP, TITLE_HEIGHT, cell_origin, gallery_shape, render_gallery

WHITE = 255


def photos_and_heatmaps(n: int, m: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    columns = [(f"method {j}", rng.random((n, size // 2, size // 2)).astype(np.float32)) for j in range(m)]
    return images, columns


@pytest.mark.parametrize("n,m,cell", [(1, 0, 32), (1, 3, 64), (3, 2, 100), (2, 7, 224)])
def test_shape_follows_the_documented_layout(n, m, cell):
    images, columns = photos_and_heatmaps(n, m, 48)
    grid = render_gallery(images, columns, [f"row {i}" for i in range(n)], cell=cell)
    expected = (TITLE_HEIGHT + n * (cell + CAPTION_HEIGHT), GAP + (m + 1) * (cell + GAP), 3)
    assert grid.shape == expected == gallery_shape(n, m, cell)
    assert grid.dtype == np.uint8


def test_cells_are_the_photo_and_the_overlays():
    """Photos of cell size: cell (i, 0) is the photo, cell (i, j) is overlay(photo, heatmaps_j[i], alpha)."""
    cell = 40
    images, columns = photos_and_heatmaps(3, 2, cell, seed=1)
    grid = render_gallery(images, columns, ["a", "b", "c"], cell=cell, alpha=0.3)
    for i, image in enumerate(images):
        top, left = cell_origin(i, 0, cell)
        np.testing.assert_array_equal(grid[top : top + cell, left : left + cell], image)
        for j, (_, heatmaps) in enumerate(columns, start=1):
            top, left = cell_origin(i, j, cell)
            expected = overlay(image, heatmaps[i], alpha=0.3)
            np.testing.assert_array_equal(grid[top : top + cell, left : left + cell], expected)


def test_other_sizes_are_fitted_without_stretching():
    """A 30x60 photo in a 40 cell: overlay at 30x60, resized to 20x40 (aspect kept), centred, white around."""
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    heat = rng.random((1, 7, 7)).astype(np.float32)
    grid = render_gallery([image], [("m", heat)], ["x"], cell=40)
    top, left = cell_origin(0, 1, 40)
    cell = grid[top : top + 40, left : left + 40]
    expected = cv2.resize(overlay(image, heat[0]), (40, 20), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(cell[10:30], expected)
    assert (cell[:10] == WHITE).all() and (cell[30:] == WHITE).all()


def test_titles_and_captions_are_drawn_inside_their_bands():
    cell = 64
    images, columns = photos_and_heatmaps(2, 2, cell, seed=3)
    grid = render_gallery(images, columns, ["bull mastiff (p=0.83)", "a very long caption " * 20], cell=cell)
    blank = render_gallery(images, [(" ", h) for _, h in columns], [" ", " "], cell=cell)
    for j in range(3):  # every column has ink in its title band, none in the blank one
        _, left = cell_origin(0, j, cell)
        band = grid[:TITLE_HEIGHT, left : left + cell]
        assert (band < 128).any(), j
    assert (blank[:TITLE_HEIGHT, GAP + cell + GAP :] == WHITE).all()
    for i in range(2):
        top, _ = cell_origin(i, 0, cell)
        band = grid[top + cell : top + cell + CAPTION_HEIGHT]
        assert (band < 128).any()
        assert (band[:, -GAP:] == WHITE).all()  # the long caption is shrunk/truncated, not cut by the edge


def test_non_ascii_captions_are_transliterated():
    images, columns = photos_and_heatmaps(1, 1, 32)
    a = render_gallery(images, columns, ["crème brûlée"], cell=32)
    b = render_gallery(images, columns, ["creme brulee"], cell=32)
    np.testing.assert_array_equal(a, b)


def test_errors():
    images, columns = photos_and_heatmaps(2, 2, 32)
    with pytest.raises(ValueError, match="column 'method 1' has 1 heatmaps for 2 images"):
        render_gallery(images, [columns[0], ("method 1", columns[1][1][:1])], ["a", "b"], cell=32)
    with pytest.raises(ValueError, match="got 1 row captions for 2 images"):
        render_gallery(images, columns, ["a"], cell=32)
    with pytest.raises(ValueError, match="no images"):
        render_gallery([], [], [], cell=32)
    with pytest.raises(ValueError, match=r"image 1 must be an RGB uint8 array \[H, W, 3\]"):
        render_gallery([images[0], images[1].astype(np.float32)], columns, ["a", "b"], cell=32)
    with pytest.raises(ValueError, match="cell must be an integer >= 16"):
        render_gallery(images, columns, ["a", "b"], cell=8)
    with pytest.raises(ValueError, match=r"heatmaps must be an array \[N, H, W\]"):
        render_gallery(images, [("m", columns[0][1][0])], ["a", "b"], cell=32)
    with pytest.raises(ValueError, match=r"heatmap values must be in \[0, 1\]"):
        render_gallery(images, [("m", columns[0][1] * 3)], ["a", "b"], cell=32)


def test_docstring_examples():
    result = doctest.testmod(importlib.import_module("onnxcam.runtime.gallery"))
    assert result.attempted > 0 and result.failed == 0
