"""The backward rules: one per ONNX operator type, all registered here.

A rule receives a :class:`~onnxcam.exporters.rules.context.RuleContext` for its node and the
multiplier tensor names of the node's outputs (``None`` where no multiplier flows), emits ONNX nodes
through the context's builder, and returns one multiplier name per node input (``None`` for inputs
that do not depend on the target tensor). The sweep (:mod:`onnxcam.exporters.sweep`) knows no
operator: it only looks rules up in :data:`RULES`.
"""

from __future__ import annotations

from typing import Callable, Optional

from onnxcam.exporters.rules.context import RuleContext

Multipliers = list[Optional[str]]
Rule = Callable[[RuleContext, Multipliers], Multipliers]

#: op type -> backward rule.
RULES: dict[str, Rule] = {}


def register(*op_types: str) -> Callable[[Rule], Rule]:
    """Register ``rule`` for the given op types (default ONNX domain)."""

    def decorate(rule: Rule) -> Rule:
        for op_type in op_types:
            if op_type in RULES:
                raise RuntimeError(f"two backward rules registered for {op_type}")
            RULES[op_type] = rule
        return rule

    return decorate


def supported_ops() -> list[str]:
    return sorted(RULES)


# Importing the rule modules fills RULES.
from onnxcam.exporters.rules import elementwise, linear, normalisers, pooling  # noqa: E402,F401
