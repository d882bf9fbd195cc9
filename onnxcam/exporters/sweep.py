"""The reverse sweep: carry the multiplier from the explained logit back to the target tensor.

It visits the head's nodes in reverse topological order, sums the multipliers arriving at each
tensor (fan-out), and asks the registered rule of each node's op type for the multipliers of its
inputs. It knows no operator itself.
"""

from __future__ import annotations

from onnxcam.exporters.errors import ExportError
from onnxcam.exporters.rules import RULES, supported_ops
from onnxcam.exporters.rules.context import RuleContext, SweepState


def unsupported(node_label: str, op_type: str, domain: str = "") -> ExportError:
    where = f" in domain {domain!r}" if domain not in ("", "ai.onnx") else ""
    return ExportError(
        f"node {node_label!r} ({op_type}{where}) has no DeepLIFT backward rule, so the head after the target "
        f"cannot be explained exactly. Supported operators: {', '.join(supported_ops())}. "
        f"Pick a later target layer (`onnxcam layers MODEL.onnx` marks the supported ones)."
    )


def reverse_sweep(state: SweepState, seed: str) -> str:
    """Emit the sweep; return the name of the multiplier tensor at the target (shape of ``A``)."""
    head = state.head
    arriving: dict[str, list[str]] = {head.logits: [seed]}
    for node in reversed(head.nodes):
        grads = [_total(state, arriving.pop(out, None)) if out else None for out in node.output]
        if all(g is None for g in grads):
            continue
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            raise unsupported(node.name or node.output[0], node.op_type, node.domain)
        input_grads = rule(RuleContext(node, state), grads)
        if len(input_grads) != len(node.input):
            raise RuntimeError(f"rule for {node.op_type} returned {len(input_grads)} multipliers for {len(node.input)} inputs")
        for name, grad in zip(node.input, input_grads):
            if grad is not None and name in head.varying:
                arriving.setdefault(name, []).append(grad)
    result = _total(state, arriving.get(head.target))
    if result is None:
        raise ExportError(f"no multiplier reached the target {head.target!r}; the logits do not depend on it")
    return result


def _total(state: SweepState, grads: list[str] | None) -> str | None:
    if not grads:
        return None
    return state.builder.add_all(grads, "fanout_sum")


def head_op_types(nodes) -> set[str]:
    return {n.op_type for n in nodes}


def missing_rules(nodes) -> list[tuple[str, str]]:
    """``(node name, op type)`` of head nodes no rule covers."""
    return [
        (n.name or n.output[0], n.op_type)
        for n in nodes
        if n.domain not in ("", "ai.onnx") or n.op_type not in RULES
    ]
