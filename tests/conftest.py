"""Fixtures shared by all tests.

Data from ``../shared`` (real models and photos) is found through ``ONNXCAM_SHARED`` (default: the
``shared`` folder beside the repository root); tests that need it skip with a reason when absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_path() -> Path:
    return Path(os.environ.get("ONNXCAM_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = shared_path()
    if not (path / "models").is_dir():
        pytest.skip(f"shared data not found at {path} (set ONNXCAM_SHARED)")
    return path


@pytest.fixture(scope="session")
def models_dir(shared_dir: Path) -> Path:
    return shared_dir / "models"


@pytest.fixture(scope="session")
def photos_dir(shared_dir: Path) -> Path:
    return shared_dir / "images" / "photos"
