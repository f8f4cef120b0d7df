"""Runs examples/functional_qat.py and examples/ptq_calibration.py (in-process, small settings)."""

from __future__ import annotations

import warnings

import pytest

from tests.examples_loader import load_example

pytest.importorskip("sklearn", reason="the examples use scikit-learn's bundled digits dataset")


def test_functional_qat_trains_at_2_bits(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = load_example("functional_qat").main(bits=2, steps=120)
    assert result["float"] > 0.8  # 10 classes: chance is 0.1
    assert result["qat"] > 0.8 and result["qat"] >= result["before"] - 0.02
    assert result["steps"] == 60
    assert "2-bit QAT accuracy:" in capsys.readouterr().out


def test_ptq_calibration(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = load_example("ptq_calibration").main(steps=120, calibration_batches=2)
    assert result["float"] > 0.8
    assert result["ptq"] > result["float"] - 0.05
    assert result["int8_bytes"] * 4 == result["float_bytes"]
    out = capsys.readouterr().out
    assert "0.weight: scale" in out and "range [0, 127]" in out
