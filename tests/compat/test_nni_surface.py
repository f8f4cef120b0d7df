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
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore:Full backward hook:UserWarning",
                                        "ignore::DeprecationWarning", "ignore:must run observer:UserWarning")


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
from nni.algorithms.compression.v2.pytorch.utils.evaluator import TensorHook, TorchEvaluator
from nni.algorithms.compression.v2.pytorch.pruning.tools.base import HookCollectorInfo, TrainerBasedDataCollector
from nni.algorithms.compression.v2.pytorch.pruning.tools import WeightDataCollector, SingleHookTrainerBasedDataCollector
from nni.algorithms.compression.v2.pytorch.utils.constructor_helper import OptimizerConstructHelper
from nni.compression.pytorch.quantization.utils import calculate_qmin_qmax, get_quant_shape
from nni.compression.pytorch.quantization.settings import LayerQuantSetting
from nni.compression.pytorch.utils.shape_dependency import ChannelDependency, AttentionWeightDependency
from nni.compression.pytorch.utils.mask_conflict import fix_mask_conflict
from nni.compression.pytorch.utils.num_param_counter import get_total_num_weights
from nni.compression.pytorch.utils import count_flops_params, GroupDependency, SensitivityAnalysis
from nni.compression.pytorch import apply_compression_results
from nni.algorithms.compression.pytorch.pruning import L1FilterPruner, AGPPruner, SensitivityPruner
print(L1FilterPruner.__module__, calculate_qmin_qmax(8, 'int'))
try:
    SensitivityPruner(None, [])
except NotImplementedError as err:
    print(err)
