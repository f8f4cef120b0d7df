"""NNI 2.10 names that its own tests and scripts reach, checked against NNI 2.10.1 itself.

The base ``Pruner`` used directly, the activation metrics calculators on NNI's hook-data format,
``schema.SchemaError`` for bad configs, served names in the shim modules' ``__dict__``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

nni = pytest.importorskip("nni", reason="parity tests need nni==2.10.1 as the oracle")

import nni.algorithms.compression.pytorch.quantization as NQ  # noqa: E402
import nni.algorithms.compression.v2.pytorch.pruning.tools as NT  # noqa: E402
from nni.algorithms.compression.v2.pytorch.base import Pruner as NPruner  # noqa: E402
from nni.algorithms.compression.v2.pytorch.utils import Scaling as NScaling  # noqa: E402
from schema import SchemaError  # noqa: E402

import purecompress  # noqa: E402
import purecompress.compat as C  # noqa: E402
from purecompress.selectors import ConfigError  # noqa: E402
from tests.compat.models import QuantNet, build  # noqa: E402

ROOT = Path(purecompress.__file__).resolve().parent.parent


def _metrics(seed: int = 3) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {"features.0": {"weight": torch.rand(8, 3, 3, 3, generator=g)},
            "features.3": {"weight": torch.rand(16, 8, 3, 3, generator=g)}}


# The base Pruner is concrete --------------------------------------------------------------------

def test_base_pruner_wraps_and_compresses_nothing_like_nni() -> None:
    config = [{"op_types": ["Conv2d"]}]  # no sparsity: NNI's base takes it
    theirs, ours = build("conv_bn_linear"), build("conv_bn_linear")
    p_nni, p_ours = NPruner(theirs, [dict(c) for c in config]), C.Pruner(ours, [dict(c) for c in config])
    assert list(p_ours.get_modules_wrapper()) == list(p_nni.get_modules_wrapper()) == ["features.0", "features.3"]
    model, masks = p_ours.compress()
    assert model is ours and masks == {} and p_nni.compress()[1] == {}
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(ours(x), theirs(x))  # all-ones masks: the wrapped model computes as before
    with pytest.raises(ConfigError, match="'features.0' was selected by a config without a sparsity"):
        C.NormalSparsityAllocator(p_ours).generate_sparsity(_metrics())


@pytest.mark.parametrize("allocator", ["NormalSparsityAllocator", "GlobalSparsityAllocator"])
def test_allocators_on_a_base_pruner_equal_nni(allocator: str) -> None:
    config = [{"op_types": ["Conv2d"], "total_sparsity": 0.8}]
    p_nni = NPruner(build("conv_bn_linear"), [dict(c) for c in config])
    p_ours = C.Pruner(build("conv_bn_linear"), [dict(c) for c in config])
    theirs = getattr(NT, allocator)(p_nni).generate_sparsity(_metrics())
    ours = getattr(C, allocator)(p_ours).generate_sparsity(_metrics())
    assert list(ours) == list(theirs)
    for name, targets in theirs.items():
        assert torch.equal(ours[name]["weight"], targets["weight"]), name
    kept = sum(m["weight"].sum() for m in ours.values()) / sum(m["weight"].numel() for m in ours.values())
    assert kept == pytest.approx(0.2, abs=0.005)  # each layer keeps numel - int(0.8 * numel)


# APoZ / mean-rank metrics on NNI's hook data [count, accumulated] ----------------------------------

NNI_TEST_DATA = {  # NNI's v2/test_pruning_tools_torch.py data and results
    "APoZRankMetricsCalculator": ({"1": {"t": [2, torch.tensor([[1.0, 1.0], [1.0, 1.0]])]},
                                   "2": {"t": [2, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])]}},
                                  {"1": [0.5, 0.5], "2": [1.0, 1.0, 0.75]}),
    "MeanRankMetricsCalculator": ({"1": {"t": [2, torch.tensor([[0.0, 1.0], [1.0, 0.0]])]},
                                   "2": {"t": [2, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])]}},
                                  {"1": [0.25, 0.25], "2": [0.0, 0.0, 0.25]}),
}


@pytest.mark.parametrize("name", list(NNI_TEST_DATA))
def test_activation_calculators_take_nni_hook_data(name: str) -> None:
    data, expected = NNI_TEST_DATA[name]
    ours = getattr(C, name)(C.Scaling([-1, 1], kernel_padding_mode="back")).calculate_metrics(data)
    theirs = getattr(NT, name)(NScaling([-1, 1], kernel_padding_mode="back")).calculate_metrics(data)
    for module, values in expected.items():
        assert torch.equal(ours[module]["t"], torch.tensor(values))
        assert torch.equal(ours[module]["t"], theirs[module]["t"])


@pytest.mark.parametrize("name", list(NNI_TEST_DATA))
@pytest.mark.parametrize(("kernel", "mode"), [([-1, 1], "back"), ([1], "back"), ([2, 1], "front"), (None, "front")])
def test_activation_calculators_equal_nni_on_conv_activations(name: str, kernel: list[int] | None, mode: str) -> None:
    g = torch.Generator().manual_seed(0)
    acc = torch.relu(torch.randn(6, 4, 5, generator=g)).round()  # counts accumulated over 12 samples
    data = {"conv": {"weight": [12, acc]}}
    ours = getattr(C, name)(None if kernel is None else C.Scaling(kernel, mode)).calculate_metrics(data)
    theirs = getattr(NT, name)(None if kernel is None else NScaling(kernel, mode)).calculate_metrics(data)
    assert ours["conv"]["weight"].shape == theirs["conv"]["weight"].shape
    assert torch.allclose(ours["conv"]["weight"], theirs["conv"]["weight"], atol=1e-6)


def test_activation_calculators_name_the_bad_data() -> None:
    with pytest.raises(TypeError, match=r"conv\.weight: expected ActivationStats or NNI's hook data"):
        C.APoZRankMetricsCalculator().calculate_metrics({"conv": {"weight": torch.ones(3)}})


# Bad configs raise schema.SchemaError (NNI's type), which is also ConfigError ----------------------

def test_bad_pruner_and_quantizer_configs_are_schema_errors() -> None:
    bad = [{"sparsity": 0.6, "op_names": "abc"}]
    with pytest.raises(SchemaError) as err:
        C.L1NormPruner(build("conv_bn_linear"), bad)
    assert isinstance(err.value, ConfigError) and err.value.index == 0 and err.value.key == "op_names"
    with pytest.raises(SchemaError, match=r"config_list\[0\]\['quant_bits'\]"):
        C.QAT_Quantizer(QuantNet(), [{"quant_types": ["weight"], "quant_bits": 34, "op_types": ["Conv2d"]}],
                        torch.optim.SGD(QuantNet().parameters(), lr=0.1))


def test_observer_quantizer_reports_a_bad_config_before_the_training_mode() -> None:
    config = [{"quant_types": ["weight"], "quant_bits": 5, "op_types": ["Conv2d", "Linear"]}]
    model = QuantNet()  # in training mode
    with pytest.raises(SchemaError):
        NQ.ObserverQuantizer(model, [dict(c) for c in config])
    with pytest.raises(SchemaError, match="quant_bits"):
        C.ObserverQuantizer(model, [dict(c) for c in config])
    with pytest.raises(ValueError, match="evaluation mode"):
        C.ObserverQuantizer(model, [{"quant_types": ["weight"], "quant_bits": 8, "op_types": ["Conv2d"]}])


# The shim's modules hold their names in __dict__ -----------------------------------------------

SHIM_DICT = """
import nni.algorithms.compression.pytorch.quantization as torch_quantizer
import nni.algorithms.compression.v2.pytorch.pruning.tools as tools
print(torch_quantizer.__dict__['NaiveQuantizer'].__module__)
print('GlobalSparsityAllocator' in vars(tools), sorted(vars(tools)) == sorted(set(vars(tools))))
"""


def test_shim_modules_hold_their_names_in_their_dict(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SHIM_DICT))
    done = subprocess.run([sys.executable, "-m", "purecompress.compat", str(script)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["purecompress.compat.quantization.quantizers", "True True"]
