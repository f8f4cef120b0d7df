"""Observers (pure range updates) and quantization config parsing."""

from __future__ import annotations

import pytest
import torch

from purecompress.quant import QuantConfig, TensorSpec, current_range, ema_range, from_quant_config_list, minmax_range
from purecompress.selectors import ConfigError, select


def test_ema_vector_from_nni() -> None:
    x1 = torch.relu(torch.tensor([[-0.2, 0.0], [0.1, 0.2]]))
    r = ema_range(None, x1)
    r = ema_range(r, torch.tensor([[0.2, 0.4], [0.6, 0.8]]))
    torch.testing.assert_close((r.min, r.max), (torch.tensor(0.002), torch.tensor(0.206)))


def test_ema_first_flag_is_traceable() -> None:
    prev = ema_range(None, torch.tensor([5.0, 6.0]))
    x = torch.tensor([1.0, 2.0])
    reset = ema_range(prev, x, first=torch.tensor(True))
    kept = ema_range(prev, x, first=torch.tensor(False))
    assert torch.equal(reset.max, ema_range(None, x).max)
    assert torch.equal(kept.max, ema_range(prev, x).max)


def test_ema_accepts_a_tensor_decay() -> None:
    prev = ema_range(None, torch.tensor([0.0, 1.0]))
    x = torch.tensor([0.5, 2.0])
    decay = torch.tensor(0.9)
    got = ema_range(prev, x, decay=decay, first=False)
    assert torch.equal(got.max, prev.max * decay + (1 - decay) * torch.tensor(2.0))
    torch.testing.assert_close(got.max, ema_range(prev, x, decay=0.9, first=False).max)


def test_per_channel_ranges() -> None:
    w = torch.arange(24.0).view(2, 3, 4) - 5
    r = current_range(w, axis=0)
    assert r.min.tolist() == [-5, 7] and r.max.tolist() == [6, 18]
    a = current_range(w, axis=1)
    assert a.min.tolist() == [-5, -1, 3] and a.max.tolist() == [10, 14, 18]
    r2 = minmax_range(r, -w, axis=0)
    assert r2.min.tolist() == [-6, -18] and r2.max.tolist() == [6, 18]
    assert r.min.tolist() == [-5, 7]  # inputs are not modified


def test_config_parsing() -> None:
    cfgs = from_quant_config_list([
        {"quant_types": ["output", "weight"], "quant_bits": 8, "op_types": ["Conv2d"],
         "quant_scheme": {"weight": "per_channel_symmetric"}, "quant_dtype": {"weight": "int"},
         "quant_start_step": 3},
        {"exclude": True, "op_names": ["1"]},
    ])
    cfg = cfgs[0]
    assert cfg.quant_types == ("weight", "output") and cfg.start_step == 3
    assert cfg.specs["weight"] == TensorSpec(8, "int", "per_channel_symmetric")
    assert cfg.specs["output"] == TensorSpec(8, "uint", "per_tensor_affine")
    assert cfg.specs["weight"].qrange == (-127, 127) and cfg.specs["weight"].per_channel
    assert cfgs[1].selector.exclude and cfgs[1].quant_types == ()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Linear(2, 2))
    assert select(model, cfgs).modules == ("0",)
    assert isinstance(cfg, QuantConfig)


@pytest.mark.parametrize(("entry", "key"), [
    ({"quant_types": ["weight"], "quant_bits": 0, "op_types": ["Conv2d"]}, "quant_bits"),
    ({"quant_types": ["weight"], "quant_bits": {"weight": 32}, "op_types": ["Conv2d"]}, "quant_bits"),
    ({"quant_types": ["weight"], "quant_bits": {"bias": 8}, "op_types": ["Conv2d"]}, "quant_bits"),
    ({"quant_types": ["input"], "quant_bits": {"weight": 8}, "op_types": ["Conv2d"]}, "quant_bits"),
    ({"quant_types": ["bias"], "quant_bits": 8, "op_types": ["Conv2d"]}, "quant_types"),
    ({"quant_types": ["weight"], "quant_bits": 8, "quant_dtype": "float", "op_types": ["Conv2d"]}, "quant_dtype"),
    ({"quant_types": ["weight"], "quant_bits": 8, "quant_scheme": "per_row", "op_types": ["Conv2d"]}, "quant_scheme"),
    ({"quant_types": ["weight"], "quant_bits": 8, "quant_start_step": -1, "op_types": ["Conv2d"]}, "quant_start_step"),
    ({"quant_types": ["weight"], "quant_bits": 8, "op_types": ["LSTM"]}, "op_types"),
    ({"quant_types": ["weight"], "quant_bits": 8, "sparsity": 0.5, "op_types": ["Conv2d"]}, "sparsity"),
    ({"quant_types": ["weight"], "op_types": ["Conv2d"]}, None),
    ({"quant_types": ["weight"], "quant_bits": 8}, None),
])
def test_config_errors_name_index_and_key(entry: dict, key: str | None) -> None:
    good = {"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}
    with pytest.raises(ConfigError) as err:
        from_quant_config_list([good, entry], allowed_op_types=["Conv2d", "Linear", "ReLU", "ReLU6"])
    assert err.value.index == 1 and err.value.key == key


def test_allowed_bits_and_types() -> None:
    with pytest.raises(ConfigError, match="one of \\[8\\]"):
        from_quant_config_list([{"quant_types": ["weight"], "quant_bits": 4, "op_types": ["Conv2d"]}],
                               allowed_bits=(8,))
    with pytest.raises(ConfigError, match="quant_types"):
        from_quant_config_list([{"quant_types": ["input"], "quant_bits": 4, "op_types": ["Conv2d"]}],
                               allowed_quant_types=("weight",))
    with pytest.raises(ConfigError, match="list of dicts"):
        from_quant_config_list({"quant_types": ["weight"]})  # type: ignore[arg-type]
