"""The quantization examples run end to end (subprocess, one thread each, small settings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_nni_style_qat(tmp_path):
    out = _run("nni_style_qat.py", "--steps", "30", "--out", str(tmp_path))
    assert "folded BatchNorms: {'conv1': 'bn1', 'conv2': 'bn2'}" in out
    assert "reloaded quantized model accuracy" in out
    assert (tmp_path / "model.pth").exists() and (tmp_path / "calibration.pth").exists()


def test_onnx_export(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = _run("onnx_export.py", "--out", str(tmp_path / "model.onnx"))
    assert "7 QuantizeLinear, 7 DequantizeLinear" in out
    assert "max abs diff" in out and (tmp_path / "model.onnx").exists()
