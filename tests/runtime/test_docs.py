"""The runnable examples in the runtime's docstrings stay correct."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["onnxcam.runtime", "onnxcam.runtime.explainer", "onnxcam.runtime.images", "onnxcam.runtime.overlay", "onnxcam.cli_explain",
     "onnxcam.runtime.scoring", "onnxcam.runtime.model_metadata", "onnxcam.exporters.session_hints",
     "onnxcam.exporters.rules.normalisers", "onnxcam.metrics"],
)
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
