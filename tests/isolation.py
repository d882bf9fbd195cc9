"""Run Python code in a subprocess where ``import torch`` / ``import onnx`` fail (runtime isolation tests).

The runtime side (``onnxcam.runtime``, ``onnxcam.metrics``, the explain/gallery CLIs' runtime parts)
must work where only onnxruntime, numpy and OpenCV are installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: Makes `import torch` / `import onnx` (and their submodules, onnxscript, torchvision) raise ImportError.
BLOCKER = textwrap.dedent(
    """
    import sys, importlib.abc
    BLOCKED = ("torch", "onnx", "onnxscript", "torchvision")
    class _Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None
    sys.meta_path.insert(0, _Blocker())
    for _m in list(sys.modules):
        if _m.split(".")[0] in BLOCKED:
            del sys.modules[_m]
    """
)


def run_blocked(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) after :data:`BLOCKER`, from the repository root, with ``args`` as argv[1:]."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=timeout)
