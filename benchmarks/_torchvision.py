"""Import torchvision even when the installed wheel is a CUDA build on a CPU-only torch.

A CUDA torchvision wheel on CPU torch fails at import with ``RuntimeError: operator
torchvision::nms does not exist``: its compiled ops library cannot load, while
``torchvision/_meta_registrations.py`` registers fake kernels for ``torchvision::nms``/``qnms``.
Defining those two op *schemas* (no kernel) lets the Python package, and so
``torchvision.models``, import. Only done when the plain import fails. (The test suite's
``tests/reference/torchvision_shim.py`` re-exports this one.)
"""
from __future__ import annotations

import sys
import types

_LIB = None  # keeps the torch.library.Library alive (dropping it would unregister the schemas)


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, defining the ``nms``/``qnms`` schemas first if needed."""
    global _LIB
    try:
        import torchvision  # noqa: F401

        return sys.modules["torchvision"]
    except (RuntimeError, ImportError) as first_error:
        import torch

        if _LIB is None:
            lib = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                try:
                    lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                except RuntimeError:  # already defined (e.g. by a real ops library)
                    pass
            _LIB = lib
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        try:
            import torchvision  # noqa: F401,F811
        except Exception as second_error:  # pragma: no cover - environment-specific
            raise ImportError(
                f"torchvision import failed ({first_error!r}) and still fails after defining "
                f"the torchvision::nms/qnms schemas ({second_error!r})"
            ) from second_error
        return sys.modules["torchvision"]
