"""Making a model exported with a fixed batch size accept any batch size."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcam.exporters.graph import GraphIndex, image_input


def make_batch_dynamic(model: onnx.ModelProto, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """Return ``model`` with a symbolic batch axis ``N`` (unchanged if it already has one).

    The image input's and outputs' first dims become ``N``; Reshape targets computed on image data
    whose first entry is the fixed batch size become ``0`` (copy the batch dim). The rewrite is
    verified on random data at the fixed batch size and at three times it; if any output differs,
    the original model is kept and a warning says so.
    """
    image = image_input(model)
    first = image.type.tensor_type.shape.dim[0]
    if not first.HasField("dim_value"):
        return model
    fixed = first.dim_value
    new = onnx.ModelProto()
    new.CopyFrom(model)
    image_new = image_input(new)
    image_new.type.tensor_type.shape.dim[0].dim_param = "N"
    for out in new.graph.output:
        dims = out.type.tensor_type.shape.dim
        if len(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = "N"
    del new.graph.value_info[:]
    index = GraphIndex.build(new)
    data = index.depends_on([image_new.name])
    initializers = {i.name: i for i in new.graph.initializer}
    for node in new.graph.node:
        if node.op_type != "Reshape" or node.input[0] not in data or node.input[1] not in index.constants:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        target = index.constants[node.input[1]].copy()
        if target.size and target[0] == fixed:
            target[0] = 0
            name = node.input[1] + "__onnxcam_dynamic_batch"
            if name not in initializers:
                new.graph.initializer.append(numpy_helper.from_array(target.astype(np.int64), name))
                initializers[name] = new.graph.initializer[-1]
            node.input[1] = name
    if _same_outputs(model, new, image.name, fixed, input_shape):
        return new
    warnings.warn(
        f"the model was exported with a fixed batch size of {fixed} and could not be made dynamic "
        f"safely; the exported model keeps batch size {fixed}",
        stacklevel=3,
    )
    return model


def _same_outputs(old: onnx.ModelProto, new: onnx.ModelProto, input_name: str, fixed: int, input_shape) -> bool:
    from onnxcam.exporters.reference import _session

    rng = np.random.default_rng(0)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(image_input(old).type.tensor_type.elem_type)
    x = rng.standard_normal((3 * fixed, *input_shape)).astype(dtype)
    try:
        old_s, new_s = _session(old), _session(new)
        chunks = [old_s.run(None, {input_name: x[i * fixed:(i + 1) * fixed]}) for i in range(3)]
        whole = new_s.run(None, {input_name: x})
        single = new_s.run(None, {input_name: x[:fixed]})
    except Exception:
        return False
    for k, out in enumerate(whole):
        expected = np.concatenate([c[k] for c in chunks])
        if out.shape != expected.shape or not np.allclose(out, expected, rtol=1e-5, atol=1e-5):
            return False
        if not np.allclose(single[k], chunks[0][k], rtol=1e-6, atol=1e-6):
            return False
    return True
