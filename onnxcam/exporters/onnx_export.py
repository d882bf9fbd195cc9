"""``export``: any ONNX CNN classifier → one ONNX graph that also returns LIFT-CAM explanations."""

from __future__ import annotations

import json
import logging
import os
from typing import Mapping, Sequence

import numpy as np
import onnx

from onnxcam import contract
from onnxcam._files import atomic_write
from onnxcam._version import __version__
from onnxcam.exporters.batch import make_batch_dynamic
from onnxcam.exporters.builder import GraphBuilder
from onnxcam.exporters.cam import METHODS, Names, cam_outputs, class_and_seed, fused_heatmap, output_infos
from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.graph import (
    GraphIndex,
    default_opset,
    drop_initializer_inputs,
    explained_tensor,
    image_input,
    load_model,
    split_head,
    upgrade_opset,
)
from onnxcam.exporters.layers import LayerInfo, auto_target, candidates
from onnxcam.exporters.precision import to_float16
from onnxcam.exporters.reference import probe, reference_pass, static_input_shape
from onnxcam.exporters.rules.context import DEEPLIFT, GRADIENT, SweepState
from onnxcam.exporters.session_hints import recommended_session_config
from onnxcam.exporters.sweep import missing_rules, reverse_sweep, unsupported
from onnxcam.exporters.switch import gate_explanations

log = logging.getLogger("onnxcam")

PathOrModel = "str | os.PathLike | onnx.ModelProto"


#: dtypes the exporter accepts for the target activations and the explained logits
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def prepare_model(model, input_size):
    """``(proto, image input, (C, H, W))``: loaded, opset-upgraded, batch made dynamic (shared with
    :func:`onnxcam.exporters.head.export_head`)."""
    proto = load_model(model)
    if any(p.key == contract.META_VERSION for p in proto.metadata_props):
        raise ExportError("the model was exported by onnxcam already; export the original model instead")
    proto = drop_initializer_inputs(upgrade_opset(proto))
    image = image_input(proto)
    input_shape = static_input_shape(image, input_size)
    proto = make_batch_dynamic(proto, input_shape)
    return proto, image_input(proto), input_shape


def _float_shapes(proto: onnx.ModelProto, image, input_shape, index: GraphIndex):
    """Shapes and dtypes (batch 1) of every node output that depends on the image."""
    data = index.depends_on([image.name])
    names = [o for n in proto.graph.node for o in n.output if o and o in data]
    values = probe(proto, image, names, input_shape)
    return {k: v.shape for k, v in values.items()}, {k: v.dtype for k, v in values.items()}


def resolve_auto_target(proto: onnx.ModelProto, image, input_shape, index: GraphIndex, logits: str) -> str:
    """The tensor the automatic target choice picks (what ``target=None`` means)."""
    shapes, _ = _float_shapes(proto, image, input_shape, index)
    return auto_target(index, logits, image.name, shapes)


def check_logits(scores: np.ndarray, logits: str) -> None:
    """The explained output must be float logits [N, C]."""
    if scores.dtype not in FLOAT_DTYPES or scores.ndim != 2:
        raise ExportError(f"the explained output {logits!r} is {scores.dtype} {list(scores.shape)}; expected float logits [N, C]")


def check_activations(activations: np.ndarray, tensor: str) -> tuple[int, int, int]:
    """The target must be float activations [N, K, h, w]; returns ``(K, h, w)``."""
    if activations.ndim != 4:
        raise ExportError(f"target {tensor!r} has shape {list(activations.shape)}; a CAM needs a 4-D activation [N, K, h, w]")
    if activations.dtype not in FLOAT_DTYPES:
        raise ExportError(f"target {tensor!r} is {activations.dtype}; float32 or float16 is required")
    return tuple(int(d) for d in activations.shape[1:])  # type: ignore[return-value]


