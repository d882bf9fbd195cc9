"""Candidate target layers and the automatic choice.

Automatic choice (``target=None`` / ``--layer auto``): walk back from the explained logits along the
data path (the first input that depends on the image) to the first tensor that is 4-D with more
than one spatial position — the input of the classifier's spatial reduction (Flatten, Reshape, or a
global pool); then keep walking back through pooling-only operators (MaxPool, AveragePool,
Identity, Dropout). The tensor reached is the last 4-D activation before the reduction: ResNet's
``layer4`` output, VGG's ``features[29]`` ReLU, MobileNetV2's ``features[18]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.graph import GraphIndex, split_head
from onnxcam.exporters.sweep import missing_rules

_PASS_THROUGH = frozenset({"MaxPool", "AveragePool", "Identity", "Dropout"})


@dataclass(frozen=True)
class LayerInfo:
    """A candidate target tensor: 4-D float activation ``[N, K, h, w]``."""

    name: str
    op_type: str
    shape: tuple[int, ...]
    supported: bool
    reason: str = ""
    auto: bool = False  # the tensor ``export(target=None)`` would explain


def auto_target(index: GraphIndex, logits: str, image: str, shapes: dict[str, tuple[int, ...]]) -> str:
    """The automatic target tensor (see the module docstring for the rule)."""
    data = index.depends_on([image])

    def main_input(tensor: str) -> str | None:
        node = index.producer.get(tensor)
        if node is None:
            return None
        return next((i for i in node.input if i in data), None)

    tensor: str | None = logits
    while tensor is not None:
        shape = shapes.get(tensor)
        if shape is not None and len(shape) == 4 and int(np.prod(shape[2:])) > 1:
            break
        tensor = main_input(tensor)
    if tensor is None:
        raise ExportError("found no 4-D activation before the classifier; pass the target tensor explicitly")
    while index.producer[tensor].op_type in _PASS_THROUGH:
        previous = main_input(tensor)
        if previous is None or len(shapes.get(previous, ())) != 4:
            break
        tensor = previous
    return tensor


def candidates(index: GraphIndex, logits: str, image: str, shapes: dict[str, tuple[int, ...]], dtypes: dict[str, np.dtype]) -> list[LayerInfo]:
    """Every 4-D float activation the logits depend on, with whether its head can be explained."""
    try:
        chosen = auto_target(index, logits, image, shapes)
    except ExportError:
        chosen = None
    needed = index.ancestors(logits)
    data = index.depends_on([image])
    infos = []
    for node in index.nodes:
        for out in node.output:
            if out not in needed or out not in data or len(shapes.get(out, ())) != 4 or dtypes[out].kind != "f":
                continue
            supported, reason = True, ""
            try:
                head = split_head(index, out, logits, image)
                missing = missing_rules(head.nodes)
                if missing:
                    supported = False
                    reason = "no rule for " + ", ".join(sorted({op for _, op in missing}))
            except ExportError as exc:
                supported, reason = False, str(exc).split(":")[0] if "separate" not in str(exc) else "skip connection around it"
            infos.append(LayerInfo(out, node.op_type, tuple(shapes[out][1:]), supported, reason, out == chosen))
    return infos
