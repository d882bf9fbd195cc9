"""The graph contract: fixed tensor names and metadata keys of an exported onnxcam model.

This module is plain Python (no onnx, no onnxruntime, no torch) so that both the exporter and the
runtime, and any third-party code that serves the exported file, can share it.

Inputs added by the exporter (besides the model's own image input):

=====================  =========  ========  ================================================
name                   dtype      shape     meaning
=====================  =========  ========  ================================================
``onnxcam_target``     int64      [N]       class to explain per image; negative = predicted
``onnxcam_explain``    bool       []        only in ``switchable`` exports (required there):
                                            False runs the forward pass only and the
                                            explanation outputs come back empty (batch axis 0)
=====================  =========  ========  ================================================

Outputs added by the exporter (the model's own outputs keep their names and values):

=========================  =======  ==========  ===============================================
name                       dtype    shape       meaning
=========================  =======  ==========  ===============================================
``onnxcam_logits``         float32  [N,C]       the explained scores (logits; the input of a
                                                final Softmax/LogSoftmax when the model has one)
``onnxcam_class``          int64    [N]         the class explained for each image
``onnxcam_coefficients``   float32  [N,K]       LIFT-CAM channel weights phi_k
``onnxcam_map``            float32  [N,h,w]     ReLU(sum_k phi_k A_k), not normalised
``onnxcam_heatmap``        float32  [N,H,W]     map resized bilinear (half-pixel) to the input
                                                size, min-max normalised per image to [0, 1]
``onnxcam_activations``    float32  [N,K,h,w]   target-layer activations A (``raw=True`` only)
``onnxcam_multipliers``    float32  [N,K,h,w]   DeepLIFT multipliers dy_c/dA (``raw=True`` only)
=========================  =======  ==========  ===============================================

``N`` is the model's own batch axis (its ``dim_param``, e.g. ``"batch"``).

Top-k models (``onnxcam.top_k`` = k): ``onnxcam_target`` is int64 ``[N, k]`` (a negative entry at
rank r means the r-th highest-scoring class) and every per-class output gains a k axis after N:
``onnxcam_class`` [N,k], ``onnxcam_coefficients`` [N,k,K], ``onnxcam_map`` [N,k,h,w],
``onnxcam_heatmap`` [N,k,H,W], ``onnxcam_multipliers`` [N,k,K,h,w]; ``onnxcam_logits`` and
``onnxcam_activations`` keep their shapes.

Several target layers (``onnxcam.target_layer`` and ``onnxcam.target_shape`` are then JSON lists):
the per-layer outputs (coefficients, map, heatmap, activations, multipliers) are suffixed ``_0``,
``_1``... in the listed order, and ``onnxcam_heatmap`` (unsuffixed) is the fused heatmap, the
per-pixel mean of the layers' heatmaps renormalised to [0, 1], present when ``onnxcam.outputs``
lists it.
"""

from __future__ import annotations

INPUT_TARGET = "onnxcam_target"
#: Bool scalar input of ``switchable`` exports only: False runs the forward pass only.
INPUT_EXPLAIN = "onnxcam_explain"

OUTPUT_LOGITS = "onnxcam_logits"
OUTPUT_CLASS = "onnxcam_class"
OUTPUT_COEFFICIENTS = "onnxcam_coefficients"
OUTPUT_MAP = "onnxcam_map"
OUTPUT_HEATMAP = "onnxcam_heatmap"
OUTPUT_ACTIVATIONS = "onnxcam_activations"
OUTPUT_MULTIPLIERS = "onnxcam_multipliers"

#: Outputs every exported model has, in this order.
STANDARD_OUTPUTS = (OUTPUT_LOGITS, OUTPUT_CLASS, OUTPUT_COEFFICIENTS, OUTPUT_MAP, OUTPUT_HEATMAP)
#: Outputs added with ``raw=True`` / ``--raw``.
RAW_OUTPUTS = (OUTPUT_ACTIVATIONS, OUTPUT_MULTIPLIERS)

