"""benchmarks/gpu.py (run on a lent CUDA machine) runs here on the CPU, so that it cannot rot between
device sessions: every row but the CUDA-only one is measured, the shrunk model is exact and the
vmapped sensitivity sweep gives the loop's scores."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gpu_benchmark_runs_on_cpu_quick() -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("purecompress_gpu_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--device", "cpu", "--quick", "--no-compile"])
    assert "device cpu" in out
    for check in ("masked training step", "QAT training step", "sensitivity", "shrink at 50%"):
        assert check in out
    assert "same scores: True" in out and "n/a (CUDA only)" in out
    error = float(out.split("output error ")[1].split()[0])
    assert error < 1e-5
