"""Opening onnxruntime sessions the same way for :class:`~onnxcam.runtime.Explainer` and
:class:`~onnxcam.runtime.Scorer`: path or bytes, threads, and the session config the exporter
recommended in the model's ``onnxcam.session_config`` metadata (read before the session exists)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import onnxruntime as ort

from onnxcam.runtime.model_metadata import recommended_session_config

__all__ = ["model_source", "open_session"]


def model_source(model: Union[str, "os.PathLike[str]", bytes]) -> tuple[Union[str, bytes], str]:
    """``(what onnxruntime loads, a label for messages)``; FileNotFoundError for a missing path."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model), "<bytes>"
    path = os.fspath(model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    return path, path


def open_session(
    source: Union[str, bytes],
    label: str,
    providers: Sequence[Any],
    threads: Optional[int] = None,
    session_config: Optional[Mapping[str, str]] = None,
) -> tuple[ort.InferenceSession, dict[str, str]]:
    """An ``InferenceSession`` and the session config entries applied: the model's recommendations,
    then ``session_config`` over them. onnxruntime's load errors become ValueError naming ``label``."""
    config = recommended_session_config(source)
    if session_config is not None:
        if not isinstance(session_config, Mapping):
            raise ValueError(f"session_config must be a mapping of str to str, got {type(session_config).__name__}")
        config.update({str(k): str(v) for k, v in session_config.items()})
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    try:
        return ort.InferenceSession(source, sess_options=options, providers=list(providers)), config
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"onnxruntime cannot load {label}: {exc}") from exc