# Metadata props (``ModelProto.metadata_props``); values are strings, JSON where structured.
META_VERSION = "onnxcam.version"  # onnxcam version that exported the model
META_METHOD = "onnxcam.method"  # "liftcam"
META_INPUT = "onnxcam.input"  # name of the image input
META_INPUT_SHAPE = "onnxcam.input_shape"  # JSON [C, H, W]
META_TARGET = "onnxcam.target_layer"  # name of the target tensor A (JSON list when several layers)
META_TARGET_SHAPE = "onnxcam.target_shape"  # JSON [K, h, w] (list of them when several layers)
META_EXPLAINED = "onnxcam.explained_output"  # name of the explained tensor (logits)
META_NUM_CLASSES = "onnxcam.num_classes"  # decimal integer C
META_OUTPUTS = "onnxcam.outputs"  # JSON list of the onnxcam outputs present
META_PREPROCESSING = "onnxcam.preprocessing"  # JSON object, see PREPROCESSING_KEYS; absent if unknown
META_SOURCE = "onnxcam.source"  # free text: where the model came from
META_CLASS_NAMES = "onnxcam.class_names"  # JSON list of C class names; absent if not given
META_TOP_K = "onnxcam.top_k"  # decimal k when exported with top_k (outputs [N, k, ...]); absent otherwise
#: JSON object of onnxruntime session config entries the exporter recommends for this graph (e.g.
#: ``{"session.disable_prepacking": "1"}`` when the sweep reads large classifier weights in the other
#: orientation); the runtime applies them; absent when there are none.
META_SESSION_CONFIG = "onnxcam.session_config"

#: Keys of the preprocessing JSON object.
#: ``color``: "RGB", "BGR" or "GRAY" (one channel): what the model expects;
#: ``resize``: "shorter" (resize shorter side to ``resize_size`` then centre-crop to the input size)
#: or "exact" (resize straight to the input size);
#: ``resize_size``: int (only for "shorter");
#: ``interpolation``: "linear" | "area" | "nearest" | "cubic";
#: ``scale``: float multiplied into the 0..255 pixel values (usually 1/255);
#: ``mean`` / ``std``: per-channel lists applied after scaling: ``(x * scale - mean) / std``.
PREPROCESSING_KEYS = ("color", "resize", "resize_size", "interpolation", "scale", "mean", "std")

METHOD_LIFTCAM = "liftcam"
#: Every method the exporter can emit (``onnxcam.method`` metadata).
METHODS = ("liftcam", "gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")

#: Named preprocessing presets accepted by the exporter (``preprocessing="imagenet"``).
PREPROCESSING_PRESETS: dict[str, dict] = {
    # torchvision ImageNet models: shorter side to 256 (bilinear), centre-crop, ImageNet mean/std.
    "imagenet": {
        "color": "RGB",
        "resize": "shorter",
        "resize_size": 256,
        "interpolation": "linear",
        "scale": 1.0 / 255.0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    # CIFAR-10 ResNets of ../shared: resize to the input size (area), ImageNet mean/std.
    "cifar10": {
        "color": "RGB",
        "resize": "exact",
        "interpolation": "area",
        "scale": 1.0 / 255.0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    # Grey-scale models fed raw 0..255 pixels (e.g. the ONNX MNIST models).
    "mnist": {
        "color": "GRAY",
        "resize": "exact",
        "interpolation": "area",
        "scale": 1.0,
        "mean": [0.0],
        "std": [1.0],
    },
}

# Head models (``onnxcam.exporters.head.export_head``): the network after the target layer as a
# standalone graph, activations [N, K, h, w] in, explained logits [N, C] out (no onnxcam outputs, no
# ``onnxcam.version`` metadata: a head model is not an explaining export). Used by the Shapley
# sampler of ``onnxcam.metrics.shapley``.
HEAD_INPUT = "onnxcam_head_activations"
HEAD_OUTPUT = "onnxcam_head_logits"
