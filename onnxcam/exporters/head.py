"""``export_head``: the network after a target layer as a standalone ONNX model.

Split a classifier ``f = F ∘ body`` at the target activation ``A`` ([N, K, h, w]); the head model
computes ``F``: its single input :data:`onnxcam.contract.HEAD_INPUT` is a batch of target activations
and its single output :data:`onnxcam.contract.HEAD_OUTPUT` the explained logits ``y = F(A)`` [N, C]
(the input of a final Softmax/LogSoftmax, as in :func:`onnxcam.export`), batch axis dynamic.

It is what perturbation methods at the target layer need: the Shapley sampler of
:mod:`onnxcam.metrics.shapley` evaluates ``v(S) = y_c(A ⊙ 1_S)`` (channels outside ``S`` set to the
zero reference) thousands of times without re-running the body.

The cut is the exporter's own (:func:`onnxcam.exporters.graph.split_head`): the same target
resolution (``None``/``"auto"`` = the automatic target), the same explained tensor and the same error
for a target that a skip connection bypasses. Shape arithmetic the head reads from outside the head
(:attr:`Head.computed_inputs`, e.g. a Reshape target) is folded to constants from the reference
pass when it does not depend on the batch size; a batch-dependent one (``x.view(x.size(0), -1)``)
keeps its producing nodes when they read only head tensors and constants.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxcam import contract
from onnxcam._version import __version__
from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.graph import GraphIndex, Head, explained_tensor, split_head
from onnxcam.exporters.onnx_export import check_activations, check_logits, prepare_model, resolve_auto_target
from onnxcam.exporters.reference import ReferencePass, _session, probe, reference_pass

__all__ = ["export_head"]


def export_head(
    model: str | os.PathLike | onnx.ModelProto,
    target: str | None = None,
    *,
    output: str | None = None,
    input_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """Export the head ``F`` of ``model`` after ``target``: activations ``A`` [N,K,h,w] → logits ``F(A)`` [N,C].

    For every batch of activations taken from the model itself (``onnxcam.export(..., raw=True)``
    returns them as ``onnxcam_activations``), ``head(A)`` equals the model's explained logits up to
    float rounding; feeding ``A ⊙ 1_S`` evaluates the logit with the channels outside ``S`` set to the
    zero reference.

    Args:
        model: path to an ``.onnx`` file or a ``ModelProto`` (not modified).
        target: the target tensor; ``None``/``"auto"`` for the automatic choice of :func:`onnxcam.export`.
        output: the graph output to explain (default: the first; a final Softmax's input is explained).
        input_size: ``(H, W)`` for models whose image input has dynamic spatial size.

    Returns:
        A ``ModelProto`` with input :data:`onnxcam.contract.HEAD_INPUT` (the target's dtype,
        ``[N, K, h, w]``) and float32 output :data:`onnxcam.contract.HEAD_OUTPUT` ``[N, C]``, checked
        with ``onnx.checker.check_model(full_check=True)`` (strict shape inference) and, at batch 2,
        against the full model on a zero image. Metadata: the target layer and its shape, the
        explained tensor, the number of classes, the source.

    Raises:
        ExportError: as :func:`onnxcam.export` (unknown target, skip connection around the target,
            non-4-D target, non-2-D logits...), or shape arithmetic that depends on both the body
            and the batch size.

    Example:
        >>> import numpy as np, onnxruntime as ort  # doctest: +SKIP
        >>> from onnxcam import contract  # doctest: +SKIP
        >>> head = export_head("resnet20.onnx", "/layer2/layer2.2/Relu_1_output_0")  # doctest: +SKIP
        >>> sess = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])  # doctest: +SKIP
        >>> a = np.zeros((4, 32, 16, 16), np.float32)  # doctest: +SKIP
        >>> sess.run([contract.HEAD_OUTPUT], {contract.HEAD_INPUT: a})[0].shape  # doctest: +SKIP
        (4, 10)
    """
    if target is not None and not isinstance(target, str):
        raise ExportError(f"export_head takes one target tensor name (or None/'auto'), got {target!r}")
    source = None if isinstance(model, onnx.ModelProto) else os.path.basename(os.fspath(model))
    proto, image, input_shape = prepare_model(model, input_size)
    index = GraphIndex.build(proto)
    _, logits = explained_tensor(index, output)
    if target in (None, "auto"):
        target = resolve_auto_target(proto, image, input_shape, index, logits)
    head = split_head(index, target, logits, image.name)

    probed = probe(proto, image, [target, logits], input_shape)
    activations, scores = probed[target], probed[logits]
    target_shape = check_activations(activations, target)
    check_logits(scores, logits)
    reference = reference_pass(proto, image, head, input_shape, target_shape, activations.dtype)

    batch = image.type.tensor_type.shape.dim[0].dim_param or "N"
    result = _build(index, head, reference, activations.dtype, scores.dtype, target_shape, int(scores.shape[1]), batch)
    meta = {
        contract.META_TARGET: target,
        contract.META_TARGET_SHAPE: json.dumps(list(target_shape)),
        contract.META_EXPLAINED: logits,
        contract.META_NUM_CLASSES: str(int(scores.shape[1])),
        "onnxcam.head_version": __version__,
    }
    if source:
        meta[contract.META_SOURCE] = source
    for key, value in meta.items():
        result.metadata_props.add(key=key, value=value)
    try:
        onnx.checker.check_model(result, full_check=True)
    except Exception as exc:  # a bug in onnxcam, not in the user's model
        raise ExportError(f"internal error: the head model fails onnx.checker: {exc}") from exc
    _self_check(result, activations, scores, target)
    return result


def _build(
    index: GraphIndex,
    head: Head,
    reference: ReferencePass,
    act_dtype: np.dtype,
    logit_dtype: np.dtype,
    target_shape: tuple[int, ...],
    num_classes: int,
    batch: str,
) -> onnx.ModelProto:
    """The head graph: Identity(HEAD_INPUT) → target, the head's nodes, logits → HEAD_OUTPUT."""
    folded: dict[str, np.ndarray] = {}
    keep: set[tuple[str, ...]] = {_key(n) for n in head.nodes}
    for name in sorted(head.computed_inputs):
        value = reference.static(name)
        if value is not None:
            folded[name] = value
        else:
            keep |= _shape_subgraph(index, head, name)
    nodes = [n for n in index.model.graph.node if _key(n) in keep]

    produced = {o for n in nodes for o in n.output if o} | {head.target}
    read = [i for n in nodes for i in n.input if i and i not in produced]
    initializers = {i.name: i for i in index.model.graph.initializer}
    constants: list[onnx.TensorProto] = []
    for name in dict.fromkeys(read):
        if name in folded:
            constants.append(numpy_helper.from_array(np.asarray(folded[name]), name))
        elif name in initializers:
            constants.append(initializers[name])
        elif name in index.constants:
            constants.append(numpy_helper.from_array(np.asarray(index.constants[name]), name))
        else:  # split_head guarantees every other input is a head tensor or computed
            raise ExportError(f"internal error: the head reads {name!r}, which is neither computed nor constant")

    act_type = helper.np_dtype_to_tensor_dtype(act_dtype)
    first = helper.make_node("Identity", [contract.HEAD_INPUT], [head.target], name="onnxcam/head_input")
    if logit_dtype == np.float32:
        last = helper.make_node("Identity", [head.logits], [contract.HEAD_OUTPUT], name="onnxcam/head_output")
    else:
        last = helper.make_node("Cast", [head.logits], [contract.HEAD_OUTPUT], name="onnxcam/head_output", to=onnx.TensorProto.FLOAT)
    graph = helper.make_graph(
        [first, *nodes, last],
        "onnxcam_head",
        [helper.make_tensor_value_info(contract.HEAD_INPUT, act_type, [batch, *target_shape])],
        [helper.make_tensor_value_info(contract.HEAD_OUTPUT, onnx.TensorProto.FLOAT, [batch, num_classes])],
        initializer=constants,
    )
    source = index.model
    result = helper.make_model(graph, opset_imports=list(source.opset_import), producer_name="onnxcam",
                               producer_version=__version__)
    result.ir_version = source.ir_version
    result.doc_string = f"onnxcam head: {head.target} -> {head.logits}"
    return result


