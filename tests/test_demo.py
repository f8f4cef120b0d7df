"""The main job: ``purecompress demo`` trains, compresses, prints a table and writes files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import purecompress as pc
import purecompress.quant as pq
from purecompress.demo.cli import main
from purecompress.demo.recipes import quant_recipes, recipes


def test_demo_writes_table_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--finetune-epochs", "1"]) == 0
    out = capsys.readouterr().out
    names = ["dense", *recipes(), *quant_recipes()]
    for name in names:
        assert name in out
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in rows] == names
    assert "compact model: params" in out
    assert [r["name"] for r in rows if r["compact"]] == ["l1-channel-50%"]
    dense = rows[0]
    assert dense["accuracy"] > 0.8  # digits is easy: two epochs already learn it
    pruned = [r for r in rows[1:] if r["name"] in recipes()]
    quantized = [r for r in rows if r["name"] in quant_recipes()]
    assert len(pruned) + len(quantized) == len(rows) - 1
    assert all(r["size_bytes"] == dense["size_bytes"] == 4 * dense["params_total"] for r in pruned)
    for row in quantized:  # int8 weights: under a third of the float32 size, accuracy kept
        assert row["sparsity"] == 0.0 and row["params_kept"] == dense["params_kept"]
        assert dense["size_bytes"] / 4 < row["size_bytes"] < dense["size_bytes"] / 3
        assert row["accuracy"] > dense["accuracy"] - 0.05
        qparams = pq.load_quant_params(tmp_path / f"{row['name']}-qparams.safetensors")
        layers = ["0", "3", "8", "10"]  # the CNN's conv and linear layers
        assert sorted(qparams) == sorted(f"{m}.{k}" for m in layers for k in ("weight", "input"))
        assert all(bool((qp.scale > 0).all()) for qp in qparams.values())
        assert (tmp_path / f"{row['name']}.safetensors").exists()
    for row in pruned:
        assert 0.0 < row["sparsity"] < 1.0
        assert row["params_kept"] < dense["params_kept"]
        masks = pc.load_masks(tmp_path / f"{row['name']}-masks.safetensors")
        assert masks and all(m.sparsity() > 0 for k, m in masks.items() if k.endswith("weight"))
        assert (tmp_path / f"{row['name']}.safetensors").exists()


def test_cli_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "demo" in capsys.readouterr().err
