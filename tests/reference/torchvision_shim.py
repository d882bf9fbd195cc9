"""Import torchvision even when the installed wheel is a CUDA build on a CPU-only torch.

A CUDA torchvision wheel on CPU torch fails at import with
``RuntimeError: operator torchvision::nms does not exist`` because its compiled ops library is
not loadable, while ``torchvision/_meta_registrations.py`` registers fake kernels for
``torchvision::nms``/``qnms``. Defining those two op *schemas* ourselves (no kernel) lets the
Python package import; model definitions (``torchvision.models``) then work. Ops that need the
compiled library (nms, roi_align, ...) remain unusable, which the reference never needs.

The implementation lives in :mod:`benchmarks._torchvision` (the speed benchmark's
workers build the same models without importing ``tests/``); this module re-exports it.
"""
from __future__ import annotations

from benchmarks._torchvision import import_torchvision

__all__ = ["import_torchvision"]
