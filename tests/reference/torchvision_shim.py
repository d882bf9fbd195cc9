"""Import torchvision even when the installed wheel is a CUDA build on a CPU-only torch.

A CUDA torchvision wheel on CPU torch fails at import with
``RuntimeError: operator torchvision::nms does not exist`` because its compiled ops library is
not loadable, while ``torchvision/_meta_registrations.py`` registers fake kernels for
``torchvision::nms``/``qnms``. Defining those two op *schemas* ourselves (no kernel) lets the
Python package import; model definitions (``torchvision.models``) then work. Ops that need the
compiled library (nms, roi_align, ...) remain unusable, which the reference never needs.
"""
from __future__ import annotations

import sys
import types

_LIB = None  # keeps the torch.library.Library alive (dropping it would unregister the schemas)


def import_torchvision() -> types.ModuleType:
    """Return the ``torchvision`` module, defining ``torchvision::nms``/``qnms`` schemas if needed.

    Tries a plain ``import torchvision`` first; only if that raises, defines
    ``nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor`` and the same for ``qnms``
    in a ``torch.library.Library("torchvision", "DEF")`` kept alive at module level, purges the
    partially-imported ``torchvision*`` entries from ``sys.modules`` and imports again.
    """
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
