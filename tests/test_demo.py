"""The main job: ``purecompress demo`` trains, compresses, prints a table and writes files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import purecompress as pc
from purecompress.cli import main
from purecompress.demo import recipes


def test_demo_writes_table_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--finetune-epochs", "1"]) == 0
    out = capsys.readouterr().out
    names = ["dense", *recipes()]
    for name in names:
        assert name in out
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in rows] == names
    assert "compact model: params" in out
    assert [r["name"] for r in rows if r["compact"]] == ["l1-channel-50%"]
    dense = rows[0]
    assert dense["accuracy"] > 0.8  # digits is easy: two epochs already learn it
    for row in rows[1:]:
        assert 0.0 < row["sparsity"] < 1.0
        assert row["params_kept"] < dense["params_kept"]
        masks = pc.load_masks(tmp_path / f"{row['name']}-masks.safetensors")
        assert masks and all(m.sparsity() > 0 for k, m in masks.items() if k.endswith("weight"))
        assert (tmp_path / f"{row['name']}.safetensors").exists()


def test_cli_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "demo" in capsys.readouterr().err
