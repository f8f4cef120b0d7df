"""The main job: ``purecompress demo`` trains, compresses, prints a table and writes files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import purecompress as pc
import purecompress.quant as pq
from purecompress.demo.cli import main
from purecompress.demo.recipes import (
    LEGEND,
    SHRINKABLE,
    make_cnn,
    pruned_layers,
    quant_recipes,
    recipes,
    run_demo,
    selected_sparsity,
)


def test_demo_writes_table_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--epochs", "2", "--finetune-epochs", "1"]) == 0
    out = capsys.readouterr().out
    names = ["dense", *recipes(), *quant_recipes()]
    for name in names:
        assert name in out
    assert LEGEND in out
    for column in ("accuracy", "sparsity", "pruned", "params kept", "stored KiB", "compact KiB", "seconds"):
        assert column in out.splitlines()[0] and f"\n{column}" in f"\n{LEGEND}"  # every column explained
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in rows] == names
    assert "compact model: params" in out
    assert [r["name"] for r in rows if r["compact"]] == list(SHRINKABLE) == ["l1-channel-50%", "taylor-channel-50%"]
    dense = rows[0]
    assert dense["accuracy"] > 0.8  # digits is easy: two epochs already learn it
    assert dense["sparsity"] is None and dense["compact_bytes"] is None
    pruned = [r for r in rows[1:] if r["name"] in recipes()]
    quantized = [r for r in rows if r["name"] in quant_recipes()]
    assert len(pruned) + len(quantized) == len(rows) - 1
    assert all(r["size_bytes"] == dense["size_bytes"] == 4 * dense["params_total"] for r in pruned)  # dense layout
    for row in quantized:  # int8 weights: under a third of the float32 size, accuracy kept
        assert row["sparsity"] is None and row["params_kept"] == dense["params_kept"] and not row["pruned_layers"]
        assert dense["size_bytes"] / 4 < row["size_bytes"] < dense["size_bytes"] / 3
        assert row["accuracy"] > dense["accuracy"] - 0.05
        qparams = pq.load_quant_params(tmp_path / f"{row['name']}-qparams.safetensors")
        layers = ["0", "3", "8", "10"]  # the CNN's conv and linear layers
        assert sorted(qparams) == sorted(f"{m}.{k}" for m in layers for k in ("weight", "input"))
        assert all(bool((qp.scale > 0).all()) for qp in qparams.values())
        assert (tmp_path / f"{row['name']}.safetensors").exists()
    for row in pruned:
        assert row["params_kept"] < dense["params_kept"]
        masks = pc.load_masks(tmp_path / f"{row['name']}-masks.safetensors")
        assert masks and all(m.sparsity() > 0 for k, m in masks.items() if k.endswith("weight"))
        assert (tmp_path / f"{row['name']}.safetensors").exists()
    by_name = {r["name"]: r for r in rows}
    for name in SHRINKABLE:  # the sparsity of the selected convs, not of the whole model (it was 6.25%)
        row = by_name[name]
        assert row["sparsity"] == 0.5 and row["pruned_layers"] == "2 Conv2d"
        masks = pc.load_masks(tmp_path / f"{name}-masks.safetensors")
        assert {k for k in masks if k.endswith("weight")} == {"0.weight", "3.weight"}
        assert all(masks[k].keep.float().mean() == 0.5 for k in ("0.weight", "3.weight"))  # half the channels
        compact_params = int(row["compact"].split("params ")[1].split(" -> ")[1].split(",")[0])
        assert row["compact_bytes"] == 4 * compact_params < row["size_bytes"] / 1.5
    for name in ("level-80%", "agp-level-80%"):  # unstructured: cannot be shrunk
        row = by_name[name]
        assert row["sparsity"] == pytest.approx(0.8, abs=1e-3) and row["pruned_layers"] == "2 Conv2d, 2 Linear"
        assert row["compact_bytes"] is None


def test_selected_sparsity_counts_only_the_selected_layers() -> None:
    model = make_cnn()
    plan = pc.select(model, pc.from_config_list([{"sparsity": 0.5, "op_types": ["Conv2d"]}]))
    params = pc.params_of(model)
    masks = pc.prune(params, plan, pc.l1_norm)
    assert selected_sparsity(params, masks, plan) == 0.5
    assert selected_sparsity(params, {}, plan) == 0.0  # unmasked selected layers count as dense
    assert pruned_layers(model, plan) == "2 Conv2d"


def test_cli_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--epochs", "--finetune-epochs"])
@pytest.mark.parametrize("value", ["-1", "x"])
def test_cli_rejects_negative_or_non_integer_epochs(flag: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["demo", flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and ("must be >= 0, got -1" in err if value == "-1" else "expected an integer" in err)


def test_run_demo_rejects_negative_epochs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        run_demo(tmp_path, epochs=-1)


def test_every_demo_option_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--seed SEED seed of the train/test split" in out
    assert "--epochs EPOCHS dense training epochs, >= 0" in out


def test_python_dash_m_purecompress_runs_the_cli() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-m", "purecompress", "demo", "--epochs", "-1"], capture_output=True,
                          text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2 and "argument --epochs: must be >= 0" in done.stderr
    assert done.stderr.startswith("usage: purecompress demo")
