"""examples/nni_style_pruning.py runs as written, and as an unchanged NNI script through the shim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "nni_style_pruning.py"
NNI_IMPORTS = {
    "from purecompress.compat.pruning import L1NormPruner": "from nni.compression.pytorch.pruning import L1NormPruner",
    "from purecompress.compat import trace": "from nni import trace",
}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


def _check(done: subprocess.CompletedProcess[str], out: Path) -> None:
    assert done.returncode == 0, done.stderr
    assert "weight sparsity of pruned layers: 0.500" in done.stdout
    assert "simulated prune conv2 remain/total: 8/16" in done.stderr
    state = torch.load(out / "pruned_model.pth", weights_only=True)
    masks = torch.load(out / "mask.pth", weights_only=True)
    assert sorted(masks) == ["conv1", "conv2", "fc1"] and "conv1.weight" in state
    assert torch.equal(state["conv2.weight"] * masks["conv2"]["weight"], state["conv2.weight"])


def test_example_runs(tmp_path: Path) -> None:
    _check(_run(str(EXAMPLE), "--out", str(tmp_path)), tmp_path)


def test_example_with_nni_imports_runs_through_the_shim(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    for ours, theirs in NNI_IMPORTS.items():
        assert ours in text
        text = text.replace(ours, theirs)
    assert "import purecompress" not in text and "from purecompress" not in text
    script = tmp_path / "nni_script.py"
    script.write_text(text)
    _check(_run("-m", "purecompress.compat", str(script), "--out", str(tmp_path)), tmp_path)
