"""The LLM examples run as a user runs them (a new interpreter), trained only a few steps here."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples_loader import run_example


def test_llm_wanda_example() -> None:
    out = run_example("llm_wanda", "--steps", "20", "--held-out", "3000", "--threads", "1")
    assert "wanda      perplexity" in out and "sparsity of the pruned layers: 0.500" in out


def test_llm_sparsegpt_2of4_example() -> None:
    out = run_example("llm_sparsegpt_2of4", "--steps", "20", "--held-out", "3000", "--threads", "1")
    assert "sparsegpt 2:4  perplexity" in out and "kept per group of 4: [2]" in out


def test_llm_gptq_example(tmp_path: Path) -> None:
    out = run_example("llm_gptq", "--steps", "20", "--held-out", "3000", "--threads", "1", "--bits", "3",
                      "--out", str(tmp_path / "q.safetensors"))
    assert "gptq 3-bit" in out and "saved 14 tensors'" in out
    assert (tmp_path / "q.safetensors").exists()


pytestmark = pytest.mark.usefixtures("one_thread")
