"""Runs examples/functional_qat.py and examples/ptq_calibration.py (in-process, small settings)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("sklearn", reason="the examples use scikit-learn's bundled digits dataset")

ROOT = Path(__file__).resolve().parents[1]


def _load(script: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), ROOT / "examples" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_functional_qat_trains_at_2_bits(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _load("functional_qat.py").main(bits=2, steps=120)
    assert result["float"] > 0.8  # 10 classes: chance is 0.1
    assert result["qat"] > 0.8 and result["qat"] >= result["before"] - 0.02
    assert result["steps"] == 60
    assert "2-bit QAT accuracy:" in capsys.readouterr().out


def test_ptq_calibration(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _load("ptq_calibration.py").main(steps=120, calibration_batches=2)
    assert result["float"] > 0.8
    assert result["ptq"] > result["float"] - 0.05
    assert result["int8_bytes"] * 4 == result["float_bytes"]
    out = capsys.readouterr().out
    assert "0.weight: scale" in out and "range [0, 127]" in out