def export(
    model: str | os.PathLike | onnx.ModelProto,
    target: str | Sequence[str] | None = None,
    *,
    output: str | None = None,
    method: str = contract.METHOD_LIFTCAM,
    top_k: int | None = None,
    raw: bool = False,
    preprocessing: str | Mapping | None = None,
    input_size: tuple[int, int] | None = None,
    source: str | None = None,
    class_names: "list[str] | str | os.PathLike | None" = None,
    fuse: bool = True,
    fp16: bool = False,
    switchable: bool = False,
) -> onnx.ModelProto:
    """Rewrite a CNN classifier into a graph that also emits its class-activation explanation.

    For the target activations ``A`` and the head ``F`` with logits ``y = F(A)``, the LIFT-CAM graph
    computes DeepLIFT (Rescale) multipliers ``m = ∂ᴰᴸ y_c / ∂A`` against the reference ``A' = 0``
    (folded into constants at export), coefficients ``φ_k = Σ_ij A_kij m_kij`` and the map
    ``ReLU(Σ_k φ_k A_k)``; the Grad-CAM family uses the same sweep with plain gradients
    (:mod:`onnxcam.exporters.cam` lists the formulas). :mod:`onnxcam.contract` documents the added
    inputs and outputs.

    Args:
        model: path to an ``.onnx`` file or a ``ModelProto`` (not modified).
        target: name of the target tensor, ``None``/``"auto"`` for the last 4-D activation before the
            classifier's spatial reduction, or a list of names: one graph explaining several layers,
            with per-layer outputs suffixed ``_0``, ``_1``… and, with ``fuse``, a fused
            ``onnxcam_heatmap`` (per-pixel mean of the layers' heatmaps, renormalised).
        output: the graph output to explain (default: the first). If it comes from a final
            Softmax/LogSoftmax, its input (the logits) is explained.
        method: ``liftcam`` (default), ``gradcam``, ``gradcam++``, ``xgradcam``, ``hirescam``, ``layercam``.
        top_k: explain the ``k`` highest-scoring classes of every image in one run: outputs gain a ``k``
            axis after ``N`` and ``onnxcam_target`` becomes ``[N, k]`` (negative = that rank's class).
            Only the reverse sweep runs ``k`` times; the forward pass runs once.
        raw: also emit ``onnxcam_activations`` and ``onnxcam_multipliers``.
        preprocessing: a preset name from :data:`onnxcam.contract.PREPROCESSING_PRESETS` or a dict
            with the keys of :data:`onnxcam.contract.PREPROCESSING_KEYS`, stored in the metadata.
        input_size: ``(H, W)`` for models whose input has dynamic spatial size.
        source: free text stored as ``onnxcam.source`` (default: the file name).
        class_names: the C class names (a list, or a JSON file holding one), stored in the metadata
            so that the runtime and the CLI can name predictions.
        fuse: with several target layers, also emit the fused ``onnxcam_heatmap``.
        fp16: convert a float32 model to float16 first (inputs and outputs stay float32). Float16
            models export as they are; their reverse sweep and CAM tail run in float32.
        switchable: put the explanation behind an ``If`` on a new required bool scalar input
            ``onnxcam_explain``: fed False, only the forward pass runs and the explanation outputs come
            back empty, so one served graph answers plain and explained requests, each at its own
            cost (:mod:`onnxcam.exporters.switch`; onnxruntime otherwise runs every node).

    Returns:
        The exported ``ModelProto`` (checked with ``onnx.checker.check_model(full_check=True)``).

    Example:
        >>> import onnxcam  # doctest: +SKIP
        >>> cam = onnxcam.export("resnet20.onnx", preprocessing="cifar10")  # doctest: +SKIP
        >>> onnxcam.save(cam, "resnet20.cam.onnx")  # doctest: +SKIP
    """
    if method not in METHODS:
        raise ExportError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ExportError(f"top_k must be a positive int, got {top_k!r}")
    prep = _preprocessing(preprocessing)
    names = _class_names(class_names)
    if source is None and not isinstance(model, onnx.ModelProto):
        source = os.path.basename(os.fspath(model))
    proto, image, input_shape = prepare_model(model, input_size)
    if fp16:
        proto = to_float16(proto)
    index = GraphIndex.build(proto)
    output_name, logits = explained_tensor(index, output)
    targets = [target] if target is None or isinstance(target, str) else list(target)
    if not targets:
        raise ExportError("target is an empty list; pass a tensor name, a list of names, or None")
    if any(t in (None, "auto") for t in targets):
        chosen = resolve_auto_target(proto, image, input_shape, index, logits)
        log.info("automatic target layer: %s", chosen)
        targets = [chosen if t in (None, "auto") else t for t in targets]
    if len(set(targets)) != len(targets):
        raise ExportError(f"target layers repeat: {targets}")

    heads = []
    for tensor in targets:
        head = split_head(index, tensor, logits, image.name)
        missing = missing_rules(head.nodes)
        if missing:
            node = next(n for n in head.nodes if (n.name or n.output[0]) == missing[0][0])
            raise unsupported(missing[0][0], node.op_type, node.domain)
        heads.append(head)

    probed = probe(proto, image, [*targets, logits], input_shape)
    scores = probed[logits]
    check_logits(scores, logits)
    num_classes = int(scores.shape[1])
    if top_k is not None and top_k > num_classes:
        raise ExportError(f"top_k={top_k} exceeds the {num_classes} classes of {logits!r}")
    if names is not None and len(names) != num_classes:
        raise ExportError(f"class_names has {len(names)} names but the explained output {logits!r} has {num_classes} classes")
    shapes = [check_activations(probed[tensor], tensor) for tensor in targets]

    builder = GraphBuilder(proto, default_opset(proto))
    if scores.dtype == np.float32:
        logits32 = builder.op_named("Identity", [logits], contract.OUTPUT_LOGITS)
    else:
        logits32 = builder.op_named("Cast", [logits], contract.OUTPUT_LOGITS, to=onnx.TensorProto.FLOAT)
    _, flat_classes, seed = class_and_seed(builder, logits32, num_classes, top_k)
    multi = len(targets) > 1
    layer_names, heatmaps = [], []
    mode = DEEPLIFT if METHODS[method] else GRADIENT
    for i, (head, target_shape) in enumerate(zip(heads, shapes)):
        reference = reference_pass(proto, image, head, input_shape, target_shape, probed[head.target].dtype)
        state = SweepState(builder, index, head, reference, mode=mode, tile=top_k or 1, one_hot={seed: flat_classes})
        sweep = reverse_sweep(state, seed)
        names_i = Names(f"_{i}" if multi else "")
        heatmaps.append(cam_outputs(builder, state.runtime(head.target), sweep, target_shape, input_shape[1:],
                                    method, names_i, top_k, state.spatially_constant.get(sweep)))
        if raw:
            if probed[head.target].dtype == np.float32:
                builder.op_named("Identity", [head.target], names_i.OUTPUT_ACTIVATIONS)
            else:
                builder.op_named("Cast", [head.target], names_i.OUTPUT_ACTIVATIONS, to=onnx.TensorProto.FLOAT)
            lead = [-1] if top_k is None else [-1, top_k]
            builder.op_named("Reshape", [sweep, builder.ints([*lead, *target_shape], "raw_shape")], names_i.OUTPUT_MULTIPLIERS)
        layer_names.append((names_i, target_shape))
    fused = multi and fuse
    if fused:
        fused_heatmap(builder, heatmaps)

    infos = output_infos(num_classes, layer_names, input_shape[1:], raw, top_k, fused,
                         image.type.tensor_type.shape.dim[0].dim_param or "N")
    builder.prune({i.name for i in infos})
    switch = gate_explanations(builder, infos) if switchable else None
    graph = proto.graph
    graph.node.extend(builder.nodes)
    graph.initializer.extend(builder.initializers)
    batch = image.type.tensor_type.shape.dim[0].dim_param or "N"  # share the model's batch axis name
    target_dims = [batch] if top_k is None else [batch, top_k]
    graph.input.append(onnx.helper.make_tensor_value_info(contract.INPUT_TARGET, onnx.TensorProto.INT64, target_dims))
    if switch is not None:
        graph.input.append(switch)
    graph.output.extend(infos)
    meta = {
        contract.META_VERSION: __version__,
        contract.META_METHOD: method,
        contract.META_INPUT: image.name,
        contract.META_INPUT_SHAPE: json.dumps(list(input_shape)),
        contract.META_TARGET: targets[0] if not multi else json.dumps(targets),
        contract.META_TARGET_SHAPE: json.dumps(list(shapes[0]) if not multi else [list(s) for s in shapes]),
        contract.META_EXPLAINED: logits,
        contract.META_NUM_CLASSES: str(num_classes),
        contract.META_OUTPUTS: json.dumps([i.name for i in infos]),
    }
    if top_k is not None:
        meta[contract.META_TOP_K] = str(top_k)
    if prep is not None:
        meta[contract.META_PREPROCESSING] = json.dumps(prep)
    if source:
        meta[contract.META_SOURCE] = source
    if names is not None:
        meta[contract.META_CLASS_NAMES] = json.dumps(names)
    hints = recommended_session_config(graph)
    if hints:
        meta[contract.META_SESSION_CONFIG] = json.dumps(hints)
        log.info("recommended onnxruntime session config: %s", hints)
    existing = {p.key: p for p in proto.metadata_props}
    for key, value in meta.items():
        if key in existing:
            existing[key].value = value
        else:
            proto.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # a bug in onnxcam, not in the user's model
        raise ExportError(f"internal error: the exported graph fails onnx.checker: {exc}") from exc
    log.info("explained output %s (tensor %s), targets %s %s, method %s", output_name, logits, targets, shapes, method)
    return proto


