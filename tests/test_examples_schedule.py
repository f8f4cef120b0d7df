"""Runs the AGP and lottery ticket examples in-process (one torch import) and checks their results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.examples_loader import load_example

pytest.importorskip("sklearn", reason="the examples use scikit-learn's bundled digits dataset")


def test_functional_agp_reaches_sparsity_and_accuracy() -> None:
    result = load_example("functional_agp").main(sparsity=0.8, steps=80, begin=10, end=60, every=10)
    assert result["scheduled"] == pytest.approx(0.8)
    assert result["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert result["accuracy"] > 0.7


def test_nni_style_agp_script(tmp_path: Path) -> None:
    task_id, model, masks, score, configs = load_example("nni_style_agp").main(iterations=3, log_dir=str(tmp_path))
    assert task_id == 3 and score is None  # function-based tasks are not evaluated (NNI's 'latest')
    assert all(abs(float(1 - m["weight"].mean()) - 0.8) < 0.01 for m in masks.values())
    assert [c["total_sparsity"] for c in configs] == pytest.approx([0.8, 0.8])
    tasks = json.loads(next(p for p in tmp_path.iterdir()).joinpath(".tasks").read_text())
    assert len(tasks) == 4


def test_lottery_ticket_procedure() -> None:
    result = load_example("lottery_ticket").main(rounds=2, sparsity=0.75, steps=30)
    assert result["sparsity"] == pytest.approx(0.75)
    assert result["ticket"] > 0.5
