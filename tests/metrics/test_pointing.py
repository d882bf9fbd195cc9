"""Pointing game and energy-based pointing game on hand-made maps and boxes."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from onnxcam.metrics import pointing
from onnxcam.metrics.pointing import boxes_mask, energy_pointing_game, pointing_game


def peak(h: int, w: int, x: int, y: int, n: int = 1) -> np.ndarray:
    maps = np.zeros((n, h, w))
    maps[:, y, x] = 1.0
    return maps


def test_docstring_examples():
    assert doctest.testmod(pointing, optionflags=doctest.ELLIPSIS).failed == 0


def test_hit_inside_and_miss_outside_without_tolerance():
    maps = peak(20, 20, x=5, y=7, n=2)
    inside = (5, 7, 6, 8)  # exactly the peak pixel
    outside = (6, 7, 10, 10)  # starts one column to the right
    assert pointing_game(maps, [[inside], [outside]], tolerance=0).tolist() == [True, False]


def test_exclusive_right_and_bottom_edges():
    maps = peak(10, 10, x=4, y=4, n=2)
    # x1 = 4 covers columns 0..3: the peak at column 4 is one pixel outside; y1 = 5 covers row 4
    assert pointing_game(maps, [[(0, 0, 4, 10)], [(0, 0, 10, 5)]], tolerance=0).tolist() == [False, True]
    assert pointing_game(maps[:1], [[(0, 0, 4, 10)]], tolerance=1).tolist() == [True]


def test_tolerance_edge_is_inclusive_and_euclidean():
    maps = peak(64, 64, x=40, y=40)
    # box ends at column 24 (x1 = 25): 16 px to the right, same row -> hit at 16, miss at 15.99
    assert pointing_game(maps, [[(0, 35, 25, 45)]], tolerance=16).tolist() == [True]
    assert pointing_game(maps, [[(0, 35, 25, 45)]], tolerance=15.99).tolist() == [False]
    # diagonal: the nearest box pixel is (31, 28): dx = 9, dy = 12 -> distance 15
    diagonal = [[(0, 0, 32, 29)]]
    assert pointing_game(maps, diagonal, tolerance=15).tolist() == [True]
    assert pointing_game(maps, diagonal, tolerance=14.9).tolist() == [False]
    # the default tolerance is 15
    assert pointing_game(maps, diagonal).tolist() == [True]


def test_any_box_of_the_image_counts_and_the_first_maximum_is_the_point():
    maps = peak(30, 30, x=25, y=25)
    assert pointing_game(maps, [[(0, 0, 2, 2), (24, 24, 27, 27)]], tolerance=0).tolist() == [True]
    ties = np.zeros((1, 30, 30))
    ties[0, 2, 3] = ties[0, 20, 20] = 5.0  # two maxima: (x=3, y=2) comes first in reading order
    assert pointing_game(ties, [[(0, 0, 5, 5)]], tolerance=0).tolist() == [True]
    assert pointing_game(ties, [[(18, 18, 22, 22)]], tolerance=0).tolist() == [False]


def test_energy_fraction_by_hand():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0] = 3.0  # inside the box
    maps[0, 3, 3] = 1.0  # outside
    maps[1] = 2.0
    maps[1, 0, 0] = 4.0  # the second map: a 2-offset plateau with one peak
    boxes = [[(0, 0, 2, 2)], [(0, 0, 2, 2)]]
    result = energy_pointing_game(maps, boxes)
    # map 0 normalised: 1 inside, 1/3 outside -> 1 / (4/3) = 0.75
    # map 1 normalised: (x - 2) / 2 -> only the peak is nonzero -> 1.0 (the offset does not count)
    np.testing.assert_allclose(result, [0.75, 1.0])


def test_energy_uses_the_union_of_boxes_and_constant_maps_are_nan():
    maps = np.arange(16.0).reshape(1, 4, 4)  # normalised: k / 15, total 120 / 15 = 8
    overlapping = [[(0, 0, 2, 2), (1, 1, 3, 3)]]  # union: pixels 0, 1, 4, 5, 6, 9, 10 (5 counted once)
    expected = (0 + 1 + 4 + 5 + 6 + 9 + 10) / 120
    np.testing.assert_allclose(energy_pointing_game(maps, overlapping), [expected])
    assert math.isnan(energy_pointing_game(np.ones((1, 4, 4)), [[(0, 0, 1, 1)]])[0])


def test_boxes_mask_union():
    mask = boxes_mask([(0, 0, 2, 1), (3, 2, 4, 3)], 3, 4)
    assert mask.astype(int).tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize(
    "boxes, message",
    [
        ([[(0, 0, 2, 2)]], r"boxes has 1 entries; expected one box list per image, N = 2"),
        ([[(0, 0, 2, 2)], []], r"boxes\[1\] is empty"),
        ([[(0, 0, 2, 2)], [(2, 0, 2, 3)]], r"boxes\[1\]\[0\] = \(2, 0, 2, 3\) is not a box"),
        ([[(0, 0, 9, 2)], [(0, 0, 1, 1)]], r"0 <= x0 < x1 <= W = 8"),
        ([[(0, 0, 1.5, 2)], [(0, 0, 1, 1)]], r"non-integer coordinates"),
        ([[(0, 0, 2)], [(0, 0, 1, 1)]], r"boxes\[0\] has shape \(1, 3\); expected \[B, 4\]"),
    ],
)
def test_bad_boxes_are_refused(boxes, message):
    maps = np.zeros((2, 6, 8))
    with pytest.raises(ValueError, match=message):
        pointing_game(maps, boxes)
    with pytest.raises(ValueError, match=message):
        energy_pointing_game(maps, boxes)


def test_bad_maps_and_tolerance_are_refused():
    with pytest.raises(ValueError, match=r"saliency has shape \(6, 8\); expected \[N, H, W\]"):
        pointing_game(np.zeros((6, 8)), [[(0, 0, 1, 1)]])
    with pytest.raises(ValueError, match="tolerance must be a number of pixels >= 0"):
        pointing_game(np.zeros((1, 6, 8)), [[(0, 0, 1, 1)]], tolerance=-1)
    with pytest.raises(ValueError, match="saliency contains NaN"):
        energy_pointing_game(np.full((1, 6, 8), np.nan), [[(0, 0, 1, 1)]])