"""


def test_shim_serves_the_new_names_at_nni_paths_and_in_module_dicts(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(SHIM_DICT))
    done = subprocess.run([sys.executable, "-m", "purecompress.compat", str(script)], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == [
        "purecompress.compat.quantization.quantizers", "True True", "purecompress.compat.pruning_v1 (-127, 127)",
        "NNI 1.x's SensitivityPruner is not provided by purecompress: NNI 2.x has no counterpart of it; see "
        "nni.compression.pytorch.utils.SensitivityAnalysis"]


# NNI 2.10's old trainer-based data collectors (v2/test_pruning_tools_torch.py) -------------------

def _nni_trainer(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(5)
    model.train()
    for _ in range(3):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.arange(4) % 10
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()


def _helpers(model: torch.nn.Module) -> tuple[object, object]:
    from nni.algorithms.compression.v2.pytorch.utils.constructor_helper import OptimizerConstructHelper as NHelper

    def opt(trace):  # noqa: ANN001, ANN202
        return trace(torch.optim.SGD)(model.parameters(), lr=0.1, momentum=0.9)

    return NHelper.from_trace(model, opt(nni.trace)), C.OptimizerConstructHelper.from_trace(model, opt(C.trace))


def test_weight_collectors_equal_nni_after_training() -> None:
    config = [{"op_types": ["Conv2d"]}]
    theirs, ours = build("conv_bn_linear"), build("conv_bn_linear")
    p_nni, p_ours = NPruner(theirs, [dict(c) for c in config]), C.Pruner(ours, [dict(c) for c in config])
    before = {n: {"weight": d["weight"].clone()} for n, d in C.WeightDataCollector(p_ours).collect().items()}
    assert torch.equal(before["features.0"]["weight"], NT.WeightDataCollector(p_nni).collect()["features.0"]["weight"])
    steps: list[str] = []
    (h_nni, _), (_, h_ours) = _helpers(theirs), _helpers(ours)
    crit = torch.nn.CrossEntropyLoss()
    got_nni = NT.WeightTrainerBasedDataCollector(p_nni, _nni_trainer, h_nni, crit, 2).collect()
    collector = C.WeightTrainerBasedDataCollector(p_ours, _nni_trainer, h_ours, crit, 2,
                                                  opt_before_tasks=[lambda: steps.append("b")],
                                                  opt_after_tasks=[lambda: steps.append("a")])
    got = collector.collect()
    assert steps == ["b", "a"] * 6  # 2 epochs of 3 steps, tasks around each step
    assert list(got) == list(got_nni) == ["features.0", "features.3"]
    for name in got:
        assert not torch.equal(got[name]["weight"], before[name]["weight"])  # it trained
        assert torch.allclose(got[name]["weight"], got_nni[name]["weight"], atol=1e-6), name


@pytest.mark.parametrize("hook_type", ["tensor", "forward", "backward"])
def test_single_hook_collector_fills_buffers_like_nni(hook_type: str) -> None:
    from nni.algorithms.compression.v2.pytorch.base import LayerInfo as NLayerInfo
    from nni.algorithms.compression.v2.pytorch.pruning.tools.base import HookCollectorInfo as NInfo

    def tensor_collector(buffer: list, tensor: torch.Tensor):  # noqa: ANN202
        return lambda grad: buffer.append(grad.clone()) if len(buffer) < 4 else None

    def module_collector(buffer: list):  # noqa: ANN202
        return lambda module, inputs, outputs: buffer.append(len(buffer))

    out = []
    for ns, info, layer_info, pruner_cls in ((NT, NInfo, NLayerInfo, NPruner), (C, C.HookCollectorInfo, C.LayerInfo,
                                                                                C.Pruner)):
        model = build("conv_bn_linear")
        pruner = pruner_cls(model, [{"op_types": ["Conv2d"]}])
        wrappers = pruner.get_modules_wrapper()
        if hook_type == "tensor":
            targets = {name: w.weight for name, w in wrappers.items()}
            infos = [info(targets, "tensor", tensor_collector)]
        else:
            infos = [info([layer_info(name, w) for name, w in wrappers.items()], hook_type, module_collector)]
        helper = _helpers(model)[0 if ns is NT else 1]
        data = ns.SingleHookTrainerBasedDataCollector(pruner, _nni_trainer, helper, torch.nn.CrossEntropyLoss(), 2,
                                                      collector_infos=infos).collect()
        out.append(data)
    theirs, ours = out
    assert list(ours) == list(theirs) == ["features.0", "features.3"]
    for name in ours:
        assert len(ours[name]["weight"]) == len(theirs[name]["weight"]) == (4 if hook_type == "tensor" else 6)
        if hook_type == "tensor":
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours[name]["weight"], theirs[name]["weight"]))


def test_hook_collector_info_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="hook_type must be"):
        C.HookCollectorInfo({}, "activation", lambda buffer: None)
    with pytest.raises(TypeError, match="'tensor' hooks need targets"):
        C.HookCollectorInfo([torch.ones(1)], "tensor", lambda buffer, t: None)
    with pytest.raises(ValueError, match="training_epochs"):
        p = C.Pruner(build("conv_bn_linear"), [{"op_types": ["Conv2d"]}])
        C.WeightTrainerBasedDataCollector(p, _nni_trainer, _helpers(p.bound_model)[1], torch.nn.MSELoss(), -1)


# nni.algorithms.compression.v2.pytorch.utils.evaluator: NNI's v2/test_evaluator.py checks, on data we make ----

def test_evaluator_patches_and_hooks_as_nni_test_evaluator_checks() -> None:
    """NNI's test downloads MNIST (and its own run fails on torch 2's LR schedulers): the same
    checks here on generated batches, against NNI's TorchEvaluator without a scheduler."""
    from nni.algorithms.compression.v2.pytorch.utils import evaluator as n_evaluator

    def training(model, optimizer, criterion, lr_schedulers=None, max_steps=None, max_epochs=None):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(2)
        for step in range(max_steps or 50):
            optimizer.zero_grad()
            criterion(model(torch.randn(2, 3, 8, 8, generator=g)), torch.tensor([1, 2])).backward()
            optimizer.step()
            del step

    counts = []
    for ns, trace in ((n_evaluator, nni.trace), (C, C.trace)):
        model = build("conv_bn_linear")
        optimizer = trace(torch.optim.SGD)(model.parameters(), lr=0.01)
        evaluator = ns.TorchEvaluator(training, optimizer, torch.nn.functional.cross_entropy)
        evaluator._init_optimizer_helpers(model)
        evaluator.bind_model(model)
        flags: list[str] = []
        conv = model.features[0]

        def factory(buffer: list):  # noqa: ANN202
            return lambda *args: buffer.append(True)

        hooks = [ns.TensorHook(conv.weight, "features.0.weight", factory),
                 ns.ForwardHook(conv, "features.0", factory), ns.BackwardHook(conv, "features.0", factory)]
        evaluator.patch_loss(lambda t, flags=flags: flags.append("loss") or t)
        evaluator.patch_optimizer_step([lambda flags=flags: flags.append("before")],
                                       [lambda flags=flags: flags.append("after")])
        evaluator.register_hooks(hooks)
        evaluator.train(max_steps=1)
        after_train = ([len(h.buffer) for h in hooks], sorted(set(flags)))
        evaluator.remove_all_hooks()
        evaluator.register_hooks(hooks)
        evaluator.finetune()
        counts.append((after_train, [len(h.buffer) for h in hooks]))
    assert counts[1] == counts[0] == (([1, 1, 1], ["after", "before", "loss"]), [50, 50, 50])


