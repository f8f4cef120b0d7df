"""Run a script of ``examples/``: in a new interpreter as a user would, or loaded as a module to call its ``main()``."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["EXAMPLES", "load_example", "run_example"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Execute ``examples/<name>.py`` as a fresh module ``example_<name>`` (not put in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_example(name: str, *argv: str) -> str:
    """Run ``python examples/<name>.py ARGV`` from the repository root; its stdout.

    Asserts that it exits 0 and that nothing of ours is in its stderr (no purecompress warning).
    """
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *argv],
                            capture_output=True, text=True, timeout=600, cwd=EXAMPLES.parent)
    assert result.returncode == 0, result.stderr
    assert "purecompress" not in result.stderr, result.stderr
    return result.stdout
