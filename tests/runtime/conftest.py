"""A tiny, hand-built, contract-conforming onnxcam model for the runtime tests.

input [N,3,16,16] -> Conv(4, 3x3, stride 2, pad 1) -> Relu = A [N,4,8,8] -> GlobalAveragePool ->
Flatten -> Gemm(W [5,4], b) = logits [N,5].  For this GAP + Gemm head LIFT-CAM is exactly
``phi_k = W[c,k] * mean_ij A_kij`` and the DeepLIFT multipliers are ``W[c,k] / (h*w)``, so the contract
outputs are built with ordinary operators. The tests recompute everything with numpy
(``reference``), independently of both the graph and the runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcam import contract

C_IN, H, W = 3, 16, 16
K, h, w = 4, 8, 8
NUM_CLASSES = 5
CLASS_NAMES = ["apple", "banana", "cherry", "date", "elderberry"]

TINY_PREPROCESSING = dict(contract.PREPROCESSING_PRESETS["imagenet"], resize="exact")
TINY_PREPROCESSING.pop("resize_size")


@dataclass
class TinyWeights:
    conv_w: np.ndarray  # [K, 3, 3, 3]
    conv_b: np.ndarray  # [K]
    fc_w: np.ndarray  # [C, K]
    fc_b: np.ndarray  # [C]


def make_weights(seed: int = 1) -> TinyWeights:
    rng = np.random.default_rng(seed)
    return TinyWeights(
        conv_w=rng.normal(0, 0.5, (K, C_IN, 3, 3)).astype(np.float32),
        conv_b=rng.normal(0, 0.1, K).astype(np.float32),
        fc_w=rng.normal(0, 3.0, (NUM_CLASSES, K)).astype(np.float32),
        fc_b=rng.normal(0, 0.5, NUM_CLASSES).astype(np.float32),
    )


def build_tiny_model(
    weights: TinyWeights,
    raw: bool = False,
    metadata: bool = True,
    class_names: list[str] | None = None,
    preprocessing: dict | None = TINY_PREPROCESSING,
) -> onnx.ModelProto:
    """The tiny model with the onnxcam outputs (and metadata unless ``metadata=False``)."""
    inits = [
        numpy_helper.from_array(weights.conv_w, "conv_w"),
        numpy_helper.from_array(weights.conv_b, "conv_b"),
        numpy_helper.from_array(weights.fc_w, "fc_w"),
        numpy_helper.from_array(weights.fc_b, "fc_b"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "ax23"),
        numpy_helper.from_array(np.array([0], np.int64), "zero_i"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_scalar"),
        numpy_helper.from_array(np.array([1, H, W], np.int64), "tail_sizes"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["input", "conv_w", "conv_b"], ["conv"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Relu", ["conv"], ["A"]),
        n("GlobalAveragePool", ["A"], ["gap"]),
        n("Flatten", ["gap"], ["flat"], axis=1),
        n("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        # onnxcam outputs
        n("Identity", ["logits"], [contract.OUTPUT_LOGITS]),
        n("ArgMax", ["logits"], ["pred"], axis=1, keepdims=0),
        n("Less", [contract.INPUT_TARGET, "zero_scalar"], ["use_pred"]),
        n("Where", ["use_pred", "pred", contract.INPUT_TARGET], [contract.OUTPUT_CLASS]),
        n("Gather", ["fc_w", contract.OUTPUT_CLASS], ["w_c"], axis=0),
        n("ReduceMean", ["A"], ["mean_A"], axes=[2, 3], keepdims=0),
        n("Mul", ["w_c", "mean_A"], [contract.OUTPUT_COEFFICIENTS]),
        n("Unsqueeze", [contract.OUTPUT_COEFFICIENTS, "ax23"], ["coef4"]),
        n("Mul", ["coef4", "A"], ["weighted"]),
        n("ReduceSum", ["weighted", "ax1"], ["cam"], keepdims=0),
        n("Relu", ["cam"], [contract.OUTPUT_MAP]),
        n("Unsqueeze", [contract.OUTPUT_MAP, "ax1"], ["map4"]),
        n("Shape", ["input"], ["in_shape"]),
        n("Gather", ["in_shape", "zero_i"], ["batch_dim"], axis=0),
        n("Concat", ["batch_dim", "tail_sizes"], ["sizes"], axis=0),
        n("Resize", ["map4", "", "", "sizes"], ["up4"], mode="linear", coordinate_transformation_mode="half_pixel"),
        n("Squeeze", ["up4", "ax1"], ["up"]),
        n("ReduceMin", ["up"], ["mn"], axes=[1, 2], keepdims=1),
        n("ReduceMax", ["up"], ["mx"], axes=[1, 2], keepdims=1),
        n("Sub", ["mx", "mn"], ["rng"]),
        n("Greater", ["rng", "zero_f"], ["has_rng"]),
        n("Where", ["has_rng", "rng", "one_f"], ["den"]),
        n("Sub", ["up", "mn"], ["shifted"]),
        n("Div", ["shifted", "den"], [contract.OUTPUT_HEATMAP]),
    ]
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    outputs = [
        helper.make_tensor_value_info("logits", f32, ["N", NUM_CLASSES]),
        helper.make_tensor_value_info(contract.OUTPUT_LOGITS, f32, ["N", NUM_CLASSES]),
        helper.make_tensor_value_info(contract.OUTPUT_CLASS, i64, ["N"]),
        helper.make_tensor_value_info(contract.OUTPUT_COEFFICIENTS, f32, ["N", K]),
        helper.make_tensor_value_info(contract.OUTPUT_MAP, f32, ["N", h, w]),
        helper.make_tensor_value_info(contract.OUTPUT_HEATMAP, f32, ["N", H, W]),
    ]
    present = list(contract.STANDARD_OUTPUTS)
    if raw:
        inits.append(numpy_helper.from_array(np.array(1.0 / (h * w), np.float32), "inv_hw"))
        nodes += [
            n("Identity", ["A"], [contract.OUTPUT_ACTIVATIONS]),
            n("Mul", ["coef4", "zero_f"], ["zero4"]),  # [N,K,1,1] zeros, keeps the graph honest
            n("Unsqueeze", ["w_c", "ax23"], ["w_c4"]),
            n("Mul", ["w_c4", "inv_hw"], ["m_small"]),
            n("Shape", ["A"], ["a_shape"]),
            n("Add", ["m_small", "zero4"], ["m_small2"]),
            n("Expand", ["m_small2", "a_shape"], [contract.OUTPUT_MULTIPLIERS]),
        ]
        outputs += [
            helper.make_tensor_value_info(contract.OUTPUT_ACTIVATIONS, f32, ["N", K, h, w]),
            helper.make_tensor_value_info(contract.OUTPUT_MULTIPLIERS, f32, ["N", K, h, w]),
        ]
        present += list(contract.RAW_OUTPUTS)
    graph = helper.make_graph(
        nodes,
        "onnxcam_tiny",
        [
            helper.make_tensor_value_info("input", f32, ["N", C_IN, H, W]),
            helper.make_tensor_value_info(contract.INPUT_TARGET, i64, ["N"]),
        ],
        outputs,
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="onnxcam-tests")
    model.ir_version = 8
    if metadata:
        props = {
            contract.META_VERSION: "0.1.0",
            contract.META_METHOD: contract.METHOD_LIFTCAM,
            contract.META_INPUT: "input",
            contract.META_INPUT_SHAPE: json.dumps([C_IN, H, W]),
            contract.META_TARGET: "A",
            contract.META_TARGET_SHAPE: json.dumps([K, h, w]),
            contract.META_EXPLAINED: "logits",
            contract.META_NUM_CLASSES: str(NUM_CLASSES),
            contract.META_OUTPUTS: json.dumps(present),
            contract.META_SOURCE: "tests/runtime/conftest.py tiny model",
        }
        if preprocessing is not None:
            props[contract.META_PREPROCESSING] = json.dumps(preprocessing)
        if class_names is not None:
            props["onnxcam.class_names"] = json.dumps(class_names)
        helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------- numpy reference
def conv2d_s2p1(x: np.ndarray, wt: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv 3x3, stride 2, pad 1, in float64 via explicit patch extraction."""
    n, c, hh, ww = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    oh, ow = (hh + 2 - 3) // 2 + 1, (ww + 2 - 3) // 2 + 1
    out = np.zeros((n, wt.shape[0], oh, ow))
    for i in range(3):
        for j in range(3):
            patch = xp[:, :, i : i + 2 * oh : 2, j : j + 2 * ow : 2]  # [n, c, oh, ow]
            out += np.einsum("ncyx,kc->nkyx", patch, wt[:, :, i, j].astype(np.float64))
    return out + b.astype(np.float64)[None, :, None, None]


