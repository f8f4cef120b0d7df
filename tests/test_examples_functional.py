"""Runs examples/functional_pruning.py as a user would and checks what it prints."""

from __future__ import annotations

import re

import pytest

from tests.examples_loader import run_example

pytest.importorskip("sklearn", reason="the example uses scikit-learn's bundled digits dataset")


@pytest.fixture(scope="module")
def output() -> str:
    return run_example("functional_pruning", "--epochs", "8", "--sparsity", "0.5")


def _number(output: str, label: str) -> float:
    match = re.search(rf"^{re.escape(label)}: ([0-9.]+)$", output, re.MULTILINE)
    assert match, f"{label!r} not in output:\n{output}"
    return float(match.group(1))


def test_example_trains_prunes_and_recovers(output: str) -> None:
    dense = _number(output, "dense accuracy")
    one_shot = _number(output, "pruned accuracy (one-shot)")
    tuned = _number(output, "pruned accuracy (fine-tuned 3 epochs)")
    assert dense > 0.8  # 10 classes: chance is 0.1
    assert 0.1 < one_shot <= 1.0
    assert tuned > 0.8


def test_example_prints_the_sparsity_table(output: str) -> None:
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["layer", "params", "kept", "sparsity"])
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 1:]}
    assert rows["0.weight"] == ["4096", "2048", "50.00%"]  # half the hidden channels (L1)
    assert rows["2.weight"] == ["2048", "1024", "50.00%"]
    assert rows["4.weight"] == ["320", "96", "70.00%"]  # classifier: 70% of single weights (Level)
    assert rows["0.bias"] == ["64", "32", "50.00%"]  # pruned channels take their bias with them
    assert rows["4.bias"] == ["10", "10", "0.00%"]  # fine-grained masks leave the bias dense
    assert rows["total"][:2] == ["6570", "3226"]
    assert "config group sparsity: 0: 50.00%, 1: 70.00%" in output