def _preprocessing(preprocessing) -> dict | None:
    if preprocessing is None:
        return None
    if isinstance(preprocessing, str):
        try:
            return dict(contract.PREPROCESSING_PRESETS[preprocessing])
        except KeyError:
            raise ExportError(
                f"unknown preprocessing preset {preprocessing!r}; presets: {', '.join(contract.PREPROCESSING_PRESETS)}"
            ) from None
    prep = dict(preprocessing)
    unknown = set(prep) - set(contract.PREPROCESSING_KEYS)
    if unknown:
        raise ExportError(f"unknown preprocessing keys {sorted(unknown)}; allowed: {', '.join(contract.PREPROCESSING_KEYS)}")
    missing = {"mean", "std", "scale", "color", "resize"} - set(prep)
    if missing:
        raise ExportError(f"preprocessing is missing {sorted(missing)}")
    if prep["resize"] == "shorter" and "resize_size" not in prep:
        raise ExportError("preprocessing with resize='shorter' needs resize_size")
    return prep


def _class_names(class_names) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, (str, os.PathLike)):
        path = os.fspath(class_names)
        try:
            with open(path, encoding="utf-8") as handle:
                class_names = json.load(handle)
        except (OSError, json.JSONDecodeError) as exc:
            raise ExportError(f"cannot read class names from {path}: {exc}") from exc
    if not isinstance(class_names, (list, tuple)) or not all(isinstance(n, str) for n in class_names):
        raise ExportError("class_names must be a list of strings (or a JSON file holding one)")
    return list(class_names)