def _key(node: onnx.NodeProto) -> tuple[str, ...]:
    return (node.name, *node.output)


def _shape_subgraph(index: GraphIndex, head: Head, name: str) -> set[tuple[str, ...]]:
    """Nodes computing the batch-dependent ``name`` from head tensors and constants only."""
    keep: set[tuple[str, ...]] = set()
    stack, seen = [name], {name}
    while stack:
        tensor = stack.pop()
        if tensor in head.varying or tensor in index.constants:
            continue
        node = index.producer.get(tensor)
        if node is None:
            raise _batch_dependent(name, tensor)
        keep.add(_key(node))
        for inp in node.input:
            if not inp or inp in seen:
                continue
            seen.add(inp)
            if inp in head.varying or inp in index.constants:
                continue
            if inp not in index.producer:
                raise _batch_dependent(name, inp)
            if node.op_type in ("Shape", "Size"):
                # the shape of a tensor outside the head (the body, the image) varies with the batch
                raise _batch_dependent(name, inp)
            stack.append(inp)
    return keep


def _batch_dependent(name: str, source: str) -> ExportError:
    return ExportError(
        f"the head reads {name!r}, shape arithmetic that changes with the batch size and is computed from "
        f"{source!r} outside the head; export_head cannot fold it to a constant. Pick a target after it, "
        f"or re-export the model with a static reshape (e.g. torch.flatten instead of x.view(x.size(0), -1))"
    )


def _self_check(head_model: onnx.ModelProto, activations: np.ndarray, scores: np.ndarray, target: str) -> None:
    """The head at batch 2 reproduces the full model's logits on a zero image (both rows)."""
    batch = np.concatenate([activations, activations])
    try:
        (out,) = _session(head_model).run([contract.HEAD_OUTPUT], {contract.HEAD_INPUT: batch})
    except Exception as exc:
        raise ExportError(f"internal error: onnxruntime cannot run the head model of {target!r}: {exc}") from exc
    expected = np.concatenate([scores, scores]).astype(np.float32)
    tolerance = 1e-3 if scores.dtype == np.float16 else 1e-4
    scale = max(1.0, float(np.abs(expected).max()))
    if out.shape != expected.shape or float(np.abs(out - expected).max()) > tolerance * scale:
        raise ExportError(f"internal error: the head model of {target!r} does not reproduce the model's logits")
