"""Runs the training-aware examples (Taylor in a functional loop, movement, NNI-style evaluator).

They run in this process (``main(argv)``) to save interpreter start-ups; each checks what it prints.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch

from tests.examples_loader import load_example

pytest.importorskip("sklearn", reason="the examples use scikit-learn's bundled digits dataset")


@pytest.fixture(autouse=True)
def _keep_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    load_example(name).main(argv)
    return capsys.readouterr().out


def _number(output: str, pattern: str) -> float:
    match = re.search(pattern, output, re.MULTILINE)
    assert match, f"{pattern!r} not in output:\n{output}"
    return float(match.group(1))


def test_functional_taylor(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("functional_taylor", ["--epochs", "4", "--sparsity", "0.5"], capsys)
    assert _number(out, r"^taylor steps: (\d+)$") == 22
    assert _number(out, r"^dense accuracy: ([0-9.]+)$") > 0.5
    assert _number(out, r"^pruned accuracy \(fine-tuned 2 epochs\): ([0-9.]+)$") > 0.5
    assert re.search(r"^0\.weight\s+144\s+72\s+50\.00%$", out, re.MULTILINE)


def test_movement_pruning_hard(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("movement_pruning", ["--epochs", "4", "--sparsity", "0.8"], capsys)
    assert "0.weight: 0.800, 2.weight: 0.800" in out
    assert _number(out, r"^pruned accuracy: ([0-9.]+)$") > 0.5


def test_nni_style_evaluator(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("nni_style_evaluator", ["--sparsity", "0.5"], capsys)
    for name in ("taylor \\(dependency_aware\\)", "apoz"):
        assert _number(out, rf"^{name}: sparsity ([0-9.]+),") == 0.5
        assert _number(out, rf"^{name}: .* fine-tuned accuracy ([0-9.]+)$") > 0.5
