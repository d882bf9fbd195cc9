"""Localisation of saliency maps against bounding boxes: the pointing game and its energy-based variant.

Boxes are given per image as a sequence of ``(x0, y0, x1, y1)`` in the saliency map's pixel
coordinates (column ``x``, row ``y``, origin top-left), **inclusive-exclusive**: the box covers the
columns ``x0 .. x1 − 1`` and the rows ``y0 .. y1 − 1``, i.e. ``saliency[i, y0:y1, x0:x1]``. Integer
coordinates with ``0 <= x0 < x1 <= W`` and ``0 <= y0 < y1 <= H`` are required (scale boxes given in
original-image coordinates to the map's grid, e.g. through the preprocessing's resize and crop,
before calling). An image needs at least one box.

Only numpy is imported.

Example::

    >>> import numpy as np
    >>> maps = np.zeros((1, 8, 8)); maps[0, 2, 3] = 1.0           # the maximum at x=3, y=2
    >>> pointing_game(maps, [[(2, 1, 5, 4)]]).tolist()             # box columns 2..4, rows 1..3
    [True]
    >>> energy_pointing_game(maps, [[(2, 1, 5, 4)]]).tolist()
    [1.0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxcam.metrics.faithfulness import finite_maps, normalize_maps

__all__ = ["Boxes", "boxes_mask", "energy_pointing_game", "pointing_game"]

#: Per image, a sequence of ``(x0, y0, x1, y1)`` boxes (inclusive-exclusive pixel coordinates).
Boxes = Sequence[Sequence[Sequence[int]]]


def _check_maps(saliency: object) -> np.ndarray:
    s = np.asarray(saliency)
    if s.ndim != 3 or 0 in s.shape:
        raise ValueError(f"saliency has shape {tuple(s.shape)}; expected [N, H, W] with N, H, W >= 1")
    return finite_maps(s)


def _check_boxes(boxes: Boxes, n: int, h: int, w: int) -> list[np.ndarray]:
    """Per image, an int64 array ``[B, 4]`` of valid boxes."""
    if isinstance(boxes, np.ndarray) and boxes.ndim == 2:
        raise ValueError("boxes must hold one sequence of boxes per image ([N][B][4]), got a 2-D array")
    try:
        count = len(boxes)
    except TypeError:
        raise ValueError(f"boxes must be a sequence of N = {n} box lists, got {type(boxes).__name__}") from None
    if count != n:
        raise ValueError(f"boxes has {count} entries; expected one box list per image, N = {n}")
    out = []
    for i, image_boxes in enumerate(boxes):
        b = np.asarray(image_boxes, dtype=np.float64) if len(image_boxes) else np.zeros((0, 4))
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] has shape {tuple(b.shape)}; expected [B, 4] boxes (x0, y0, x1, y1)")
        if b.shape[0] == 0:
            raise ValueError(f"boxes[{i}] is empty; every image needs at least one box")
        if not np.all(b == np.round(b)):
            raise ValueError(f"boxes[{i}] has non-integer coordinates {b.tolist()}; round them to the map's pixels")
        b = b.astype(np.int64)
        x0, y0, x1, y1 = b.T
        bad = ~((0 <= x0) & (x0 < x1) & (x1 <= w) & (0 <= y0) & (y0 < y1) & (y1 <= h))
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(
                f"boxes[{i}][{j}] = {tuple(b[j].tolist())} is not a box (x0, y0, x1, y1) with "
                f"0 <= x0 < x1 <= W = {w} and 0 <= y0 < y1 <= H = {h}"
            )
        out.append(b)
    return out


def boxes_mask(boxes: Sequence[Sequence[int]], height: int, width: int) -> np.ndarray:
    """Boolean ``[height, width]`` mask of the union of one image's boxes (inclusive-exclusive).

    Built from row/column interval tests, with no loop over pixels.

    Example::

        >>> boxes_mask([(0, 0, 2, 1), (1, 1, 3, 3)], 3, 3).astype(int).tolist()
        [[1, 1, 0], [0, 1, 1], [0, 1, 1]]
    """
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    rows = np.arange(height)[None, :, None]
    cols = np.arange(width)[None, None, :]
    inside = (
        (rows >= b[:, 1, None, None]) & (rows < b[:, 3, None, None])
        & (cols >= b[:, 0, None, None]) & (cols < b[:, 2, None, None])
    )
    return inside.any(axis=0)


def pointing_game(saliency: np.ndarray, boxes: Boxes, tolerance: float = 15) -> np.ndarray:
    """Pointing game hits (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016).

    The point of an image is its maximum-saliency pixel ``(x*, y*)`` (the first maximum in row-major
    order when several pixels tie, ``np.argmax``). It is a **hit** when it lies within ``tolerance``
    pixels of any of the image's boxes: with the Euclidean distance from the pixel to the nearest pixel
    of the box, ``d = ‖(max(x0 − x*, 0, x* − (x1 − 1)), max(y0 − y*, 0, y* − (y1 − 1)))‖``,
    hit iff ``d <= tolerance`` (the paper uses 15 px on 224 px inputs; ``tolerance=0`` asks for
    the point to be inside a box). Accuracy is ``hits.mean()``.

    Args:
        saliency: maps ``[N, H, W]``.
        boxes: per image, its ``(x0, y0, x1, y1)`` boxes (see the module docstring).
        tolerance: in map pixels, >= 0.

    Returns:
        bool ``[N]``: hit or miss per image.

    Example::

        >>> maps = np.zeros((3, 40, 40)); maps[:, 20, 30] = 1.0       # the point: x=30, y=20
        >>> box = (0, 0, 16, 40)                    # columns 0..15: the point is 30 - 15 = 15 px away
        >>> pointing_game(maps, [[box], [(31, 0, 40, 40)], [(10, 18, 31, 22)]]).tolist()  # 15 px, 1 px, inside
        [True, True, True]
        >>> pointing_game(maps[:1], [[box]], tolerance=14.9).tolist()
        [False]
    """
    s = _check_maps(saliency)
    n, h, w = s.shape
    if isinstance(tolerance, (bool, np.bool_)) or not np.isscalar(tolerance) or not (float(tolerance) >= 0):
        raise ValueError(f"tolerance must be a number of pixels >= 0, got {tolerance!r}")
    per_image = _check_boxes(boxes, n, h, w)
    ys, xs = np.divmod(s.reshape(n, -1).argmax(axis=1), w)
    hits = np.empty(n, bool)
    for i, b in enumerate(per_image):  # a loop over images; the boxes are vectorised
        dx = np.maximum.reduce([b[:, 0] - xs[i], np.zeros(len(b), np.int64), xs[i] - (b[:, 2] - 1)])
        dy = np.maximum.reduce([b[:, 1] - ys[i], np.zeros(len(b), np.int64), ys[i] - (b[:, 3] - 1)])
        hits[i] = bool(np.any(dx * dx + dy * dy <= float(tolerance) ** 2))
    return hits


def energy_pointing_game(saliency: np.ndarray, boxes: Boxes) -> np.ndarray:
    """Energy-based pointing game (Wang et al., "Score-CAM", CVPR Workshops 2020, localisation evaluation).

    The paper binarises the image with the region of interest (1 inside the bounding box, 0 outside),
    multiplies it with the saliency map and sums, giving the share of the map's energy in the box::

        Proportion = Σ_{(i,j) ∈ bbox} L(i,j) / (Σ_{(i,j) ∈ bbox} L(i,j) + Σ_{(i,j) ∉ bbox} L(i,j))

    as in the authors' code (github.com/haofanwang/Score-CAM, ``utils/energyPointGame.py``:
    ``energy_bbox / energy_whole``, with the box filled as ``mask[x1:x2, y1:y2]``, i.e. its first
    coordinate indexes rows; here ``x`` is always the column); the authors recommend it over the
    pointing game for images with several objects (issue #23 of that repository). Here ``L`` is the map
    **min-max normalised per image** to [0, 1] first (:func:`onnxcam.metrics.faithfulness.normalize_maps`),
    so maps of any offset or scale are comparable (for a CAM, whose minimum is usually 0 after its
    ReLU, this changes nothing), and the box region is the **union** of the image's boxes. A constant
    map has no energy (``L = 0``): its proportion is NaN.

    Args:
        saliency: maps ``[N, H, W]``.
        boxes: per image, its ``(x0, y0, x1, y1)`` boxes (see the module docstring).

    Returns:
        float ``[N]`` in [0, 1] (NaN for a constant map); higher is better.

    Example::

        >>> maps = np.array([[[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]]])     # energy 0+1+2 per row
        >>> energy_pointing_game(maps, [[(2, 0, 3, 2)]]).tolist()      # the last column: 2 of 3
        [0.6666666666666666]
    """
    s = _check_maps(saliency)
    n, h, w = s.shape
    per_image = _check_boxes(boxes, n, h, w)
    energy = normalize_maps(s)
    inside = np.stack([boxes_mask(b, h, w) for b in per_image])
    total = energy.sum(axis=(1, 2))
    boxed = (energy * inside).sum(axis=(1, 2))
    return np.where(total > 0, boxed / np.where(total > 0, total, 1.0), np.nan)
