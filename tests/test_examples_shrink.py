"""Runs examples/shrink_and_finetune.py as a user would and checks what it prints."""

from __future__ import annotations

import re

import pytest

from tests.examples_loader import run_example

pytest.importorskip("sklearn", reason="the example uses scikit-learn's bundled digits dataset")


@pytest.fixture(scope="module")
def output() -> str:
    return run_example("shrink_and_finetune", "--epochs", "2", "--finetune-epochs", "2", "--width", "16")


def _number(output: str, label: str) -> float:
    match = re.search(rf"^{re.escape(label)}: ([0-9.]+)", output, re.MULTILINE)
    assert match, f"{label!r} not in output:\n{output}"
    return float(match.group(1))


def test_example_prunes_shrinks_finetunes_and_times(output: str) -> None:
    assert _number(output, "dense accuracy") > 0.5  # 10 classes: chance is 0.1
    assert _number(output, "compact accuracy (fine-tuned 2 epochs)") > 0.3
    params = re.search(r"^params: (\d+) -> (\d+)", output, re.MULTILINE)
    flops = re.search(r"^FLOPs: (\d+) -> (\d+)", output, re.MULTILINE)
    assert params and flops
    assert int(params[1]) > 3 * int(params[2]) and int(flops[1]) > 3 * int(flops[2])  # 50% of channels: ~4x
    assert _number(output, "latency ratio") > 0
    assert "| **total** |" in output
