"""The fast subset of the model zoo (``benchmarks/zoo.py``): the same pipeline on a few models per family.

The local models need no optional package (they run in CI); the torchvision, timm and Hugging Face
rows skip where those are not installed. Each row: captured, compact == masked, the kept channel
fraction what was asked, MACs no worse than Torch-Pruning's at the same ask (where installed), a
QAT step and a QDQ export that onnxruntime agrees with.
"""

from __future__ import annotations

import importlib.util

import pytest

from benchmarks import zoo


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _check(row: dict, *, kept: tuple[float, float] | None = (0.5, 0.5)) -> None:
    assert "error" not in row and "shrink" not in row, row
    assert row["captured"] in ("fx", "record")
    assert row["masked_vs_compact"] <= 1e-5
    if kept is not None:
        assert row["kept"] is not None and kept[0] - 1e-9 <= row["kept"][0] <= row["kept"][1] <= kept[1] + 1e-9
    assert row["qat"] == "ok"
    if row.get("tp") == "ok" and row.get("tp_macs"):
        assert row["macs"][1] <= row["tp_macs"] * 1.01  # at least as small as Torch-Pruning's


@pytest.mark.parametrize("name", zoo.LOCAL)
def test_local_models(name: str) -> None:
    row = zoo.run_model(f"local:{name}", latency_rounds=0)
    _check(row)
    assert row["qdq"].startswith("ok")
    assert row["macs"][1] / row["macs"][0] < 0.35  # half the channels: about a quarter of the MACs
    assert zoo.format_row(row).count("|") == zoo.HEADER.splitlines()[0].count("|")


@pytest.mark.skipif(not _has("torchvision"), reason="torchvision is not installed")
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models(name: str) -> None:
    row = zoo.run_model(name, size=32, latency_rounds=0)
    _check(row)


@pytest.mark.skipif(not _has("torchvision"), reason="torchvision is not installed")
def test_convnext_prune_norms_shrinks_the_residual_stream() -> None:
    """The README's numbers: torchvision convnext_tiny, 64x64, 50% dependency-aware L1."""
    plain = zoo.run_model("convnext_tiny", latency_rounds=0, peer=False, quant=False)
    row = zoo.run_model("convnext_tiny", latency_rounds=0, peer=False, quant=False, prune_norms=True)
    assert 0.52 < plain["macs"][1] / plain["macs"][0] < 0.55 and plain["masked_vs_compact"] <= 1e-5
    assert row["macs"][1] / row["macs"][0] < 0.27 and row["dense_layers"] == {}
    assert tuple(row["kept"]) == (0.5, 0.5)
    assert 1e-4 < row["masked_vs_compact"] < 1.0  # the norms' statistics change


@pytest.mark.skipif(not _has("transformers"), reason="transformers is not installed")
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_hugging_face_models_capture_and_shrink(name: str) -> None:
    row = zoo.run_model(f"hf:{name}", latency_rounds=0, peer=False)
    _check(row, kept=None)  # heads and neurons (tests/test_heads.py checks the counts)
    assert row["params"][1] < 0.8 * row["params"][0]
    assert row["qdq"].startswith("ok"), row["qdq"]  # exported with keyword inputs, checked by onnxruntime


def test_unknown_models_name_what_is_known() -> None:
    row = zoo.run_model("local:nope")
    assert "resnet" in row["error"] and "nope" in row["error"]
    with pytest.raises(ValueError, match="family"):
        zoo.build("zz:resnet18")
