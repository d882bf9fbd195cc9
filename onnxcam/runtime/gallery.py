"""A comparison grid: one row per image, the photo then one heatmap overlay per method (numpy + OpenCV).

Layout (all sizes in pixels; ``N`` rows, ``M`` method columns, square cells of side ``cell``)::

    height = TITLE_HEIGHT + N · (cell + CAPTION_HEIGHT)
    width  = GAP + (M + 1) · (cell + GAP)

The top band (``TITLE_HEIGHT``) holds the column titles, centred over their cells; each row is a band of
cells (column 0 the photo, column ``j`` ≥ 1 ``overlay(photo, heatmaps_j[i], alpha)``) followed by a
caption band (``CAPTION_HEIGHT``) with the row's caption, left-aligned. Cell ``(row, col)`` has its
top-left corner at :func:`cell_origin`. A picture that is not ``cell × cell`` is resized to fit (aspect
kept, ``INTER_AREA`` when shrinking, ``INTER_LINEAR`` when growing) and centred on the white
background; the overlay is made at the photo's own size first, so a heatmap is never stretched over
padding. Text is drawn with ``cv2.putText`` (Hershey simplex, anti-aliased), shrunk and then truncated
with "..." to fit; characters outside ASCII are transliterated or dropped (OpenCV has no Unicode font).

Example::

    >>> import numpy as np
    >>> photo = np.full((64, 64, 3), 200, np.uint8)
    >>> heat = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(1, 64, 64)
    >>> grid = render_gallery([photo], [("LIFT-CAM", heat)], ["tabby (p=0.91)"], cell=64)
    >>> grid.shape == (TITLE_HEIGHT + 64 + CAPTION_HEIGHT, GAP + 2 * (64 + GAP), 3), grid.dtype
    (True, dtype('uint8'))
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import cv2
import numpy as np

from onnxcam.runtime.overlay import overlay

__all__ = ["CAPTION_HEIGHT", "GAP", "TITLE_HEIGHT", "cell_origin", "gallery_shape", "render_gallery"]

#: Height of the band holding the column titles.
TITLE_HEIGHT = 30
#: Height of the band under each row holding its caption.
CAPTION_HEIGHT = 26
#: Margin left of the first column, between columns and right of the last one.
GAP = 4
#: Smallest accepted cell side.
MIN_CELL = 16

_BACKGROUND = (255, 255, 255)
_INK = (20, 20, 20)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_SCALE = 0.55
_MIN_SCALE = 0.35


def gallery_shape(rows: int, columns: int, cell: int = 224) -> tuple[int, int, int]:
    """``(height, width, 3)`` of a grid of ``rows`` images and ``columns`` methods (plus the photo column)."""
    return TITLE_HEIGHT + rows * (cell + CAPTION_HEIGHT), GAP + (columns + 1) * (cell + GAP), 3


def cell_origin(row: int, col: int, cell: int = 224) -> tuple[int, int]:
    """``(top, left)`` of cell ``(row, col)``; column 0 is the photo, column ``j`` the j-th method."""
    return TITLE_HEIGHT + row * (cell + CAPTION_HEIGHT), GAP + col * (cell + GAP)


def _ascii(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", str(text))
    return decomposed.encode("ascii", "ignore").decode("ascii")


def _fit_text(text: str, max_width: int) -> tuple[str, float]:
    """The text (truncated with "..." if needed) and a font scale at which it is at most ``max_width`` wide."""
    text = _ascii(text)
    scale = _SCALE
    while scale > _MIN_SCALE and cv2.getTextSize(text, _FONT, scale, 1)[0][0] > max_width:
        scale = round(scale - 0.05, 2)
    if cv2.getTextSize(text, _FONT, scale, 1)[0][0] > max_width:
        while text and cv2.getTextSize(text + "...", _FONT, scale, 1)[0][0] > max_width:
            text = text[:-1]
        text += "..."
    return text, scale


def _put_text(canvas: np.ndarray, text: str, left: int, top: int, width: int, height: int, centred: bool) -> None:
    """Draw ``text`` inside the box ``(left, top, width, height)``, vertically centred."""
    text, scale = _fit_text(text, max(width - 4, 1))
    (w, h), _ = cv2.getTextSize(text, _FONT, scale, 1)
    x = left + (width - w) // 2 if centred else left + 2
    y = top + (height + h) // 2
    cv2.putText(canvas, text, (x, y), _FONT, scale, _INK, 1, cv2.LINE_AA)


def _fit(picture: np.ndarray, cell: int) -> np.ndarray:
    """``picture`` resized (aspect kept) and centred on a white ``cell × cell`` square."""
    h, w = picture.shape[:2]
    if (h, w) == (cell, cell):
        return picture
    scale = cell / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    flag = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(picture, (new_w, new_h), interpolation=flag)
    out = np.empty((cell, cell, 3), np.uint8)
    out[:] = _BACKGROUND
    top, left = (cell - new_h) // 2, (cell - new_w) // 2
    out[top : top + new_h, left : left + new_w] = resized
    return out


def _check(images: Sequence[np.ndarray], columns: Sequence[tuple[str, np.ndarray]], row_captions: Sequence[str], cell: int) -> None:
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or cell < MIN_CELL:
        raise ValueError(f"cell must be an integer >= {MIN_CELL}, got {cell!r}")
    n = len(images)
    if n == 0:
        raise ValueError("no images: a gallery needs at least one row")
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image {i} must be an RGB uint8 array [H, W, 3], got {desc}")
    if len(row_captions) != n:
        raise ValueError(f"got {len(row_captions)} row captions for {n} images")
    for j, column in enumerate(columns):
        if not (isinstance(column, tuple) and len(column) == 2 and isinstance(column[0], str)):
            raise ValueError(f"column {j} must be a (title, heatmaps) tuple, got {type(column).__name__}")
        title, heatmaps = column
        if not isinstance(heatmaps, np.ndarray) or heatmaps.ndim != 3:
            shape = getattr(heatmaps, "shape", None)
            raise ValueError(f"column {title!r}: heatmaps must be an array [N, H, W], got shape {shape}")
        if heatmaps.shape[0] != n:
            raise ValueError(f"column {title!r} has {heatmaps.shape[0]} heatmaps for {n} images")


def render_gallery(
    images: Sequence[np.ndarray],
    columns: Sequence[tuple[str, np.ndarray]],
    row_captions: Sequence[str],
    *,
    cell: int = 224,
    alpha: float = 0.5,
) -> np.ndarray:
    """Render the comparison grid (see the module docstring for the layout).

    Args:
        images: the N photos, RGB uint8 ``[H_i, W_i, 3]`` (typically the model's input crops, the
            ``display`` of :meth:`onnxcam.runtime.Explainer.preprocess`).
        columns: ``(title, heatmaps)`` per method, heatmaps float ``[N, H, W]`` in [0, 1] (resized to each
            photo by :func:`onnxcam.runtime.overlay`).
        row_captions: one caption per image, e.g. ``"bull mastiff (p=0.83)"``.
        cell: side of each square cell in pixels (>= 16).
        alpha: heatmap weight in the overlays, in [0, 1].

    Returns:
        RGB uint8 ``[height, width, 3]`` with ``(height, width) = gallery_shape(N, len(columns), cell)[:2]``.

    Raises:
        ValueError: no images, an image that is not RGB uint8, a column whose heatmap count differs from
            the number of images (named by its title), a wrong number of captions, a bad ``cell``, or
            what :func:`onnxcam.runtime.overlay` refuses (heatmaps outside [0, 1], a bad ``alpha``).
    """
    _check(images, columns, row_captions, cell)
    canvas = np.empty(gallery_shape(len(images), len(columns), cell), np.uint8)
    canvas[:] = _BACKGROUND
    titles = ["image", *(title for title, _ in columns)]
    for col, title in enumerate(titles):
        _, left = cell_origin(0, col, cell)
        _put_text(canvas, title, left, 0, cell, TITLE_HEIGHT, centred=True)
    for row, image in enumerate(images):
        pictures = [image, *(overlay(image, heatmaps[row], alpha=alpha) for _, heatmaps in columns)]
        for col, picture in enumerate(pictures):
            top, left = cell_origin(row, col, cell)
            canvas[top : top + cell, left : left + cell] = _fit(picture, cell)
        top, _ = cell_origin(row, 0, cell)
        _put_text(canvas, row_captions[row], GAP, top + cell, canvas.shape[1] - 2 * GAP, CAPTION_HEIGHT, centred=False)
    return canvas
