"""benchmarks.zoo_import: torchvision imports on the CPU torch, hook first or not."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_torchvision_after_the_import_hook() -> None:
    """The hook fires inside import_torchvision's own check: the ops must be declared once, not twice."""
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    code = ("from benchmarks.zoo_import import install_import_hook, import_torchvision\n"
            "install_import_hook()\n"
            "print(import_torchvision().models.mobilenet_v2 is not None)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"
