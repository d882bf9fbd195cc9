"""load_image and preprocess."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from onnxcam.contract import PREPROCESSING_PRESETS
from onnxcam.runtime import Explainer, load_image, preprocess, validate_preprocessing

IMAGENET = PREPROCESSING_PRESETS["imagenet"]
MEAN = np.array(IMAGENET["mean"])
STD = np.array(IMAGENET["std"])


@pytest.fixture
def rgb(rng) -> np.ndarray:
    return rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- load_image
def test_load_image_matches_pillow(tmp_path, rgb):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)  # written by an independent encoder, in RGB
    got = load_image(path)
    assert got.dtype == np.uint8 and got.shape == (30, 45, 3)
    np.testing.assert_array_equal(got, rgb)
    np.testing.assert_array_equal(load_image(str(path)), np.asarray(Image.open(path).convert("RGB")))


def test_load_grey_image_gives_three_channels(tmp_path, rng):
    from PIL import Image

    grey = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(grey).save(path)
    got = load_image(path)
    assert got.shape == (12, 9, 3)
    for ch in range(3):
        np.testing.assert_array_equal(got[:, :, ch], grey)


def test_load_missing(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read image '.*missing.png': no such file"):
        load_image(tmp_path / "missing.png")


def test_load_directory(tmp_path):
    with pytest.raises(ValueError, match=r"not a regular file"):
        load_image(tmp_path)


def test_load_corrupt(tmp_path, rgb):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    with pytest.raises(ValueError, match=r"cannot read image '.*corrupt.jpg': OpenCV could not decode it"):
        load_image(bad)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.png"):
        load_image(empty)
    data = cv2.imencode(".png", rgb)[1].tobytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated.png"):
        load_image(truncated)


# ---------------------------------------------------------------------------- preprocess
def normalise(images_hwc: np.ndarray, mean=MEAN, std=STD, scale=1 / 255) -> np.ndarray:
    """Independent float64 normalisation, NHWC -> NCHW."""
    return ((images_hwc.astype(np.float64) * scale - mean) / std).transpose(0, 3, 1, 2)


def test_exact_resize(rgb, rng):
    pre = dict(IMAGENET, resize="exact")
    del pre["resize_size"]
    other = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    batch, display = preprocess([rgb, other], pre, (16, 20))
    assert batch.shape == (2, 3, 16, 20) and batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    expected_display = [cv2.resize(im, (20, 16), interpolation=cv2.INTER_LINEAR) for im in (rgb, other)]
    for d, e in zip(display, expected_display):
        assert d.dtype == np.uint8 and d.shape == (16, 20, 3)
        np.testing.assert_array_equal(d, e)
    np.testing.assert_allclose(batch, normalise(np.stack(expected_display)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,flag", [("area", cv2.INTER_AREA), ("nearest", cv2.INTER_NEAREST), ("cubic", cv2.INTER_CUBIC)])
def test_interpolations(rgb, name, flag):
    pre = {"color": "RGB", "resize": "exact", "interpolation": name, "scale": 1.0, "mean": [0.0], "std": [1.0]}
    batch, display = preprocess([rgb], pre, (10, 12))
    np.testing.assert_array_equal(display[0], cv2.resize(rgb, (12, 10), interpolation=flag))
    np.testing.assert_array_equal(batch[0], display[0].transpose(2, 0, 1).astype(np.float32))


# Hand-computed torchvision Resize(256) + CenterCrop(224) geometry:
#   landscape 300x400: short side 300 -> 256, long int(256*400/300) = int(341.33) = 341;
#       top = round((256-224)/2) = 16, left = round((341-224)/2) = round(58.5) = 58 (round half to even)
#   portrait 500x375: -> 341x256, top = 58, left = 16
#   square 256x256: no resize, top = left = 16
#   455x300: short 300 -> 256, long int(256*455/300) = int(388.27) = 388; top = round(82) = 82, left = 16
@pytest.mark.parametrize(
    "hw,resized_hw,top,left",
    [((300, 400), (256, 341), 16, 58), ((500, 375), (341, 256), 58, 16), ((256, 256), (256, 256), 16, 16), ((455, 300), (388, 256), 82, 16)],
)
def test_shorter_resize_centre_crop_geometry(rng, hw, resized_hw, top, left):
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    pre = dict(IMAGENET, interpolation="nearest")
    batch, display = preprocess([image], pre, (224, 224))
    rh, rw = resized_hw
    resized = cv2.resize(image, (rw, rh), interpolation=cv2.INTER_NEAREST) if (rh, rw) != hw else image
    expected = resized[top : top + 224, left : left + 224]
    np.testing.assert_array_equal(display[0], expected)
    np.testing.assert_allclose(batch, normalise(expected[None]), rtol=1e-6, atol=1e-6)


def test_shorter_resize_linear_default(rng):
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    _, display = preprocess([image], IMAGENET, (224, 224))
    expected = cv2.resize(image, (341, 256), interpolation=cv2.INTER_LINEAR)[16:240, 58:282]
    np.testing.assert_array_equal(display[0], expected)


def test_shorter_resize_smaller_than_crop_pads_with_zeros(rng):
    # 20x10 with resize_size 8 -> 16x8 (h x w); crop 16x16 pads 4 columns left and 4 right (torchvision)
    image = rng.integers(1, 256, (20, 10, 3), dtype=np.uint8)
    pre = dict(IMAGENET, resize_size=8, interpolation="nearest")
    _, display = preprocess([image], pre, (16, 16))
    resized = cv2.resize(image, (8, 16), interpolation=cv2.INTER_NEAREST)
    assert np.all(display[0][:, :4] == 0) and np.all(display[0][:, 12:] == 0)
    np.testing.assert_array_equal(display[0][:, 4:12], resized)


def test_bgr_model(rgb):
    pre = {"color": "BGR", "resize": "exact", "interpolation": "nearest", "scale": 0.5, "mean": [1.0, 2.0, 3.0], "std": [2.0, 4.0, 8.0]}
    batch, display = preprocess([rgb], pre, (30, 45))
    np.testing.assert_array_equal(display[0], rgb)  # display stays RGB
    bgr = rgb[:, :, ::-1].astype(np.float64)
    expected = ((bgr * 0.5 - [1.0, 2.0, 3.0]) / [2.0, 4.0, 8.0]).transpose(2, 0, 1)
    np.testing.assert_allclose(batch[0], expected, rtol=1e-6)


def test_gray_model(rgb):
    batch, display = preprocess([rgb, rgb[::-1]], PREPROCESSING_PRESETS["mnist"], (28, 28))
    assert batch.shape == (2, 1, 28, 28)
    resized = cv2.resize(rgb, (28, 28), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(batch[0, 0], grey.astype(np.float32))  # scale 1, mean 0, std 1
    assert display[0].shape == (28, 28, 3)
    for ch in range(3):
        np.testing.assert_array_equal(display[0][:, :, ch], grey)


def test_grey_input_images_are_promoted(rng):
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    pre = dict(PREPROCESSING_PRESETS["cifar10"])
    a, _ = preprocess([grey], pre, (16, 16))
    b, _ = preprocess([np.repeat(grey[:, :, None], 3, axis=2)], pre, (16, 16))
    np.testing.assert_array_equal(a, b)


def test_nhwc_array_input(rng):
    stack = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    pre = PREPROCESSING_PRESETS["cifar10"]
    a, _ = preprocess(stack, pre, (16, 16))
    b, _ = preprocess(list(stack), pre, (16, 16))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, normalise(stack), rtol=1e-6, atol=1e-6)


def test_preprocess_errors(rgb):
    pre = PREPROCESSING_PRESETS["cifar10"]
    with pytest.raises(ValueError, match=r"image 1 must be uint8 \(0..255 RGB\), got float32"):
        preprocess([rgb, rgb.astype(np.float32)], pre, (8, 8))
    with pytest.raises(ValueError, match=r"image 0 must have shape \[H, W, 3\] \(RGB\) or \[H, W\] \(grey\), got \(30, 45, 4\)"):
        preprocess([np.zeros((30, 45, 4), np.uint8)], pre, (8, 8))
    with pytest.raises(ValueError, match=r"wrap a single image in a list"):
        preprocess(rgb, pre, (8, 8))
    with pytest.raises(ValueError, match=r"no images to preprocess"):
        preprocess([], pre, (8, 8))
    with pytest.raises(ValueError, match=r"image 0 must be a numpy array, got list"):
        preprocess([[1, 2, 3]], pre, (8, 8))
    with pytest.raises(ValueError, match=r"input_size must be"):
        preprocess([rgb], pre, (8,))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"colour": "RGB"}, r"unknown preprocessing key\(s\) \['colour'\]"),
        ({"color": "RGBA"}, r"color must be one of \['RGB', 'BGR', 'GRAY'\], got 'RGBA'"),
        ({"resize": "longer"}, r"resize must be 'shorter' or 'exact', got 'longer'"),
        ({"resize_size": None}, r"resize 'shorter' needs a positive integer resize_size, got None"),
        ({"interpolation": "lanczos"}, r"interpolation must be one of"),
        ({"scale": "x"}, r"scale must be a number"),
        ({"mean": [0.1, 0.2]}, r"mean must have 1 or 3 values for color 'RGB', got 2"),
        ({"std": [1.0, 0.0, 1.0]}, r"std must be non-zero"),
    ],
)
def test_validate_preprocessing_errors(change, message):
    with pytest.raises(ValueError, match=message):
        validate_preprocessing(dict(IMAGENET, **change))


def test_validate_preprocessing_missing_and_defaults():
    with pytest.raises(ValueError, match=r"missing key\(s\) \['mean'\]"):
        validate_preprocessing({k: v for k, v in IMAGENET.items() if k != "mean"})
    with pytest.raises(ValueError, match=r"must be a dict"):
        validate_preprocessing("imagenet")
    p = validate_preprocessing({k: v for k, v in IMAGENET.items() if k != "interpolation"})
    assert p["interpolation"] == "linear"


def test_explainer_preprocess_channel_mismatch(explainer, rgb):
    with pytest.raises(ValueError, match=r"preprocessing color 'GRAY' gives 1 channel\(s\) but the model expects 3"):
        explainer.preprocess([rgb], PREPROCESSING_PRESETS["mnist"])
    assert isinstance(explainer, Explainer)
