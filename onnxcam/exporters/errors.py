"""Errors raised by the exporter."""

from __future__ import annotations


class ExportError(ValueError):
    """The model cannot be exported as asked; the message says which node, tensor or setting and why."""