def list_layers(model: str | os.PathLike | onnx.ModelProto, *, output: str | None = None, input_size: tuple[int, int] | None = None) -> list[LayerInfo]:
    """Candidate target tensors: name, producing op, shape ``(K, h, w)``, and whether the head is supported.

    Example:
        >>> for layer in onnxcam.list_layers("resnet20.onnx"):  # doctest: +SKIP
        ...     print(layer.name, layer.op_type, layer.shape, layer.supported)
    """
    proto, image, input_shape = prepare_model(model, input_size)
    index = GraphIndex.build(proto)
    _, logits = explained_tensor(index, output)
    shapes, dtypes = _float_shapes(proto, image, input_shape, index)
    return candidates(index, logits, image.name, shapes, dtypes)


def choose_target(model: str | os.PathLike | onnx.ModelProto, *, output: str | None = None, input_size: tuple[int, int] | None = None) -> str:
    """The tensor ``export(target=None)`` would explain."""
    proto, image, input_shape = prepare_model(model, input_size)
    index = GraphIndex.build(proto)
    _, logits = explained_tensor(index, output)
    return resolve_auto_target(proto, image, input_shape, index, logits)


def save(model: onnx.ModelProto, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write ``model`` to ``path`` atomically; refuses to replace an existing file unless ``overwrite``."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write(path, model.SerializeToString())  # the usual 0666 & ~umask permissions
