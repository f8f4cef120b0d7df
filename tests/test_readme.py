"""The README's Python examples run as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Optional packages an example may import (the transformer examples need transformers).
OPTIONAL = ("transformers", "timm", "torchvision")


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    missing = [m for m in OPTIONAL if re.search(rf"^\s*(import|from) {m}\b", BLOCKS[index], flags=re.M)
               and importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the example imports {', '.join(missing)}, which is not installed")
    monkeypatch.chdir(tmp_path)  # examples may write files (e.g. qparams.safetensors)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