# nni.compression.pytorch.quantization.utils / .settings; QAT's all_shapes and layer_quant_setting ----

SCHEMES = ["per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric"]


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("kind", ["weight", "input", "output"])
def test_quantization_utils_equal_nni(kind: str, scheme: str) -> None:
    from nni.compression.pytorch.quantization import utils as n_utils

    from purecompress.compat.quantization import utils as c_utils

    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(4))
    for bits in (2, 8):
        for dtype in ("int", "uint"):
            assert c_utils.calculate_qmin_qmax(bits, dtype) == n_utils.calculate_qmin_qmax(bits, dtype)
    bits_config = {"quant_bits": {kind: 6}}
    assert c_utils.get_bits_length(bits_config, kind) == n_utils.get_bits_length(bits_config, kind) == 6
    assert c_utils.is_per_channel(scheme) == n_utils.is_per_channel(scheme)
    assert c_utils.get_target_dim(kind, scheme) == n_utils.get_target_dim(kind, scheme)
    assert c_utils.get_quant_shape(x.shape, kind, scheme) == n_utils.get_quant_shape(x.shape, kind, scheme)
    for ours, theirs in zip(c_utils.get_min_max_value(x, kind, scheme), n_utils.get_min_max_value(x, kind, scheme)):
        assert ours.shape == theirs.shape and torch.equal(ours, theirs)
    for dim in (None, 0, 2):
        assert torch.allclose(c_utils.get_mean_value(x, dim), n_utils.get_mean_value(x, dim))
    with pytest.raises(ValueError, match="dtype must be 'int' or 'uint'"):
        c_utils.calculate_qmin_qmax(8, "float")


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("dtype", ["int", "uint"])
def test_qat_layer_settings_and_shapes_equal_nni(dtype: str, scheme: str) -> None:
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"],
               "quant_dtype": dtype, "quant_scheme": scheme}]
    dummy = torch.randn(2, 1, 8, 8)
    out = []
    for ns in (NQ, C):
        torch.manual_seed(1)
        model = QuantNet()
        quantizer = ns.QAT_Quantizer(model, [dict(c) for c in config], torch.optim.SGD(model.parameters(), lr=0.1),
                                     dummy_input=dummy)
        settings = {}
        for layer, _ in quantizer.get_modules_to_compress():
            module = layer.module
            for kind in ("weight", "input", "output"):
                s = getattr(module.layer_quant_setting, kind)
                settings[layer.name, kind] = (s.quant_scheme, s.quant_dtype, s.bits, s.qmin, s.qmax,
                                              list(getattr(module, f"{kind}_scale").shape))
        out.append(({n: tuple(map(list, v)) for n, v in quantizer.all_shapes.items()}, settings))
    assert out[1] == out[0]


def test_uncalibrated_observer_quantizer_exports_like_nni(tmp_path: Path) -> None:
    config = [{"quant_types": ["weight", "input", "output"], "quant_bits": 8, "op_types": ["Conv2d", "Linear"]}]
    calibrations = []
    for ns in (NQ, C):
        torch.manual_seed(1)
        model = QuantNet().eval()
        quantizer = ns.ObserverQuantizer(model, [dict(c) for c in config])
        quantizer.compress()  # no calibration batch at all
        onnx_path = tmp_path / f"{ns.__name__}.onnx"
        calibrations.append(quantizer.export_model(str(tmp_path / "m.pth"), str(tmp_path / "c.pth"), str(onnx_path),
                                                   (1, 1, 8, 8)))
        assert onnx_path.is_file()
    theirs, ours = calibrations
    assert sorted(ours) == sorted(theirs) == ["conv1", "fc"]
    for layer, entry in theirs.items():
        assert sorted(ours[layer]) == sorted(entry)
        for key, value in entry.items():
            if "weight" not in key:  # inputs/outputs: torch's default scale 1, zero point 0, as NNI
                assert ours[layer][key] == value, (layer, key)
    # Weights need no data: their range is read from them (NNI's unobserved weight gets scale 1 and
    # rounds every weight to an integer, i.e. to 0 here).
    assert 0 < ours["conv1"]["tracked_max_weight"] < theirs["conv1"]["tracked_max_weight"] == 127.0
