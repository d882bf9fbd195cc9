"""Read an ONNX file's metadata props *before* creating a session, without the onnx package.

onnxruntime exposes the metadata only on a created session, but some of it must be known before:
``onnxcam.session_config`` holds session config entries the exporter recommends for this graph (e.g.
``session.disable_prepacking`` where the reverse sweep reads large classifier weights in the other
orientation, so that prepacking would keep a second copy of them). This module walks the top level of
the ``ModelProto`` protobuf wire format (field 14, ``metadata_props``) and skips everything else,
including the graph, by its length: for a file it reads a few bytes per top-level field, never the
weights.

Example::

    >>> entry = b"\\x0a\\x01k\\x12\\x01v"  # StringStringEntryProto(key="k", value="v")
    >>> read_metadata_props(b"\\x08\\x08" + b"\\x72" + bytes([len(entry)]) + entry)  # ir_version=8, metadata_props
    {'k': 'v'}
"""

from __future__ import annotations

import io
import json
import os
from typing import BinaryIO, Optional, Union

from onnxcam import contract

__all__ = ["read_metadata_props", "recommended_session_config"]

_METADATA_PROPS = 14  # ModelProto.metadata_props
_KEY, _VALUE = 1, 2  # StringStringEntryProto.key / .value
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def _varint(stream: BinaryIO) -> Optional[int]:
    """A base-128 varint, or None at the end of the stream."""
    shift, value = 0, 0
    while True:
        byte = stream.read(1)
        if not byte:
            if shift == 0:
                return None
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(stream: BinaryIO, end: Optional[int] = None):
    """Yield ``(field_number, None)`` for scalar fields (skipped) and ``(field_number, (stream, length))``
    for length-delimited ones, positioned at their payload: the caller reads it or seeks past it."""
    while end is None or stream.tell() < end:
        key = _varint(stream)
        if key is None:
            return
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _varint(stream)
            yield number, None
        elif wire == _I64:
            stream.seek(8, io.SEEK_CUR)
            yield number, None
        elif wire == _I32:
            stream.seek(4, io.SEEK_CUR)
            yield number, None
        elif wire == _LEN:
            length = _varint(stream)
            if length is None:
                raise ValueError("truncated length")
            yield number, (stream, length)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _read_message(stream: BinaryIO) -> dict[str, str]:
    props: dict[str, str] = {}
    for number, payload in _fields(stream):
        if payload is None:
            continue
        s, length = payload
        start = s.tell()
        if number == _METADATA_PROPS:
            data = s.read(length)
            if len(data) != length:
                raise ValueError("truncated metadata entry")
            entry = io.BytesIO(data)
            key = value = ""
            for sub, sub_payload in _fields(entry):
                if sub_payload is None:
                    continue
                es, elen = sub_payload
                text = es.read(elen).decode("utf-8")
                if sub == _KEY:
                    key = text
                elif sub == _VALUE:
                    value = text
            props[key] = value
        else:
            s.seek(start + length)
    return props


def read_metadata_props(model: Union[str, "os.PathLike[str]", bytes]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model file (or its serialised bytes) as a dict.

    Raises:
        ValueError: the data is not a well-formed protobuf message at the top level.
        OSError: the file cannot be read.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _read_message(io.BytesIO(bytes(model)))
    with open(os.fspath(model), "rb") as stream:
        return _read_message(stream)


def recommended_session_config(model: Union[str, "os.PathLike[str]", bytes]) -> dict[str, str]:
    """Session config entries the exporter recorded in ``onnxcam.session_config`` (empty if none or
    unreadable: onnxruntime then reports any real problem with the file itself)."""
    try:
        raw = read_metadata_props(model).get(contract.META_SESSION_CONFIG)
    except (ValueError, OSError, UnicodeDecodeError):
        return {}
    if raw is None:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}
