"""``python -m purecompress.compat SCRIPT.py``: unchanged NNI scripts resolve to purecompress.compat."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import purecompress
from purecompress.compat import _shim
from purecompress.compat.__main__ import main

ROOT = Path(purecompress.__file__).resolve().parent.parent


def run_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "nni_script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "purecompress.compat", str(script), *args], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=120)


SCRIPT = """
import sys
import torch
import nni
from nni.compression.pytorch.pruning import L1NormPruner, LevelPruner
from nni.algorithms.compression.v2.pytorch.pruning import FPGMPruner
from nni.algorithms.compression.v2.pytorch.pruning.tools import GlobalSparsityAllocator, NormMetricsCalculator
from nni.algorithms.compression.v2.pytorch.utils import Scaling
from nni.compression.pytorch.utils import compute_sparsity_mask2compact
import nni.compression.pytorch.pruning as pruning_module

assert __name__ == "__main__", __name__
print("argv", sys.argv[1:])
print("nni file", nni.__file__)
print("pruning file", pruning_module.__file__)
print("L1 from", L1NormPruner.__module__)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2))
optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
pruner = L1NormPruner(model, [{"sparsity": 0.5, "op_types": ["Conv2d"]}])
_, masks = pruner.compress()
print("masks", sorted(masks), int(masks["0"]["weight"].sum()), optimizer.trace_kwargs)
print("nni modules from site-packages:", [n for n, m in sys.modules.items()
      if n.split(".")[0] == "nni" and "site-packages" in (getattr(m, "__file__", None) or "")])
try:
    from nni.compression.pytorch.pruning import NotAPruner
except ImportError as err:
    print("missing name:", err)
try:
    import nni.retiarii
except ImportError as err:
    print("missing module:", type(err).__name__, err)
"""


def test_unchanged_nni_script_runs_on_purecompress(tmp_path: Path) -> None:
    done = run_script(tmp_path, SCRIPT, "--epochs", "1")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "argv ['--epochs', '1']" in out
    shim_file = str(Path(_shim.__file__).resolve())
    assert f"nni file {shim_file}" in out and f"pruning file {shim_file}" in out
    assert "L1 from purecompress.compat.pruning" in out
    assert "masks ['0'] 54 {'lr': 0.01}" in out  # 2 of 4 filters of 3x3x3 kept
    assert "missing name: purecompress does not provide nni.compression.pytorch.pruning.NotAPruner yet" in out
    assert "missing module: ModuleNotFoundError purecompress does not provide 'nni.retiarii' yet" in out
    # Even with NNI installed (as in the parity environment) the shim wins for the run.
    assert "nni modules from site-packages: []" in out


def test_usage_and_missing_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2 and "usage: python -m purecompress.compat SCRIPT.py" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.py")]) == 2 and "no such script" in capsys.readouterr().err


def test_finder_in_process_then_removed() -> None:
    saved = {n: m for n, m in sys.modules.items() if n == "nni" or n.startswith("nni.")}
    try:
        _shim.install()
        import nni  # noqa: F401 - served by the shim
        from nni.compression.pytorch.pruning.tools import Scaling

        from purecompress.compat import Scaling as ours

        assert Scaling is ours and sys.modules["nni"].trace is not None
        assert "LevelPruner" in sys.modules["nni.compression.pytorch.pruning"].__all__
        with pytest.raises(ImportError, match="does not provide nni.compression.pytorch.pruning.tools.Nope"):
            from nni.compression.pytorch.pruning.tools import Nope  # noqa: F401
    finally:
        _shim.uninstall()
        sys.modules.update(saved)
    assert not any(isinstance(f, _shim.NniFinder) for f in sys.meta_path)


def test_every_table_entry_imports() -> None:
    """Each NNI module of the table is served, and each name it lists exists."""
    for name, sources in _shim.MODULES.items():
        module = _shim.NniModule(name, sources)
        for export in module.__all__:
            assert getattr(module, export) is not None, f"{name}.{export}"


def test_compat_package_serves_every_name_from_its_nni_module() -> None:
    import purecompress.compat as compat

    assert compat.TaylorFOWeightPruner.__module__ == "purecompress.compat.pruning.basic_pruner"
    assert compat.LevelPruner.__module__ == "purecompress.compat.pruning.basic_pruner"
    assert compat.QAT_Quantizer.__module__ == "purecompress.compat.quantization.quantizers"
    with pytest.raises(AttributeError, match="NoSuchPruner"):
        compat.NoSuchPruner  # noqa: B018