def resize_bilinear_half_pixel(m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """ONNX Resize(linear, half_pixel) / torch interpolate(bilinear, align_corners=False) of [N,h,w]."""

    def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        src = np.clip(src, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis_weights(m.shape[1], out_h)
    x0, x1, fx = axis_weights(m.shape[2], out_w)
    top = m[:, y0][:, :, x0] * (1 - fx) + m[:, y0][:, :, x1] * fx
    bot = m[:, y1][:, :, x0] * (1 - fx) + m[:, y1][:, :, x1] * fx
    return top * (1 - fy)[None, :, None] + bot * fy[None, :, None]


def reference(weights: TinyWeights, x: np.ndarray, target=None) -> dict[str, np.ndarray]:
    """Float64 LIFT-CAM of the tiny model, straight from the formulas."""
    a = np.maximum(conv2d_s2p1(x, weights.conv_w, weights.conv_b), 0.0)
    mean_a = a.mean(axis=(2, 3))
    logits = mean_a @ weights.fc_w.astype(np.float64).T + weights.fc_b
    n = x.shape[0]
    t = np.full(n, -1) if target is None else np.broadcast_to(np.asarray(target), (n,))
    classes = np.where(t < 0, logits.argmax(axis=1), t).astype(np.int64)
    coeff = weights.fc_w.astype(np.float64)[classes] * mean_a
    cam = np.maximum(np.einsum("nk,nkyx->nyx", coeff, a), 0.0)
    up = resize_bilinear_half_pixel(cam, H, W)
    mn = up.min(axis=(1, 2), keepdims=True)
    rng = up.max(axis=(1, 2), keepdims=True) - mn
    heat = np.where(rng > 0, (up - mn) / np.where(rng > 0, rng, 1.0), 0.0)
    mult = np.broadcast_to((weights.fc_w.astype(np.float64)[classes] / (h * w))[:, :, None, None], a.shape)
    return dict(logits=logits, classes=classes, coefficients=coeff, maps=cam, heatmaps=heat,
                activations=a, multipliers=mult)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def tiny_weights() -> TinyWeights:
    return make_weights()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, tiny_weights) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny.cam.onnx"
    onnx.save(build_tiny_model(tiny_weights), str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_raw_model_path(tmp_path_factory, tiny_weights) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny_raw.cam.onnx"
    onnx.save(build_tiny_model(tiny_weights, raw=True), str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_named_model_path(tmp_path_factory, tiny_weights) -> str:
    path = tmp_path_factory.mktemp("models") / "tiny_named.cam.onnx"
    onnx.save(build_tiny_model(tiny_weights, class_names=CLASS_NAMES), str(path))
    return str(path)


@pytest.fixture(scope="session")
def plain_model_path(tmp_path_factory, tiny_weights) -> str:
    """The same graph without any onnxcam metadata."""
    path = tmp_path_factory.mktemp("models") / "plain.onnx"
    onnx.save(build_tiny_model(tiny_weights, metadata=False), str(path))
    return str(path)


@pytest.fixture(scope="session")
def explainer(tiny_model_path):
    from onnxcam.runtime import Explainer

    return Explainer(tiny_model_path, device="cpu", threads=1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_batch(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise with a random per-image, per-channel offset, so that predictions vary across images."""
    offset = rng.uniform(-2.0, 2.0, (n, C_IN, 1, 1))
    return (rng.normal(0, 1, (n, C_IN, H, W)) + offset).astype(np.float32)


@pytest.fixture(scope="session")
def tiny():
    """The helpers of this module as a namespace (test modules must not import conftest directly)."""
    import types

    return types.SimpleNamespace(
        C_IN=C_IN, H=H, W=W, K=K, h=h, w=w, NUM_CLASSES=NUM_CLASSES, CLASS_NAMES=CLASS_NAMES,
        PREPROCESSING=TINY_PREPROCESSING, build=build_tiny_model, make_weights=make_weights,
        reference=reference, resize=resize_bilinear_half_pixel, random_batch=random_batch,
    )


# ---------------------------------------------------------------------------- real exported models
RESNET20_LAYER3 = "/layer3/layer3.2/Relu_1_output_0"  # [64, 8, 8]
RESNET20_LAYER2 = "/layer2/layer2.2/Relu_1_output_0"  # [32, 16, 16]


@pytest.fixture(scope="session")
def resnet20_cam(models_dir, tmp_path_factory):
    """``resnet20_cam(target, **export_kwargs) -> path``: the CIFAR-10 ResNet-20 of ../shared exported by
    the real exporter (cached per arguments, ``preprocessing="cifar10"``); skips when the model is absent."""
    source = models_dir / "cifar10_resnet20.onnx"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    onnxcam = pytest.importorskip("onnxcam")
    folder = tmp_path_factory.mktemp("resnet20")
    cache: dict = {}

    def make(target=RESNET20_LAYER3, **kwargs) -> str:
        key = (json.dumps(target), json.dumps(kwargs, sort_keys=True))
        if key not in cache:
            path = folder / f"cam{len(cache)}.onnx"
            onnxcam.save(onnxcam.export(str(source), target, preprocessing="cifar10", **kwargs), str(path))
            cache[key] = str(path)
        return cache[key]

    return make
