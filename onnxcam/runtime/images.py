"""Image loading and preprocessing for onnxcam-exported models (numpy + OpenCV only).

The preprocessing is described by a plain dict (the ``onnxcam.preprocessing`` metadata of an exported
model, or one of :data:`onnxcam.contract.PREPROCESSING_PRESETS`) with the keys of
:data:`onnxcam.contract.PREPROCESSING_KEYS`:

``color``          "RGB", "BGR" or "GRAY" (one channel): what the model expects
``resize``         "shorter": resize the shorter side to ``resize_size`` (the longer side to
                   ``int(resize_size * long / short)``, torchvision's ``Resize(int)``), then centre-crop
                   to the input size (torchvision's ``CenterCrop``: top = ``round((h - H) / 2)``,
                   left = ``round((w - W) / 2)``, zero padding if the resized image is smaller);
                   "exact": resize straight to the input size
``resize_size``    int, only for "shorter"
``interpolation``  "linear" | "area" | "nearest" | "cubic" (OpenCV's; default "linear")
``scale``          float multiplied into the 0..255 pixel values (usually 1/255)
``mean``, ``std``  per-channel lists: ``x = (pixel * scale - mean) / std``

Example::

    >>> import numpy as np
    >>> from onnxcam.contract import PREPROCESSING_PRESETS
    >>> from onnxcam.runtime.images import preprocess
    >>> image = np.zeros((300, 400, 3), np.uint8)
    >>> batch, display = preprocess([image], PREPROCESSING_PRESETS["imagenet"], (224, 224))
    >>> batch.shape, batch.dtype, display[0].shape
    ((1, 3, 224, 224), dtype('float32'), (224, 224, 3))
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Union

import cv2
import numpy as np

from onnxcam import contract
from onnxcam.resize import parse_hw

__all__ = ["INTERPOLATIONS", "load_image", "preprocess", "validate_preprocessing"]

#: OpenCV interpolation flags for the ``interpolation`` key of the preprocessing dict.
INTERPOLATIONS: dict[str, int] = {
    "linear": cv2.INTER_LINEAR,
    "area": cv2.INTER_AREA,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}

_COLOR_CHANNELS = {"RGB": 3, "BGR": 3, "GRAY": 1}

PathLike = Union[str, "os.PathLike[str]"]


def load_image(path: PathLike) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array of shape ``[H, W, 3]``.

    Uses ``cv2.imread(path, cv2.IMREAD_COLOR)`` (grey-scale and 16-bit files are converted to 8-bit
    colour; EXIF orientation is applied) followed by BGR -> RGB.

    Raises:
        ValueError: the file is missing, is not a regular file, or OpenCV cannot decode it
            (corrupt or unsupported format); the message names the file.

    Example::

        >>> image = load_image("cat.jpg")  # doctest: +SKIP
        >>> image.shape, image.dtype  # doctest: +SKIP
        ((480, 640, 3), dtype('uint8'))
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ValueError(f"cannot read image {name!r}: no such file")
    if not os.path.isfile(name):
        raise ValueError(f"cannot read image {name!r}: not a regular file")
    bgr = cv2.imread(name, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ValueError(
            f"cannot read image {name!r}: OpenCV could not decode it (corrupt, truncated or "
            "unsupported format)"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def validate_preprocessing(preprocessing: Mapping) -> dict:
    """Check a preprocessing dict and return a normalised copy (``interpolation`` defaulted).

    Raises:
        ValueError: unknown keys, missing keys, or values of the wrong kind; the message says which.
    """
    if not isinstance(preprocessing, Mapping):
        raise ValueError(f"preprocessing must be a dict, got {type(preprocessing).__name__}")
    unknown = sorted(set(preprocessing) - set(contract.PREPROCESSING_KEYS))
    if unknown:
        raise ValueError(
            f"unknown preprocessing key(s) {unknown}; valid keys are {list(contract.PREPROCESSING_KEYS)}"
        )
    p = dict(preprocessing)
    p.setdefault("interpolation", "linear")
    missing = [k for k in ("color", "resize", "scale", "mean", "std") if k not in p]
    if missing:
        raise ValueError(f"preprocessing is missing key(s) {missing}")
    if p["color"] not in _COLOR_CHANNELS:
        raise ValueError(f"preprocessing color must be one of {list(_COLOR_CHANNELS)}, got {p['color']!r}")
    if p["resize"] not in ("shorter", "exact"):
        raise ValueError(f"preprocessing resize must be 'shorter' or 'exact', got {p['resize']!r}")
    if p["resize"] == "shorter":
        size = p.get("resize_size")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(
                f"preprocessing resize 'shorter' needs a positive integer resize_size, got {size!r}"
            )
        p["resize_size"] = int(size)
    if p["interpolation"] not in INTERPOLATIONS:
        raise ValueError(
            f"preprocessing interpolation must be one of {list(INTERPOLATIONS)}, got {p['interpolation']!r}"
        )
    try:
        p["scale"] = float(p["scale"])
    except (TypeError, ValueError):
        raise ValueError(f"preprocessing scale must be a number, got {p['scale']!r}") from None
    channels = _COLOR_CHANNELS[p["color"]]
    for key in ("mean", "std"):
        try:
            values = np.asarray(p[key], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"preprocessing {key} must be a list of numbers, got {p[key]!r}") from None
        if values.size not in (1, channels):
            raise ValueError(
                f"preprocessing {key} must have 1 or {channels} values for color {p['color']!r}, "
                f"got {values.size}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError(f"preprocessing {key} must be finite, got {p[key]!r}")
        p[key] = [float(v) for v in values]
    if any(s == 0 for s in p["std"]):
        raise ValueError(f"preprocessing std must be non-zero, got {p['std']!r}")
    return p


def color_channels(preprocessing: Mapping) -> int:
    """Number of channels the model sees for a preprocessing dict (1 for "GRAY", else 3)."""
    return _COLOR_CHANNELS[preprocessing["color"]]


def _as_rgb_uint8(image: np.ndarray, index: int) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image {index} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"image {index} must be uint8 (0..255 RGB), got {image.dtype}; convert it with "
            "np.clip(image, 0, 255).astype(np.uint8) or load it with load_image()"
        )
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim == 3 and image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image {index} must have shape [H, W, 3] (RGB) or [H, W] (grey), got {tuple(image.shape)}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image {index} is empty, shape {tuple(image.shape)}")
    return image


def _resize_shorter_and_crop(image: np.ndarray, size: int, out_hw: tuple[int, int], flag: int) -> np.ndarray:
    """torchvision ``Resize(size)`` + ``CenterCrop(out_hw)`` geometry with an OpenCV resize."""
    h, w = image.shape[:2]
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_h, new_w) != (h, w):
        image = cv2.resize(image, (new_w, new_h), interpolation=flag)
    crop_h, crop_w = out_hw
    if crop_h > new_h or crop_w > new_w:  # torchvision pads with zeros first
        left = (crop_w - new_w) // 2 if crop_w > new_w else 0
        top = (crop_h - new_h) // 2 if crop_h > new_h else 0
        right = (crop_w - new_w + 1) // 2 if crop_w > new_w else 0
        bottom = (crop_h - new_h + 1) // 2 if crop_h > new_h else 0
        image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=0)
        new_h, new_w = image.shape[:2]
    top = int(round((new_h - crop_h) / 2.0))
    left = int(round((new_w - crop_w) / 2.0))
    return image[top : top + crop_h, left : left + crop_w]


def preprocess(
    images: Sequence[np.ndarray] | np.ndarray,
    preprocessing: Mapping,
    input_size: tuple[int, int],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Turn RGB ``uint8`` images into the float32 NCHW batch a model expects.

    Steps, per the preprocessing dict (see the module docstring): resize ("shorter" + centre crop, or
    "exact") with OpenCV, colour conversion (RGB kept; BGR channel flip; GRAY with
    ``cv2.COLOR_RGB2GRAY``), then ``x = (pixel * scale - mean) / std`` and HWC -> CHW, vectorised over
    the whole batch.

    Args:
        images: a sequence of RGB ``uint8`` arrays ``[H_i, W_i, 3]`` (``[H_i, W_i]`` grey is promoted
            to RGB), sizes may differ; or one ``uint8`` array ``[N, H, W, 3]``.
        preprocessing: the preprocessing dict.
        input_size: ``(H, W)`` of the model input.

    Returns:
        ``(batch, display)``: ``batch`` float32 ``[N, C, H, W]`` (C = 1 for "GRAY", else 3);
        ``display`` a list of the RGB ``uint8`` ``[H, W, 3]`` images the model saw (after
        resize/crop, before colour conversion and normalisation), for overlays.

    Raises:
        ValueError: invalid preprocessing dict, empty input, or an image of the wrong dtype/shape.
    """
    p = validate_preprocessing(preprocessing)
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(
                f"images must be a list of [H, W, 3] arrays or one [N, H, W, 3] array, got an array of "
                f"shape {tuple(images.shape)}; wrap a single image in a list: [image]"
            )
        images = list(images)
    else:
        images = list(images)
    if not images:
        raise ValueError("no images to preprocess (empty list)")
    height, width = parse_hw(input_size, "input_size")
    flag = INTERPOLATIONS[p["interpolation"]]

    display: list[np.ndarray] = []
    for index, image in enumerate(images):
        rgb = _as_rgb_uint8(image, index)
        if p["resize"] == "shorter":
            out = _resize_shorter_and_crop(rgb, p["resize_size"], (height, width), flag)
        elif rgb.shape[:2] != (height, width):
            out = cv2.resize(rgb, (width, height), interpolation=flag)
        else:
            out = rgb
        display.append(np.ascontiguousarray(out))

    stacked = np.stack(display)  # [N, H, W, 3] uint8
    if p["color"] == "BGR":
        stacked = stacked[..., ::-1]
    elif p["color"] == "GRAY":
        n = stacked.shape[0]
        gray = cv2.cvtColor(stacked.reshape(n * height, width, 3), cv2.COLOR_RGB2GRAY)
        stacked = gray.reshape(n, height, width, 1)
        display = [cv2.cvtColor(g[:, :, 0], cv2.COLOR_GRAY2RGB) for g in stacked]
    mean = np.asarray(p["mean"], np.float32)
    std = np.asarray(p["std"], np.float32)
    x = stacked.astype(np.float32) * np.float32(p["scale"])
    x -= mean
    x /= std
    batch = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return batch, display
