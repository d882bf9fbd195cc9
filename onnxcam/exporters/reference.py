"""Export-time evaluation: the reference pass ``F(A' = 0)`` and the static facts rules need.

The reference ``A' = 0`` is the same for every image, so every value the head computes from it is a
constant. We evaluate the head once with onnxruntime, at batch sizes 1 and 2, with the graph cut at
the target tensor and zeros fed there:

- the batch-1 values are the reference values ``z'`` the rules store as initializers (they broadcast
  over any batch);
- comparing the two batch sizes tells which non-constant tensors the head reads (pads, slice bounds
  computed by shape arithmetic) are batch-independent, so rules may treat them as static.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.graph import Head, dims

_CUT_SUFFIX = "__onnxcam_cut"


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _numpy_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def probe(model: onnx.ModelProto, image: onnx.ValueInfoProto, names: list[str], input_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Run the (uncut) model on one zero image and return the values of ``names``."""
    probe_model = onnx.ModelProto()
    probe_model.CopyFrom(model)
    del probe_model.graph.output[:]
    probe_model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names))
    feed = np.zeros((1, *input_shape), dtype=_numpy_dtype(image.type.tensor_type.elem_type))
    try:
        values = _session(probe_model).run(list(dict.fromkeys(names)), {image.name: feed})
    except Exception as exc:
        raise ExportError(f"onnxruntime could not run the model on a zero image of shape {list(feed.shape)}: {exc}") from exc
    return dict(zip(dict.fromkeys(names), values))


@dataclass
class ReferencePass:
    """Values of the head evaluated on the zero reference (batch 1) and static facts about them."""

    values: dict[str, np.ndarray]
    batch_dependent: set[str]
    #: tensors whose shape depends on the batch size through dimension 0 only (``[1, *rest]`` at
    #: batch 1, ``[2, *rest]`` at batch 2): they can be reshaped to the constant ``[-1, *rest]``
    batch_leading: set[str] = field(default_factory=set)

    def value(self, name: str) -> np.ndarray:
        return self.values[name]

    def leading_batch_shape(self, name: str) -> list[int] | None:
        """``[-1, *rest]`` when only dimension 0 of ``name`` grows with the batch (and no other
        dimension is 0, which Reshape would read as "copy"), else ``None``."""
        if name not in self.batch_leading:
            return None
        rest = [int(d) for d in self.values[name].shape[1:]]
        return None if 0 in rest else [-1, *rest]

    def static(self, name: str) -> np.ndarray | None:
        """The value of a computed tensor when it does not depend on the batch size, else ``None``."""
        if name in self.batch_dependent or name not in self.values:
            return None
        return self.values[name]


def reference_pass(
    model: onnx.ModelProto,
    image: onnx.ValueInfoProto,
    head: Head,
    input_shape: tuple[int, ...],
    target_shape: tuple[int, ...],
    target_dtype: np.dtype = np.dtype(np.float32),
) -> ReferencePass:
    """Evaluate every head tensor with the target tensor set to zeros, at batch sizes 1 and 2."""
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    for node in cut.graph.node:
        for i, out in enumerate(node.output):
            if out == head.target:
                node.output[i] = head.target + _CUT_SUFFIX
    target_type = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(target_dtype))
    cut.graph.input.append(onnx.helper.make_tensor_value_info(head.target, target_type, ["N", *target_shape]))
    names = sorted((head.varying & _head_tensors(head)) | head.computed_inputs)
    del cut.graph.output[:]
    cut.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    session = _session(cut)
    runs = []
    for batch in (1, 2):
        feeds = {
            image.name: np.zeros((batch, *input_shape), dtype=_numpy_dtype(image.type.tensor_type.elem_type)),
            head.target: np.zeros((batch, *target_shape), dtype=_numpy_dtype(target_type)),
        }
        try:
            runs.append(dict(zip(names, session.run(names, feeds))))
        except Exception as exc:
            raise ExportError(f"onnxruntime could not evaluate the head on the zero reference at batch {batch}: {exc}") from exc
    one, two = runs
    batch_dependent = {
        n for n in head.computed_inputs if one[n].shape != two[n].shape or not np.array_equal(one[n], two[n])
    }
    batch_leading = {
        n for n in names
        if one[n].ndim >= 1 and one[n].shape[0] == 1 and two[n].shape == (2, *one[n].shape[1:])
    }
    return ReferencePass(one, batch_dependent, batch_leading)


def _head_tensors(head: Head) -> set[str]:
    names = {head.target}
    for node in head.nodes:
        names.update(i for i in node.input if i)
        names.update(o for o in node.output if o)
    return names


def static_input_shape(image: onnx.ValueInfoProto, input_size: tuple[int, int] | None) -> tuple[int, int, int]:
    """``(C, H, W)`` of the image input, from the model or from ``input_size=(H, W)``."""
    shape = dims(image)[1:]
    if input_size is not None:
        if len(input_size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in input_size):
            raise ExportError(f"input_size must be two positive ints (H, W), got {input_size!r}")
        for have, want, label in zip(shape[1:], input_size, ("height", "width")):
            if isinstance(have, int) and have != want:
                raise ExportError(f"input_size {tuple(input_size)} contradicts the model's static {label} {have}")
        shape = [shape[0], *input_size]
    if not isinstance(shape[0], int):
        raise ExportError(f"input {image.name!r} has no static channel count ({dims(image)})")
    if not all(isinstance(v, int) for v in shape[1:]):
        raise ExportError(
            f"input {image.name!r} has dynamic spatial size {dims(image)}; pass input_size=(H, W) "
            f"(CLI: --input-size H W): the reference pass and the heatmap need a fixed size"
        )
    return tuple(int(v) for v in shape)  # type: ignore[return-value]
