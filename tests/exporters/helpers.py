"""Independent checks of exported models: plain onnxruntime runs, no onnxcam internals."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from onnxcam import contract


def session(model: onnx.ModelProto | str, optimise: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def run_cam(sess: ort.InferenceSession, x: np.ndarray, target=None) -> dict[str, np.ndarray]:
    if target is None:
        target = -np.ones(len(x), dtype=np.int64)
    image = next(i.name for i in sess.get_inputs() if i.name != contract.INPUT_TARGET)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {image: x, contract.INPUT_TARGET: np.asarray(target, dtype=np.int64)})))


def logits_at_zero(source: onnx.ModelProto, target: str, logits: str, image_shape) -> np.ndarray:
    """``F(0)``: the source model with the target tensor cut out and fed zeros (batch 1)."""
    cut = onnx.ModelProto()
    cut.CopyFrom(source)
    for node in cut.graph.node:
        for i, out in enumerate(node.output):
            if out == target:
                node.output[i] = target + "__replaced"
    sess_full = session(_with_output(source, target))
    image = source.graph.input[0].name
    x = np.zeros((1, *image_shape), np.float32)
    a = sess_full.run([target], {image: x})[0]
    cut.graph.input.append(onnx.helper.make_tensor_value_info(target, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    sess = session(_with_output(cut, logits))
    return sess.run([logits], {image: x, target: np.zeros_like(a)})[0][0].astype(np.float64)


def _with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def completeness_error(outputs: dict[str, np.ndarray], y_zero: np.ndarray) -> float:
    """max_n |Σ_k φ_nk − Δ_n| / max(|Δ_n|, |y_c(A_n)|, |y_c(0)|), with Δ_n = y_c(A_n) − y_c(0).

    The denominator is the largest quantity in the identity: the logits themselves carry fp32
    rounding of ~1e-6 absolute, so when Δ is tiny (an explicit class whose logit barely moves)
    relative-to-Δ alone measures that rounding, not the sweep.
    """
    classes = outputs[contract.OUTPUT_CLASS]
    y_c = outputs[contract.OUTPUT_LOGITS][np.arange(len(classes)), classes].astype(np.float64)
    delta = y_c - y_zero[classes]
    total = outputs[contract.OUTPUT_COEFFICIENTS].astype(np.float64).sum(axis=1)
    scale = np.maximum.reduce([np.abs(delta), np.abs(y_c), np.abs(y_zero[classes]), np.full_like(delta, 1e-6)])
    return float(np.max(np.abs(total - delta) / scale))


def reference_heatmap(cam_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel, PyTorch align_corners=False) resize and per-image min-max, via torch."""
    import torch
    import torch.nn.functional as F

    resized = F.interpolate(torch.from_numpy(cam_map.astype(np.float64))[:, None], size=size, mode="bilinear",
                            align_corners=False)[:, 0].numpy()
    low = resized.min(axis=(1, 2), keepdims=True)
    span = resized.max(axis=(1, 2), keepdims=True) - low
    return np.where(span > 0, (resized - low) / np.where(span > 0, span, 1), 0.0)
