"""compat.SensitivityAnalysis gives NNI 2.10.1's ``analysis()`` numbers, and its vmapped path the loop's."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from purecompress.compat.sensitivity_analysis import SensitivityAnalysis


def _model() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(4, 3, 8, 8)
    model(x)
    return model.eval(), x


@pytest.mark.parametrize("prune_type", ["l1", "l2"])
@pytest.mark.parametrize("early_stop", [(None, None), ("minimize", 0.02), ("raised", 0.001)])
def test_analysis_equals_nni(prune_type: str, early_stop: tuple[str | None, float | None]) -> None:
    pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")
    from nni.compression.pytorch.utils.sensitivity_analysis import SensitivityAnalysis as NniSA

    ours_model, x = _model()
    theirs_model = copy.deepcopy(ours_model)
    mode, value = early_stop
    theirs = NniSA(theirs_model, lambda: float(theirs_model(x).pow(2).mean().detach()), sparsities=[0.75, 0.25, 0.5],
                   prune_type=prune_type, early_stop_mode=mode, early_stop_value=value).analysis()
    before = copy.deepcopy(ours_model.state_dict())
    sa = SensitivityAnalysis(ours_model, lambda: float(ours_model(x).pow(2).mean().detach()),
                             sparsities=[0.75, 0.25, 0.5], prune_type=prune_type, early_stop_mode=mode,
                             early_stop_value=value)
    ours = sa.analysis()
    assert {k: {float(s): v for s, v in d.items()} for k, d in theirs.items()} == ours
    assert set(sa.looped) == {"0", "2"}  # val_func returns a Python float: NNI's loop, and we say so
    assert all(torch.equal(before[k], v) for k, v in ours_model.state_dict().items())


def test_tensor_val_func_runs_vmapped_with_the_loops_numbers(tmp_path: Path) -> None:
    model, x = _model()
    vmapped = SensitivityAnalysis(model, lambda: model(x).pow(2).mean(), sparsities=[0.25, 0.5, 0.75])
    looped = SensitivityAnalysis(model, lambda: float(model(x).pow(2).mean().detach()), sparsities=[0.25, 0.5, 0.75])
    fast, slow = vmapped.analysis(), looped.analysis()
    assert vmapped.looped == {} and set(looped.looped) == {"0", "2"}
    for layer in slow:
        assert fast[layer] == pytest.approx(slow[layer], rel=1e-5)
    vmapped.export(tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "layername,0.25,0.5,0.75" and lines[1].startswith("0,")


def test_bad_options_are_rejected() -> None:
    model, _ = _model()
    with pytest.raises(ValueError, match="prune_type"):
        SensitivityAnalysis(model, lambda: 0.0, prune_type="l3")
    with pytest.raises(ValueError, match="early_stop_value"):
        SensitivityAnalysis(model, lambda: 0.0, early_stop_mode="dropped")
